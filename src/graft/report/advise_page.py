"""advise.html: graft advise's recommendation and its evidence as one self-contained page, from advise.json alone
(no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.advise.facts import describe_data, duplicate_lines
from graft.files import write_text
from graft.report.charts import line_chart
from graft.report.page import CSS, escape, figure

PAGE_FILE = "advise.html"


def write_advise_page(out: Path) -> Path:
    result = json.loads((out / "advise.json").read_text(encoding="utf-8"))
    return write_text(out / PAGE_FILE, render_advise(result))


def render_advise(result: dict[str, Any]) -> str:
    import yaml

    rec = result["recommendation"]
    model = result["model"].rpartition(":")[0] or result["model"]
    title = f"{Path(result['recipe']['output']['dir']).name}: advice for {Path(model).name}"
    fragment = yaml.safe_dump(rec["fragment"], default_flow_style=False, sort_keys=False)
    verdicts = [f"<div class='verdict'><b>{escape(rec['strategy'])}</b> · {escape(rec['quadrant'])}<ul>"
                + "".join(f"<li>{escape(r)}</li>" for r in rec["reasons"]) + "</ul>"
                f"Runner-up: <b>{escape(rec['runner_up']['strategy'])}</b>: {escape(rec['runner_up']['why'])}</div>",
                *(f"<div class='verdict warn'>{escape(w)}</div>" for w in rec["warnings"])]
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p class='sub'>{escape(result['task'])} · {_sample(result)} · advised in "
             f"{result['timings']['total_s']:.1f} s, before any training</p>", *verdicts,
             f"<h2>Recipe fragment</h2><pre><code>{escape(fragment)}</code></pre>"]
    if result.get("verify"):
        parts.append(_verify(result["verify"]))
    if result.get("sources"):
        parts += _evidence(result["sources"])
    if result.get("memory_mb"):
        parts.append(_memory(result))
    parts.append(_data(result["data"]))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>")


def _sample(result: dict[str, Any]) -> str:
    sample = result.get("sample", {})
    return ", ".join(f"{n:,} {name} examples scored" for name, n in sample.items())


def _evidence(rows: list[dict[str, Any]]) -> list[str]:
    """Per-layer evidence, pretrained against random initialisation, one line per pooling; and the table."""
    charts = []
    for key, label in (("logme", "LogME (evidence per example)"), ("probe", "probe validation accuracy")):
        series: dict[str, tuple[list[float], list[float]]] = {}
        for kind in ("pretrained", "random"):
            for r in rows:
                value = r[key] if kind == "pretrained" else (r["random"] or {}).get(key)
                if value is None:
                    continue
                xs, ys = series.setdefault(f"{kind} {r['pooling'] or 'vector'}", ([], []))
                xs.append(r["depth"])
                ys.append(value)
        if series:
            caption = (f"{label[0].upper()}{label[1:]} of each layer group's frozen features, pretrained and at "
                       f"random initialisation, one line per pooling.")
            charts.append(figure(line_chart(series, xlabel="layer group (0: nearest the input)", ylabel=label),
                                 caption))
    groups = sorted({(r["depth"], r["group"]) for r in rows})
    body = "".join(
        f"<tr><td>{escape(r['source'])}{' <b>(the head reads it)</b>' if r['reads_head'] else ''}</td>"
        f"<td class='n'>{r['depth']}</td><td class='n'>{r['dim']}</td>{_cell(r['logme'])}"
        f"{_cell((r['random'] or {}).get('logme'))}{_cell(r['probe'])}{_cell((r['random'] or {}).get('probe'))}</tr>"
        for r in rows)
    table = ("<table><tr><th>source</th><th>group</th><th>dim</th><th>LogME</th><th>LogME, random init</th>"
             "<th>probe accuracy</th><th>probe, random init</th></tr>" + body + "</table>")
    legend = "; ".join(f"{d}: {escape(g)}" for d, g in groups)
    return ["<h2>Frozen-feature evidence per layer</h2>", f"<div class='grid'>{''.join(charts)}</div>",
            f"<p class='sub'>Groups: {legend}. LogME: You et al. 2021, the evidence of a Bayesian linear model of the "
            "labels on the features, per example (higher is better; comparable across sources on the same labels). "
            "Probe: graft's exact logistic-regression probe, its L2 strength picked on validation. Random init: the "
            "same architecture with fresh weights: the gap is what pretraining brings.</p>", table]


def _cell(value: float | None) -> str:
    return f"<td class='n'>{value:.4f}</td>" if value is not None else "<td class='n'>-</td>"


def _memory(result: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(name)}</td><td class='n'>{value:,.1f} MB</td></tr>"
                   for name, value in result["memory_mb"].items())
    before = result.get("before_training", {})
    lead = (f"<p class='sub'>Before training: loss {before['loss']:.4f} a response token, perplexity "
            f"{before['perplexity']:.4g}, token accuracy {before['token_accuracy']:.4f}.</p>" if before else "")
    return ("<h2>Memory by method</h2>" + lead + "<table><tr><th>method</th><th>weights, gradients and AdamW state"
            "</th></tr>" + rows + "</table><p class='sub'>Activations come on top: they grow with batch size and "
            "length.</p>")


def _data(data: dict[str, Any]) -> str:
    items = [f"<tr><td>{escape(name)}</td><td class='n'>{n:,}</td></tr>" for name, n in data["sizes"].items()]
    items += [f"<tr><td>class {escape(name)}</td><td class='n'>{n:,}</td></tr>"
              for name, n in data.get("class_counts", {}).items()]
    items += [f"<tr><td>{escape(name.replace('_', ' '))}</td><td class='n'>{n:,}</td></tr>"
              for name, n in data.get("duplicates", {}).items()]
    warnings = "".join(f"<div class='verdict warn'>{escape(w)}</div>"
                       for w in [*data.get("warnings", []), *duplicate_lines(data.get("duplicates", {}))])
    return (f"<h2>The data</h2><p class='sub'>{escape(describe_data(data))}</p>{warnings}"
            f"<table><tr><th>what</th><th>examples</th></tr>{''.join(items)}</table>")


def _verify(verify: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(r['label'])}</td><td class='n'>{_number(r.get('accuracy'))}</td>"
                   f"<td class='n'>{_number(r.get('f1_macro'))}</td><td class='n'>{r['trainable']:,}</td>"
                   f"<td class='n'>{r['cost_s']:.1f} s</td></tr>" for r in verify["strategies"])
    warn = "" if verify["held"] else " warn"
    return (f"<h2>Verified by graft compare</h2><div class='verdict{warn}'>{escape(verify['words'])}</div>"
            "<table><tr><th>strategy</th><th>test accuracy</th><th>test macro F1</th><th>trainable</th><th>cost</th>"
            f"</tr>{rows}</table><p class='sub'>Runs: {escape(verify['folder'])}</p>")


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"
