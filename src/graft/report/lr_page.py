"""lr_find.html: the LR range test's curve and its pick, from the sweep alone (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.files import write_text
from graft.report.charts import line_chart
from graft.report.page import CSS, escape, figure


def write_lr_page(path: Path, found: dict[str, Any], title: str) -> Path:
    return write_text(path, render_lr_page(found, title))


def render_lr_page(found: dict[str, Any], title: str) -> str:
    lrs, pick = found["lrs"], found["suggestion"]
    marks = None
    if pick is not None:
        at = min(range(len(lrs)), key=lambda i: abs(lrs[i] - pick))
        marks = {f"pick {pick:.3g}": (pick, found["smoothed"][at])}
    chart = line_chart({"loss": (lrs, found["losses"]), "smoothed": (lrs, found["smoothed"])}, xlabel="learning rate",
                       ylabel="training loss", marks=marks, log_x=True)
    words = f"Pick: <b>{pick:.3g}</b>: {escape(found['why'])}." if pick is not None else escape(found["why"])
    rows = "".join(f"<tr><td class='n'>{lr:.3g}</td><td class='n'>{loss:.4f}</td><td class='n'>{smooth:.4f}</td>"
                   f"</tr>" for lr, loss, smooth in zip(lrs, found["losses"], found["smoothed"], strict=True))
    optim = found["optim"]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<p class='sub'>LR range test · {escape(optim['name'])} ({escape(optim['why'])}) · strategy "
            f"{escape(found['strategy'])} · {len(lrs)} steps, every group's LR scaled by one factor</p>"
            f"<div class='verdict'>{words}</div>{figure(chart, 'Training loss against the base LR (log scale).')}"
            "<h2>The sweep</h2><table><tr><th>learning rate</th><th>loss</th><th>smoothed</th></tr>"
            f"{rows}</table></main></body></html>")
