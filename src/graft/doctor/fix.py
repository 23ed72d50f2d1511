"""`graft inspect --fix OUT_DIR`: cleaned copies of the split files and a log of every row removed or relabelled,
and why. The originals are never touched; OUT_DIR must be new or empty.

The policy, in order (a row's first action stands):
1. a person's review (data.review): its drops and relabels;
2. unreadable images: dropped;
3. the same input with different labels (exact, normalised or perceptual copies): dropped everywhere but test;
4. copies across splits: the test copy stays, validation's goes when test has it, train's when validation or test
   has it (near-copies too: a lightly edited test sentence in train is leakage); repeats within a split keep the
   first row;
5. likely mislabeled rows of train and validation, by `label_issues`: `relabel` (the default) gives the suggested
   label where the probe is at least RELABEL_ABOVE sure of it and drops the rest; `drop` drops them all; `keep`
   leaves them.
Test rows change only by a person's review: an automatic fix there would grade the model on the probe's opinion.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.data.tables import PLAIN, WRITTEN, TableFormat
from graft.doctor.duplicates import SAME_INPUT
from graft.doctor.examples import Examples
from graft.errors import GraftError
from graft.files import writing

LABEL_POLICIES = ("relabel", "drop", "keep")
RELABEL_ABOVE = 0.9
PRECEDENCE = ("test", "validation", "train")
"""Which copy of an example stays: the first split of this order that has one."""
LOG_FILE = "fix_log.csv"
LOG_COLUMNS = ("split", "file", "row", "action", "reason", "old_label", "new_label")


@dataclass(frozen=True)
class Action:
    action: str
    """`drop` or `relabel`."""
    reason: str
    label: str | None = None
    """The new label, for `relabel`."""


def check_fix_dir(out: Path) -> None:
    """Refuse, before any work, a folder that exists with something in it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "exists and is not empty"
        raise GraftError(f"--fix {out}: {what}; give a new or empty folder (the cleaned files and {LOG_FILE} go there)")


def plan_fix(examples: Examples, report: dict[str, Any], label_policy: str) -> dict[tuple[str, int], Action]:
    """(split, row) -> what happens to it, by the policy in the module's docstring."""
    if label_policy not in LABEL_POLICIES:
        raise GraftError(f"--label-issues {label_policy!r}: write one of {', '.join(LABEL_POLICIES)}")
    plan: dict[tuple[str, int], Action] = {}

    def decide(ref: dict[str, Any], action: Action) -> None:
        plan.setdefault((ref["split"], ref["row"]), action)

    review = examples.reviewed
    for d in review:
        if d.action != "keep":
            decide({"split": d.split, "row": d.row}, Action(d.action, f"review (data.review row {d.line})", d.label))
    for ref in report.get("unreadable", []):
        decide(ref, Action("drop", f"unreadable image ({ref['reason']})"))
    groups = report["duplicates"]
    for group in (g for g in groups if g["kind"] in SAME_INPUT and g["conflicting"]):
        for ref in group["members"]:
            if ref["split"] != "test":
                labels = sorted({m["label"] for m in group["members"]})
                decide(ref, Action("drop", f"the same {examples.kind} carries labels {', '.join(map(repr, labels))} "
                                           f"({_where(group['members'], ref)})"))
    for group in (g for g in groups if g["kind"] in (*SAME_INPUT, "near")):
        for ref, action in _copies(group):
            decide(ref, action)
    if label_policy != "keep":
        for issue in report.get("label_issues", []):
            if issue["split"] != "test":
                decide(issue, _label_action(issue, label_policy))
    return plan


def _copies(group: dict[str, Any]) -> list[tuple[dict[str, Any], Action]]:
    members = group["members"]
    keep_split = next(s for s in PRECEDENCE if any(m["split"] == s for m in members))
    keeper = min((m for m in members if m["split"] == keep_split), key=lambda m: m["row"])
    what = "copy" if group["kind"] in SAME_INPUT else f"near-copy (similarity {group['similarity']:.2f})"
    out = []
    for ref in members:
        if ref["split"] == "test" or ref is keeper or (group["kind"] == "near" and ref["split"] == keep_split):
            continue
        out.append((ref, Action("drop", f"{what} of {keeper['file']} row {keeper['row']}")))
    return out


def _label_action(issue: dict[str, Any], policy: str) -> Action:
    said = (f"likely mislabeled: the probe gives {issue['given']!r} {issue['p_given']:.2f}, {issue['suggested']!r} "
            f"{issue['p_suggested']:.2f}")
    if policy == "relabel" and issue["p_suggested"] >= RELABEL_ABOVE:
        return Action("relabel", said, issue["suggested"])
    return Action("drop", said)


