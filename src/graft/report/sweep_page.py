"""sweep.html: a sweep as one self-contained page, from sweep.json alone (no torch): the best trial and its test
metrics, the trials over time, which parameters mattered, the parameters of every complete trial side by side, and
the table of trials (each linking to its run's report)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from graft.files import write_text
from graft.report.charts import bar_chart, parallel_chart, trials_chart
from graft.report.compare_page import _relative
from graft.report.page import CSS, escape, figure
from graft.sweep import describe_best

PAGE_FILE = "sweep.html"


def write_sweep_page(out: Path) -> Path:
    result = json.loads((out / "sweep.json").read_text())
    return write_text(out / PAGE_FILE, render_sweep(result))


def render_sweep(result: dict[str, Any]) -> str:
    recipe, metric, trials, best = result["recipe"], result["metric"], result["trials"], result["best"]
    title = f"{Path(result['folder']).name}: a sweep of {len(trials)} trials"
    minimize = result["direction"] == "minimize"
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "failed", "interrupted")}
    spent = sum(t["duration_s"] or 0.0 for t in trials)
    cards = [(f"{best['value']:.4f}" if best else "n/a", f"best validation {metric}")]
    if best:
        cards += [(f"{best['test'][k]:.4f}", f"its test {k}") for k in dict.fromkeys(("accuracy", "f1_macro"))
                  if best["test"].get(k) is not None]
    cards += [(f"{counts['complete']} / {counts['pruned']} / {counts['failed'] + counts['interrupted']}",
               "complete / pruned / failed"), (f"{spent / 60:.1f} min", "time in trials")]
    lead = (f"<div class='verdict'>Best: {escape(describe_best(best))}, validation {escape(metric)} "
            f"{best['value']:.4f}. Its test metrics are the only ones this sweep computed: the test split was "
            f"evaluated once, for this run, after the search.</div>" if best else
            "<div class='verdict warn'>No trial completed: see the table for why each one stopped.</div>")
    baseline = result.get("baseline")
    if baseline is not None:
        lead += ("<p class='sub'>Baseline, the recipe as it is on the same splits (" + (
            f"validation {escape(metric)} {baseline['value']:.4f}, {baseline['duration_s']:.1f} s" if
            baseline["value"] is not None else f"failed: {escape(baseline.get('error') or '')}") +
            "): a trial is the best only if it beats it.</p>")
    figures = [figure(trials_chart(trials, ylabel=f"validation {metric}", minimize=minimize),
                      f"Each trial's validation {metric} ({'lower' if minimize else 'higher'} is better); the line is "
                      f"the best so far. Pruned trials stopped early, at the value shown.")]
    if result["importances"]:
        figures.append(figure(bar_chart(result["importances"], xlabel="importance (share of the variance, fANOVA)"),
                              f"How much of the spread in validation {metric} over the complete trials each "
                              f"parameter accounts for."))
    importance = "" if result["importances"] else (f"<p class='sub'>No parameter importances: "
                                                   f"{escape(result['importances_why'])}.</p>")
    parallel = _parallel(result)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<p class='sub'>{escape(recipe['task'])} on {escape(Path(recipe['model']['name']).name)} · "
            f"{len(result['space'])} parameters searched by {escape(result['sampler'])} (seed {result['seed']}), "
            f"{escape(result['pruner'])} · every trial a normal run on the same splits, ranked by validation "
            f"{escape(metric)}</p>"
            "<div class='cards'>" + "".join(f"<div class='card'><b>{v}</b><span>{escape(k)}</span></div>"
                                            for v, k in cards) + f"</div>{lead}"
            f"<h2>Trials</h2><div class='grid'>{''.join(figures)}</div>{importance}"
            + (f"<h2>Parameters of the complete trials</h2>{parallel}" if parallel else "")
            + f"<h2>Every trial</h2>{_table(result)}"
            "<p class='sub'>Each trial is a normal run directory with its own report.html; the study is in sweep.db "
            "(Optuna, SQLite): the same command again resumes it.</p></main></body></html>")


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _parallel(result: dict[str, Any]) -> str:
    """One axis per parameter (log-scaled where it was searched so) and one for the objective; a line per complete
    trial."""
    done = [t for t in result["trials"] if t["state"] == "complete"]
    if not done:
        return ""
    axes: dict[str, list[tuple[float, str]]] = {}
    positions = []
    for field, dist in result["space"].items():
        place, ticks = _scale(dist["name"], dist["attributes"])
        axes[field] = ticks
        positions.append([place(t["params"][field]) for t in done])
    values = [t["value"] for t in done]
    low, high = min(values), max(values)
    span = high - low or 1.0
    axes[f"validation {result['metric']}"] = [(0.0, f"{low:.4g}"), (1.0, f"{high:.4g}")] if high > low else \
        [(0.5, f"{low:.4g}")]
    positions.append([(v - low) / span if high > low else 0.5 for v in values])
    lines = [list(row) for row in zip(*positions, strict=True)]
    best = result["best"]
    highlight = next((i for i, t in enumerate(done) if best and t["number"] == best["number"]), None)
    chart = parallel_chart(axes, lines, values, highlight=highlight, label=f"validation {result['metric']}")
    return f"<figure class='wide'>{chart}<figcaption>{escape(_caption(result))}</figcaption></figure>"


def _caption(result: dict[str, Any]) -> str:
    logs = [f for f, d in result["space"].items() if d["attributes"].get("log")]
    scaled = f"; {', '.join(logs)} on a log scale, as searched" if logs else ""
    return (f"Every complete trial as a line through its parameter values and its validation {result['metric']} "
            f"(colour: the same){scaled}; the best in red.")


def _scale(kind: str, attributes: dict[str, Any]) -> tuple[Any, list[tuple[float, str]]]:
    """Where a value falls on its axis (0 to 1), and the axis's ticks."""
    if kind == "CategoricalDistribution":
        choices = [json.dumps(c) for c in attributes["choices"]]
        n = len(choices)

        def place(value: Any) -> float:
            return choices.index(json.dumps(value)) / (n - 1) if n > 1 else 0.5

        return place, [(i / (n - 1) if n > 1 else 0.5, _value(c)) for i, c in enumerate(attributes["choices"])]
    low, high, log = attributes["low"], attributes["high"], attributes["log"]
    f = math.log if log else float

    def place(value: Any) -> float:
        return (f(value) - f(low)) / (f(high) - f(low))

    return place, [(0.0, _value(low)), (1.0, _value(high))]


