"""compare.html: the comparison of strategies as one self-contained page, from compare.json alone (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.compare import COLUMNS, columns
from graft.evaluation.metrics import metric_mode
from graft.files import write_text
from graft.report.charts import line_chart, scatter_chart
from graft.report.page import CSS, clip, escape, figure

PAGE_FILE = "compare.html"
WARNINGS = ("negative", "did not help", "not a model")
"""Verdict lines drawn as warnings."""


def write_compare_page(out: Path) -> Path:
    result = json.loads((out / "compare.json").read_text())
    return write_text(out / PAGE_FILE, render_compare(result))


def _lr(lr: float | None) -> str:
    return f"{lr:.3g}" if lr is not None else "exact fit"


def _relative(run: str, out: str) -> str:
    try:
        return Path(run).relative_to(out).as_posix()
    except ValueError:
        return Path(run).as_uri()


def _cost(row: dict[str, Any]) -> str:
    cache = row.get("feature_cache_s") or 0.0
    part = f" <small>({cache:.1f} s cache)</small>" if cache else ""
    return f"<td class='n'>{row['cost_s']:.1f} s{part}</td>"


def _trade_off(rows: list[dict[str, Any]], spread: bool) -> str:
    """New-task accuracy against retention, one point per strategy: the trade-off at a glance."""
    points = {r["label"]: (r["retention"], r["accuracy"], r["retention_std"] if spread else 0.0,
                           r["accuracy_std"] if spread else 0.0)
              for r in rows if r.get("retention") is not None and r.get("accuracy") is not None}
    chart = scatter_chart(points, xlabel="retention (source accuracy after / before)", ylabel="new task: test accuracy")
    return figure(chart, "What each strategy learnt of the new task against what it kept of the source task (top "
                         "right is best" + ("; bars: one standard deviation over seeds)." if spread else ")."))


def _generations(rows: list[dict[str, Any]]) -> str:
    """A language model's greedy answers to the same validation prompts, one column per strategy (first seed)."""
    answering = [r for r in rows if r.get("samples")]
    if not answering:
        return ""
    first = answering[0]["samples"]
    heads = "".join(f"<th>{escape(r['label'])}</th>" for r in answering)
    body = ""
    for i, sample in enumerate(first):
        cells = [sample["prompt"], sample.get("reference") or "",
                 *(r["samples"][i]["generated"] if i < len(r["samples"]) else "" for r in answering)]
        body += "<tr>" + "".join(f"<td>{escape(clip(text, 300))}</td>" for text in cells) + "</tr>"
    return ("<h2>What each strategy says</h2><p class='sub'>Greedy answers to the first validation prompts after "
            "training, side by side (the same prompts for every strategy: the runs share their splits).</p>"
            f"<table><tr><th>prompt</th><th>reference</th>{heads}</tr>{body}</table>")


def render_compare(result: dict[str, Any]) -> str:
    metric, rows = result["metric"], result["strategies"]
    recipe = result["recipe"]
    spread = len(result["seeds"]) > 1
    title = f"{Path(recipe['output']['dir']).name}: {len(rows)} strategies compared"
    lead = result.get("winner") or result.get("leader") or "none"
    verdict = "".join(
        f"<div class='verdict{' warn' if any(w in line for w in WARNINGS) else ''}'>{escape(line)}</div>"
        for line in result["verdict"])

    def cell(row: dict[str, Any], name: str) -> str:
        if row.get(name) is None:
            return "<td class='n'>n/a</td>"
        text = f"{row[name]:.4f}" + (f" ± {row[name + '_std']:.4f}" if spread else "")
        return f"<td class='n'>{text}</td>"

    retained = any(r.get("retention") is not None for r in rows)
    sign = -1.0 if metric_mode(metric) == "min" else 1.0
    shown = columns(result)
    rows = sorted(rows, key=lambda r: -sign * r[metric] if r.get(metric) is not None else float("inf"))
    body = ""
    for r in rows:
        mark = (" (winner)" if r["label"] == result.get("winner") else
                " (leader, tied)" if r["label"] == lead else " (tie)" if r["label"] in result["ties"] else "")
        flag = (f" — answers {r['one_class']!r} for everything" if r.get("one_class") else
                " — negative transfer" if r["label"] in result["negative_transfer"] else "")
        link = _relative(r["runs"][0], recipe["output"]["dir"]) + "/report.html"
        body += (f"<tr class='{'low' if flag else ''}'><td><b><a href='{escape(link)}'>{escape(r['label'])}</a></b>"
                 f"{escape(mark)}{escape(flag)}</td>"
                 f"<td>{escape(r['strategy'])}</td><td class='n'>{_lr(r['lr'])}</td>"
                 f"{''.join(cell(r, n) for n in shown)}{cell(r, 'retention') if retained else ''}"
                 f"<td class='n'>{r['trainable']:,}</td>"
                 f"{_cost(r)}"
                 f"<td class='n'>{r['s_per_epoch']:.2f} s</td><td class='n'>{r['peak_memory_mb']:,.0f} MB</td></tr>")
    heads = "".join(f"<th>{escape(COLUMNS.get(n, f'test {n}'))}</th>" for n in shown)
    table = ("<table><tr><th>strategy</th><th>method</th><th>lr</th>" + heads
             + ("<th>retention (source task)</th>" if retained else "") + "<th>trainable</th>"
             "<th>cost: training + feature cache</th><th>training per epoch</th><th>peak memory</th>"
             "</tr>" + body + "</table><p class='sub'>Cost counts the feature-cache pass: a strategy that keeps layers "
             "frozen runs them once over the data before training, and that time is part of what it costs.</p>")
    figures = [_trade_off(rows, spread)] if retained else []
    for name, label in dict.fromkeys(((metric, f"validation {metric}"), ("loss", "validation loss"))):
        series = {r["label"]: ([h["epoch"] for h in r["curves"][0]], [h[name] for h in r["curves"][0]])
                  for r in rows if r["curves"] and r["curves"][0] and name in r["curves"][0][0]}
        if series:
            figures.append(figure(line_chart(series, xlabel="epoch", ylabel=label),
                                   f"{label.capitalize()} of every strategy (seed {result['seeds'][0]})."))
    seeds = f"seeds {', '.join(map(str, result['seeds']))}" if spread else f"seed {result['seeds'][0]}"
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<p class='sub'>{escape(recipe['task'])} on {escape(Path(recipe['model']['name']).name)} · the same "
            f"splits, "
            f"{escape(seeds)} and budget ({recipe['train']['epochs']} epochs) for every strategy · ranked by test "
            f"{escape(metric)}; leader: <b>{escape(lead)}</b></p>{verdict}<h2>Strategies</h2>{table}"
            f"<h2>Curves</h2><div class='grid'>{''.join(figures)}</div>{_generations(rows)}"
            "<p class='sub'>Each strategy is a normal run directory with its own report.html.</p></main></body></html>")
