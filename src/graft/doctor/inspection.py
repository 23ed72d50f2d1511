"""`graft inspect`: read the recipe's data as training would, then report what is wrong with it, each finding with
its file and row: duplicates within and across splits, the same input with different labels, likely mislabeled
examples, class balance, lengths or sizes, near-empty inputs and outliers. It writes inspect.json and inspect.html
(a page to review the suspicious examples and export decisions as a `data.review` file) and, with `--fix`, cleaned
copies of the split files.

`check_data` is the quick part (no model: duplicates, conflicts, near-empty inputs, balance), run at the start of
every `graft train`.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.checks import plural
from graft.data.tables import TableFormat
from graft.doctor.duplicates import SAME_INPUT, Group, file_digests, image_duplicates, text_duplicates
from graft.doctor.examples import SPLITS, Examples, read_examples
from graft.doctor.profile import IMBALANCE, balance, image_profile, look_at_images, text_profile
from graft.errors import GraftError
from graft.recipe import Recipe, load_recipe
from graft.tasks import get_task

REPORT_FILE = "inspect.json"
PAGE_FILE = "inspect.html"
KINDS = ("exact", "normalized", "image", "near", "semantic")
OUTLIERS_SHOWN = 50


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def inspect(recipe: Recipe | str | Path | dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (),
            output: Path | str | None = None, fix: Path | str | None = None, label_issues: str = "relabel",
            probe: bool = True, say: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Inspect the recipe's data; write inspect.json and inspect.html to `output` (default: `inspect-<name>` next
    to output.dir) and, with `fix`, cleaned split files and their log there; return the report. `probe` False
    leaves out everything that needs the model (label issues, semantic duplicates, outliers)."""
    from graft.doctor.fix import LABEL_POLICIES, check_fix_dir, write_fix
    from graft.files import write_json
    from graft.report.inspect_page import write_inspect_page

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    out = inspect_dir(recipe, Path(output) if output is not None else None)
    if fix is not None:
        check_fix_dir(Path(fix))
        if label_issues not in LABEL_POLICIES:
            raise GraftError(f"--label-issues {label_issues!r}: write one of {', '.join(LABEL_POLICIES)}")
        if not probe:
            label_issues = "keep"
    examples = read_examples(recipe)
    for warning in examples.warnings:
        say(f"warning: {warning}")
    report, examples = examine(recipe, examples, deep=probe, say=say)
    if fix is not None:
        d = recipe.data
        column = d.text_column if examples.kind == "text" else d.image_column
        report["fix"] = write_fix(examples, report, Path(fix), label_issues, column, d.label_column,
                                  TableFormat.of(d))
    report["files"] = {"json": str(out / REPORT_FILE), "page": str(out / PAGE_FILE)}
    write_json(out / REPORT_FILE, report)
    write_inspect_page(out)
    return report


def inspect_dir(recipe: Recipe, output: Path | None) -> Path:
    """Where the report goes: `output`, or `inspect-<name>` beside output.dir. Never a run directory, nor a folder
    holding files other than an earlier report (which is replaced)."""
    from graft.rundir import RECORD_FILE

    out = output or recipe.output.dir.parent / f"inspect-{recipe.output.dir.name}"
    flag = "--output" if output is not None else "the report folder"
    if out.exists() and not out.is_dir():
        raise GraftError(f"{flag} {out}: is a file; give a folder for inspect.json and inspect.html")
    if (out / RECORD_FILE).exists():
        raise GraftError(f"{flag} {out}: is a run directory ({RECORD_FILE}); graft inspect never writes into one: "
                         f"give another folder with --output")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise GraftError(f"{flag} {out}: holds files that are not an inspect report; give an empty or new folder "
                         f"with --output")
    return out


