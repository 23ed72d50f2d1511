"""inspect.html: the data doctor's findings as one self-contained page, from inspect.json alone (no torch).

Every suspicious example is shown (a text, or an image as an inline thumbnail) with its file, row, given and
suggested label, and a decision a person can take: keep, drop or relabel. The page exports the decisions as the CSV
that `data.review` reads (split, row, action, label), so a review made here applies the next time the data loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.files import write_text
from graft.report.page import CSS, escape, thumbnail

PAGE_FILE = "inspect.html"
SHOWN = 300
"""Rows shown per section (the JSON holds them all)."""
MEMBERS_SHOWN = 6

EXTRA_CSS = """
td.x{max-width:460px;word-break:break-word} select{font:inherit;max-width:190px} .tag{color:#6b7280;font-size:12px}
button{font:inherit;padding:6px 14px;border-radius:6px;border:1px solid #2563eb;background:#2563eb;color:#fff;
cursor:pointer} .bar{position:sticky;top:0;background:#f3f4f6;padding:8px 0;z-index:1}
tr.group td{border-top:2px solid #d1d5db}
"""

SCRIPT = """
const pick = document.querySelectorAll('select.decide');
pick.forEach(s => s.addEventListener('change', () => {
  document.querySelectorAll(`select.decide[data-key="${s.dataset.key}"]`).forEach(t => { t.value = s.value; });
  count();
}));
function count() {
  const keys = new Set([...pick].filter(s => s.value).map(s => s.dataset.key));
  document.getElementById('decided').textContent = keys.size + ' decided';
}
function cell(v) { v = String(v); return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function exportReview() {
  const rows = new Map();
  pick.forEach(s => {
    if (!s.value) return;
    const cut = s.value.indexOf(':');
    const [action, label] = cut < 0 ? [s.value, ''] : [s.value.slice(0, cut), s.value.slice(cut + 1)];
    rows.set(s.dataset.key, [s.dataset.split, s.dataset.row, action, label, s.dataset.file, s.dataset.input]);
  });
  const lines = [['split', 'row', 'action', 'label', 'file', 'input'], ...rows.values()];
  const blob = new Blob([lines.map(r => r.map(cell).join(',')).join('\\n') + '\\n'], {type: 'text/csv'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'review.csv';
  a.click();
}
"""


def write_inspect_page(out: Path) -> Path:
    report = json.loads((out / "inspect.json").read_text(encoding="utf-8"))
    return write_text(out / PAGE_FILE, render_inspect(report))


def render_inspect(report: dict[str, Any]) -> str:
    data, recipe = report["data"], report["recipe"]
    images = data["kind"] == "image"
    classes = data["labels"]
    title = f"{Path(recipe['output']['dir']).name}: what is in the data"
    sizes = " / ".join(f"{s['n']:,} {key} ({escape(s['file'])})" for key, s in data["splits"].items())
    verdicts = "".join(f"<div class='verdict'>{escape(line)}</div>" for line in report["summary"])
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p class='sub'>{escape(recipe['task'])} · {sizes} · {len(classes)} classes · model "
             f"{escape(Path(recipe['model']['name']).name)}</p>",
             _cards(report), verdicts,
             "<div class='bar'><button onclick='exportReview()'>Export decisions as review.csv</button> "
             "<span id='decided' class='tag'>0 decided</span> <span class='tag'>· then set <code>data.review: "
             "review.csv</code> in the recipe: the decisions apply whenever the data loads</span></div>"]
    parts += _label_issues(report["label_issues"], classes, images, report["probe"])
    parts += _groups("The same input with different labels", report["conflicts"], classes, images,
                     "Each group is one input given different labels: keep the right one, drop or relabel the "
                     "others.")
    conflicting = {_members(g) for g in report["conflicts"]}
    copies = [g for g in report["duplicates"] if _members(g) not in conflicting]
    parts += _groups("Duplicates", copies, classes, images,
                     "Groups of copies: exact, normalized (case and spacing), near (a few words changed), image "
                     "(resized or re-encoded), semantic (the model's features nearly identical). A copy in two splits "
                     "is leakage: the model is tested on what it trained on.")
    profile = report["profile"]
    for key, heading in (("near_empty", "Near-empty inputs"), ("long", "Unusually long texts"),
                         ("blank", "Blank images"), ("tiny", "Tiny images")):
        if profile.get(key):
            parts += _listed(heading, profile[key], classes, images)
    if report.get("unreadable"):
        parts += _listed("Unreadable images", report["unreadable"], classes, False, "reason")
    if report.get("outliers"):
        parts += _listed("Outliers: unlike any other example in the model's features", report["outliers"], classes,
                         images, "isolation")
    parts += [_balance(report["balance"], classes), _lengths(report), _run_facts(report)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head><body><main>{''.join(parts)}</main>"
            f"<script>{SCRIPT}</script></body></html>")


def _members(group: dict[str, Any]) -> tuple[Any, ...]:
    return (group["kind"], *((m["split"], m["row"]) for m in group["members"]))


def _cards(report: dict[str, Any]) -> str:
    groups = report["duplicates"]
    items = [(len(groups), "duplicate groups"), (sum(g["across_splits"] for g in groups), "across splits (leakage)"),
             (len(report["conflicts"]), "inputs with conflicting labels"),
             (len(report["label_issues"]) if "skipped" not in report["probe"] else "–", "likely mislabeled"),
             (len(report["profile"].get("near_empty", [])), "near-empty inputs"),
             (report.get("outlier_count", "–"), "outliers")]
    return "<div class='cards'>" + "".join(f"<div class='card'><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                           for v, k in items) + "</div>"


def _example(ref: dict[str, Any], images: bool) -> str:
    return thumbnail(ref["input"]) if images else escape(ref["input"])


def _decide(ref: dict[str, Any], classes: list[str], suggested: str | None = None) -> str:
    """A select with keep, drop and relabel-to-each-other-class, tied to the row (the same row elsewhere on the page
    follows it)."""
    options = ["<option value=''>–</option>", "<option value='keep'>keep</option>",
               "<option value='drop'>drop</option>"]
    for label in classes:
        if label != ref["label"]:
            mark = " (suggested)" if label == suggested else ""
            options.append(f"<option value='relabel:{escape(label)}'>relabel → {escape(label)}{mark}</option>")
    key = f"{ref['split']}:{ref['row']}"
    attrs = (f"data-key='{escape(key)}' data-split='{escape(ref['split'])}' data-row='{ref['row']}' "
             f"data-file='{escape(ref['file'])}' data-input='{escape(ref['input'])}'")
    return f"<select class='decide' {attrs}>{''.join(options)}</select>"


def _where(ref: dict[str, Any]) -> str:
    return f"{escape(ref['split'])}<br><span class='tag'>{escape(ref['file'])} row {ref['row']}</span>"


def _label_issues(issues: list[dict[str, Any]], classes: list[str], images: bool,
                  probe: dict[str, Any]) -> list[str]:
    if "skipped" in probe:
        return ["<h2>Likely mislabeled</h2>", f"<p class='sub'>Not checked: {escape(probe['skipped'])}.</p>"]
    rows = "".join(
        f"<tr><td>{_decide(r, classes, r['suggested'])}</td><td class='x'>{_example(r, images)}</td>"
        f"<td>{_where(r)}</td><td>{escape(r['given'])}</td><td>{escape(r['suggested'])}</td>"
        f"<td class='n'>{r['score']:.3f}</td><td class='n'>{r['p_suggested']:.3f}</td></tr>" for r in issues[:SHOWN])
    more = _more(len(issues))
    return ["<h2>Likely mislabeled</h2>",
            f"<p class='sub'>Confident learning (cleanlab) on a fast probe's held-out probabilities ({probe['folds']}-"
            "fold out-of-fold on train; validation and test by the probe fitted on train), surest first. Score: "
            f"1 − the probe's probability of the given label. {more}</p>",
            "<table><tr><th>decision</th><th>example</th><th>where</th><th>given</th><th>suggested</th><th>score</th>"
            f"<th>p(suggested)</th></tr>{rows}</table>" if issues else "<p>None found.</p>"]


def _groups(heading: str, groups: list[dict[str, Any]], classes: list[str], images: bool, lead: str) -> list[str]:
    if not groups:
        return [f"<h2>{escape(heading)}</h2><p>None found.</p>"]
    rows = ""
    for g in groups[:SHOWN]:
        members = g["members"]
        what = (f"{escape(g['kind'])}<br><span class='tag'>similarity {g['similarity']:.2f}"
                f"{' · across splits' if g['across_splits'] else ''}</span>")
        for i, m in enumerate(members[:MEMBERS_SHOWN]):
            first = f"<td rowspan='{min(len(members), MEMBERS_SHOWN)}'>{what}</td>" if i == 0 else ""
            rows += (f"<tr class='{'group' if i == 0 else ''}'>{first}<td>{_decide(m, classes)}</td>"
                     f"<td class='x'>{_example(m, images)}</td><td>{_where(m)}</td><td>{escape(m['label'])}</td></tr>")
        if len(members) > MEMBERS_SHOWN:
            rows += (f"<tr><td></td><td colspan='4' class='tag'>… {len(members) - MEMBERS_SHOWN} more in "
                     "inspect.json</td></tr>")
    return [f"<h2>{escape(heading)}</h2>", f"<p class='sub'>{escape(lead)} {_more(len(groups))}</p>",
            f"<table><tr><th>kind</th><th>decision</th><th>example</th><th>where</th><th>label</th></tr>{rows}</table>"]


def _listed(heading: str, refs: list[dict[str, Any]], classes: list[str], images: bool,
            extra: str | None = None) -> list[str]:
    head = f"<th>{escape(extra)}</th>" if extra else ""
    rows = "".join(f"<tr><td>{_decide(r, classes)}</td><td class='x'>{_example(r, images)}</td><td>{_where(r)}</td>"
                   f"<td>{escape(r['label'])}</td>{f'<td>{escape(r[extra])}</td>' if extra else ''}</tr>"
                   for r in refs[:SHOWN])
    return [f"<h2>{escape(heading)}</h2>", f"<p class='sub'>{_more(len(refs))}</p>",
            f"<table><tr><th>decision</th><th>example</th><th>where</th><th>label</th>{head}</tr>{rows}</table>"]


def _more(n: int) -> str:
    return f"The first {SHOWN} of {n:,} are shown; inspect.json has them all." if n > SHOWN else ""


def _balance(found: dict[str, Any], classes: list[str]) -> str:
    splits = list(found["counts"])
    head = "".join(f"<th>{escape(s)}</th>" for s in splits)
    rows = "".join(f"<tr><td>{escape(c)}</td>" + "".join(f"<td class='n'>{found['counts'][s][c]:,}</td>"
                                                           for s in splits) + "</tr>" for c in classes)
    return (f"<h2>Class balance</h2><p class='sub'>Largest / smallest class in train: {found['imbalance']:.1f}.</p>"
            f"<table><tr><th>class</th>{head}</tr>{rows}</table>")


def _lengths(report: dict[str, Any]) -> str:
    profile = report["profile"]
    if "lengths" in profile:
        table, unit = profile["lengths"], ("chars", "words")
    elif "sizes" in profile:
        table, unit = profile["sizes"], ("width", "height")
    else:
        return ""
    rows = ""
    for split, measures in table.items():
        for name in unit:
            m = measures[name]
            if m:
                rows += (f"<tr><td>{escape(split)}</td><td>{name}</td>" + "".join(
                    f"<td class='n'>{m[k]:,.0f}</td>" for k in ("min", "median", "p95", "max")) + "</tr>")
    heading = "Lengths" if unit[0] == "chars" else "Image sizes (pixels)"
    return (f"<h2>{heading}</h2><table><tr><th>split</th><th>measure</th><th>min</th><th>median</th><th>95th "
            f"percentile</th><th>max</th></tr>{rows}</table>")


def _run_facts(report: dict[str, Any]) -> str:
    facts = {"probe": report["probe"], "features": report.get("features"), "timings": report["timings"],
             "review": report["data"].get("review"), "fix": report.get("fix")}
    shown = json.dumps({k: v for k, v in facts.items() if v}, indent=2)
    return (f"<h2>How it was checked</h2><details><summary>probe, features, timings</summary><pre><code>"
            f"{escape(shown)}</code></pre></details>")