def _where(members: list[dict[str, Any]], ref: dict[str, Any]) -> str:
    others = [m for m in members if m is not ref]
    return "; ".join(f"{m['split']} row {m['row']} {m['label']!r}" for m in others[:3]) + (
        f" … ({len(others) - 3} more)" if len(others) > 3 else "")


def write_fix(examples: Examples, report: dict[str, Any], out: Path, label_policy: str, input_column: str,
              label_column: str, fmt: TableFormat = PLAIN) -> dict[str, Any]:
    """Cleaned copies of the split files in `out` and LOG_FILE; returns what was written, the data fields that read
    them, and how many rows changed. A plain file is copied in its own format; image folders and lists become CSV
    lists of absolute paths under `input_column`; globs, saved datasets, hub datasets and files read with a
    `fmt` (headerless, another encoding or delimiter) become UTF-8 CSV files with a header."""
    plan = plan_fix(examples, report, label_policy)
    data: dict[str, Any] = {}
    with writing(out) as tmp:
        tmp.mkdir(parents=True)
        for key, source in examples.paths.items():
            mine = {row: action for (split, row), action in plan.items() if split == key}
            written = _write_split(examples, key, source, mine, tmp, input_column, label_column, fmt)
            data[key] = str(out / written.name)
        _write_log(tmp / LOG_FILE, examples, plan)
    if fmt != PLAIN or examples.reviewed:
        # Plain UTF-8 CSV (or the file's own format), and the review is applied already; inspect reads single-label
        # files only, so no other field of WRITTEN changes.
        data.update({key: WRITTEN[key] for key in ("columns", "encoding", "delimiter", "review")})
    actions = list(plan.values())
    return {"dir": str(out), "data": data, "log": str(out / LOG_FILE),
            "dropped": sum(a.action == "drop" for a in actions),
            "relabelled": sum(a.action == "relabel" for a in actions), "label_policy": label_policy}


def _write_split(examples: Examples, key: str, source: Any, plan: dict[int, Action], folder: Path,
                 input_column: str, label_column: str, fmt: TableFormat) -> Path:
    raw = examples.raw[key]
    suffix = source.suffix.lower() if isinstance(source, Path) else ""
    if examples.kind == "text" and fmt == PLAIN and isinstance(source, Path) and source.is_file() and suffix in WRITERS:
        from graft.data.tables import read_table

        table = read_table(source).to_pandas()
        keep = [row - 1 for row in raw.rows if plan.get(row, Action("keep", "")).action != "drop"]
        for row, action in plan.items():
            if action.action == "relabel":
                table.at[row - 1, label_column] = _cast(action.label, table[label_column].dtype)  # type: ignore[arg-type]
        path = folder / f"{key}{suffix}"
        WRITERS[suffix](table.iloc[keep], path, source)
        return path
    path = folder / f"{key}.csv"
    rows = [(text, plan[row].label if row in plan and plan[row].action == "relabel" else label)
            for text, label, row in zip(raw.texts, raw.labels, raw.rows, strict=True)
            if row not in plan or plan[row].action != "drop"]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([(input_column, label_column), *rows])
    return path


def _cast(label: str, dtype: Any) -> Any:
    """A label string as the column holds labels: a JSON or Parquet column of numbers stays numbers."""
    kind = getattr(dtype, "kind", "O")
    if kind in "iu":
        return int(label)
    if kind == "f":
        return float(label)
    return label


def _json(table: Any, path: Path, source: Path) -> None:
    lines = not source.read_text(encoding="utf-8-sig", errors="replace").lstrip().startswith("[")
    table.to_json(path, orient="records", lines=lines, force_ascii=False)


WRITERS = {
    ".csv": lambda table, path, source: table.to_csv(path, index=False),
    ".tsv": lambda table, path, source: table.to_csv(path, index=False, sep="\t"),
    ".json": _json,
    ".jsonl": _json,
    ".parquet": lambda table, path, source: table.to_parquet(path, index=False),
}


def _write_log(path: Path, examples: Examples, plan: dict[tuple[str, int], Action]) -> None:
    old = {(key, row): label for key, part in examples.raw.items()
           for row, label in zip(part.rows, part.labels, strict=True)}
    order = {key: i for i, key in enumerate(examples.paths)}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        for (key, row), action in sorted(plan.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            writer.writerow((key, examples.raw[key].name, row, action.action, action.reason, old[key, row],
                             action.label or ""))