def check_data(recipe: Recipe, say: Callable[[str], None]) -> None:
    """The quick checks at the start of a run, as data.inspect says: one line (warn), a refusal (error) or nothing
    (off). Only what needs no model: duplicates, conflicting labels, near-empty inputs, class balance (said, never
    a refusal)."""
    if recipe.data.inspect == "off" or not get_task(recipe.task).has_classes:
        return
    report, _ = examine(recipe, read_examples(recipe), deep=False)
    found = problems(report)
    if found and recipe.data.inspect == "error":
        raise GraftError(f"data.inspect: {'; '.join(found)}; `graft inspect RECIPE` lists the rows (--fix writes "
                         f"cleaned copies), or set data.inspect: warn")
    imbalance = report["balance"]["imbalance"]
    if imbalance >= IMBALANCE:  # a property of the data, not a fault: said, never blocking
        found.append(f"class imbalance {imbalance:.0f}:1 in train")
    if found:
        say(f"inspect: {'; '.join(found)} (rows: graft inspect RECIPE)")


def examine(recipe: Recipe, examples: Examples, *, deep: bool,
            say: Callable[[str], None] = _stderr) -> tuple[dict[str, Any], Examples]:
    """The report on `examples`, and the examples it speaks of (unreadable images left out); `deep` adds what needs
    the model's features, and perceptual image hashes."""
    started = time.perf_counter()
    report: dict[str, Any] = {"recipe": recipe.dump(), "unreadable": []}
    facts = None
    if examples.kind == "image" and deep:
        facts = look_at_images(examples.inputs)
        bad = set(facts.unreadable)
        report["unreadable"] = [{**examples.ref(n), "reason": why} for n, why in facts.unreadable.items()]
        facts = facts.select([n for n in range(len(examples)) if n not in bad])
        examples = examples.without(bad)
    if examples.kind == "image":
        groups = image_duplicates(file_digests(examples.inputs), facts.hashes if facts else [None] * len(examples))
        report["profile"] = image_profile(examples, facts) if facts else {}
    else:
        groups = text_duplicates(examples.inputs)
        report["profile"] = text_profile(examples)
    report["balance"] = balance(examples)
    timings = {"duplicates_s": time.perf_counter() - started}
    report["label_issues"], report["probe"] = [], {"skipped": "--no-probe: the model was not loaded"}
    if deep:
        groups += _with_features(recipe, examples, groups, report, timings, say)
    report["duplicates"] = [_group(examples, g) for g in _ordered(groups)]
    report["conflicts"] = [g for g in report["duplicates"] if g["kind"] in SAME_INPUT and g["conflicting"]]
    report["data"] = _data(recipe, examples)
    for key in ("near_empty", "long", "blank", "tiny"):
        if key in report["profile"]:
            report["profile"][key] = [examples.ref(n) for n in report["profile"][key]]
    report["timings"] = {k: round(v, 2) for k, v in {**timings, "total_s": time.perf_counter() - started}.items()}
    report["summary"] = summarise(report)
    return report, examples