def _table(result: dict[str, Any]) -> str:
    fields = list(result["space"])
    best = (result["best"] or {}).get("number")
    body = ""
    for t in result["trials"]:
        link = escape(t["run_dir"] or "")
        if t["run_dir"] and t["state"] == "complete":
            href = _relative(t["run_dir"], result["folder"]) + "/report.html"
            link = f"<a href='{escape(href)}'>{escape(Path(t['run_dir']).name)}</a>"
        value = f"{t['value']:.4f}" if t["value"] is not None else (
            f"({t['evaluations'][-1]:.4f})" if t["evaluations"] else "")
        note = t.get("reason") or t.get("error") or ""
        cells = "".join(f"<td class='n'>{escape(_value(t['params'].get(f, '')))}</td>" for f in fields)
        duration = f"{t['duration_s']:.1f} s" if t["duration_s"] is not None else ""
        mark = " (best)" if t["number"] == best else ""
        body += (f"<tr class='{'low' if t['state'] in ('failed', 'interrupted') else ''}'><td>{t['number']}{mark}</td>"
                 f"<td>{escape(t['state'])}</td><td class='n'>{value}</td>{cells}<td class='n'>{duration}</td>"
                 f"<td>{link}</td><td><small>{escape(note)}</small></td></tr>")
    head = "".join(f"<th>{escape(f)}</th>" for f in fields)
    return (f"<table><tr><th>trial</th><th>state</th><th>validation {escape(result['metric'])}</th>{head}"
            f"<th>time</th><th>run</th><th>note</th></tr>{body}</table>"
            "<p class='sub'>A pruned trial's value in brackets is its last evaluation before it was stopped.</p>")