def _with_features(recipe: Recipe, examples: Examples, groups: list[Group], report: dict[str, Any],
                   timings: dict[str, float], say: Callable[[str], None]) -> list[Group]:
    """Semantic duplicates, outliers and label issues, from the model's frozen features; returns the semantic
    groups."""
    from graft.doctor.duplicates import COSINE, neighbours, semantic_duplicates
    from graft.doctor.features import frozen_features

    say(f"inspect: frozen features of {recipe.model.name} for {len(examples):,} {examples.kind}s")
    features, info = frozen_features(recipe, examples)
    timings["features_s"] = info["seconds"]
    started = time.perf_counter()
    near = neighbours(features)
    semantic = [] if near.crowded else semantic_duplicates(near.pairs, len(examples), groups)
    report["features"] = {**info, "semantic_cosine": COSINE, "semantic_checked": not near.crowded}
    q1, q3 = np.percentile(near.isolation, [25, 75])
    limit = q3 + 3 * (q3 - q1)
    far = sorted(np.nonzero(near.isolation > limit)[0].tolist(), key=lambda n: -near.isolation[n])
    report["outliers"] = [{**examples.ref(n), "isolation": round(float(near.isolation[n]), 4)}
                          for n in far[:OUTLIERS_SHOWN]]
    report["outlier_count"] = len(far)
    timings["neighbours_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _label_issues(recipe, examples, features, report)
    timings["probe_s"] = time.perf_counter() - started
    return semantic


def _label_issues(recipe: Recipe, examples: Examples, features: np.ndarray, report: dict[str, Any]) -> None:
    from graft.doctor.labels import MIN_EXAMPLES, label_issues, probe_probabilities

    classes = examples.classes
    ids = {c: i for i, c in enumerate(classes)}
    where = {key: np.array([n for n, s in enumerate(examples.splits) if s == key], dtype=int) for key in examples.parts}
    y = {key: np.array([ids[examples.labels[n]] for n in where[key]], dtype=int) for key in where}
    if len(where["train"]) < MIN_EXAMPLES:
        report["probe"] = {"skipped": f"train has {len(where['train'])} examples; a probe needs {MIN_EXAMPLES}"}
        return
    probe = probe_probabilities({key: features[n] for key, n in where.items()}, y, len(classes), recipe.train.seed)
    report["probe"] = probe.record()
    issues_found, scores = [], {}
    for key, probs in probe.probs.items():
        found = label_issues(y[key], probs)
        score = 1.0 - found.quality
        scores[key] = {"rows": [examples.row(n) for n in where[key]], "scores": np.round(score, 4).tolist()}
        for i in found.flagged:
            n, given, suggested = where[key][i], y[key][i], found.suggested[i]
            issues_found.append({**examples.ref(n), "given": classes[given], "suggested": classes[suggested],
                                 "score": round(float(score[i]), 4), "p_given": round(float(probs[i, given]), 4),
                                 "p_suggested": round(float(probs[i, suggested]), 4)})
    report["label_issues"] = sorted(issues_found, key=lambda r: -r["score"])
    report["label_scores"] = scores


def _ordered(groups: list[Group]) -> list[Group]:
    return sorted(groups, key=lambda g: (KINDS.index(g.kind), g.members[0]))


def _group(examples: Examples, group: Group) -> dict[str, Any]:
    members = [examples.ref(n) for n in group.members]
    splits = sorted({m["split"] for m in members}, key=SPLITS.index)
    return {"kind": group.kind, "similarity": round(group.similarity, 4), "splits": splits,
            "across_splits": len(splits) > 1, "conflicting": len({m["label"] for m in members}) > 1,
            "members": members}


def _data(recipe: Recipe, examples: Examples) -> dict[str, Any]:
    review = recipe.data.review
    counts = Counter(d.action for d in examples.reviewed)
    return {"kind": examples.kind, "labels": examples.classes,
            "splits": {key: {"file": part.name, "path": _shown(examples.paths[key]), "n": len(part.texts)}
                       for key, part in examples.parts.items()},
            "review": {"file": str(review), **counts} if review is not None else None}


def _shown(source: Any) -> str:
    from graft.data.tables import source_name

    return str(source) if isinstance(source, Path) else source_name(source)


def problems(report: dict[str, Any]) -> list[str]:
    """What is wrong, as short phrases (empty: nothing found)."""
    out = []
    groups = report["duplicates"]
    if groups:
        kinds = Counter(g["kind"] for g in groups)
        across = sum(g["across_splits"] for g in groups)
        named = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        out.append(f"{named} duplicate group{'s' if len(groups) > 1 else ''} ({across} across splits)")
    if report["conflicts"]:
        first = report["conflicts"][0]["members"]
        out.append(f"{plural(len(report['conflicts']), 'input')} with conflicting labels (e.g. {_rows(first)})")
    noun = report["data"]["kind"]
    near_empty = report["profile"].get("near_empty", [])
    if near_empty:
        out.append(f"{plural(len(near_empty), 'near-empty ' + noun)} (e.g. {_at(near_empty[0])} "
                   f"{near_empty[0]['input']!r})")
    if report["unreadable"]:
        out.append(f"{plural(len(report['unreadable']), 'unreadable image')} (e.g. {_at(report['unreadable'][0])})")
    return out


def _at(ref: dict[str, Any]) -> str:
    return f"{ref['file']} row {ref['row']}"


def _rows(members: list[dict[str, Any]]) -> str:
    shown = [f"{_at(m)} {m['label']!r}" for m in members[:2]]
    return " vs ".join(shown)


def summarise(report: dict[str, Any]) -> list[str]:
    """What the terminal prints: one line per kind of finding, each with an example."""
    data = report["data"]
    noun = data["kind"]
    sizes = " / ".join(f"{s['n']:,} {key}" for key, s in data["splits"].items())
    total = sum(s["n"] for s in data["splits"].values())
    lines = [f"{total:,} {noun}{'' if total == 1 else 's'} ({sizes}), {len(data['labels'])} classes"]
    groups = report["duplicates"]
    if groups:
        kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(g["kind"] for g in groups).items())
        example = next((g for g in groups if g["across_splits"]), groups[0])
        lines.append(f"duplicates: {kinds} ({plural(len(groups), 'group')}, {sum(g['across_splits'] for g in groups)}"
                     f" across splits; e.g. {', '.join(_at(m) for m in example['members'][:3])})")
    else:
        lines.append("duplicates: none")
    if not report.get("features", {}).get("semantic_checked", True):
        lines.append("semantic duplicates: not checked (the model's features barely tell the inputs apart)")
    if report["conflicts"]:
        lines.append(f"conflicting labels: {plural(len(report['conflicts']), 'input')} with two or more labels "
                     f"(e.g. {_rows(report['conflicts'][0]['members'])})")
    lines.append(_issues_line(report))
    lines.append(_balance_line(report["balance"]))
    profile = report["profile"]
    for key, what in (("near_empty", f"near-empty {noun}"), ("long", "unusually long text"),
                      ("blank", "blank image"), ("tiny", "tiny image")):
        if profile.get(key) and (key != "near_empty" or noun == "text"):
            first = profile[key][0]
            lines.append(f"{what}s: {len(profile[key])} (e.g. {_at(first)} {first['input'][:60]!r})")
    if report["unreadable"]:
        lines.append(f"unreadable images: {len(report['unreadable'])} (e.g. {_at(report['unreadable'][0])})")
    if report.get("outlier_count"):
        first = report["outliers"][0]
        lines.append(f"outliers: {plural(report['outlier_count'], noun)} unlike any other in the model's features "
                     f"(e.g. {_at(first)} {first['input'][:60]!r})")
    return lines


def _issues_line(report: dict[str, Any]) -> str:
    probe = report["probe"]
    if "skipped" in probe:
        return f"label issues: not checked ({probe['skipped']})"
    issues = report["label_issues"]
    agreement = ", ".join(f"{key} {a:.2f}" for key, a in probe["agreement"].items())
    line = (f"label issues: {len(issues)} likely mislabeled (confident learning on a {probe['folds']}-fold probe; "
            f"probe agrees with the labels: {agreement})")
    if issues:
        top = issues[0]
        line += f"; surest: {_at(top)} {top['given']!r} -> {top['suggested']!r} ({top['score']:.2f})"
    return line


def _balance_line(found: dict[str, Any]) -> str:
    counts = found["counts"]["train"]
    shown = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
    more = f" … ({len(counts) - 6} more)" if len(counts) > 6 else ""
    line = f"balance (train): {shown}{more}; largest / smallest {found['imbalance']:.1f}"
    for key, missing in found["missing"].items():
        line += f"; {key} lacks {', '.join(map(repr, missing[:5]))}"
    return line
