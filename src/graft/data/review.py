"""A person's decisions on single examples (`data.review: FILE`), applied as the data is read, in training and in
`graft inspect` alike.

The file is a CSV with columns `split`, `row`, `action` and, for relabelling, `label` (other columns, such as the
text the inspect page exports beside them, are ignored). `split` names the recipe's file (`train`, `validation`,
`test`), `row` its 1-based data row as every message names it; `action` is `keep`, `drop` or `relabel`. A row of
the review that cannot be applied (unknown split, row or action, a label no file has) is an error naming that row.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from graft.data.checks import Labelled, plural, shown
from graft.errors import GraftError

ACTIONS = ("keep", "drop", "relabel")
COLUMNS = ("split", "row", "action")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Decision:
    split: str
    row: int
    action: str
    label: str | None
    line: int
    """The decision's own data row in the review file, for messages."""


def read_review(path: Path) -> list[Decision]:
    """The decisions of a review CSV, each checked on its own (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"data.review {path}: no such file; give the CSV of decisions the inspect page exports "
                         f"(columns split, row, action, label)")
    with path.open(newline="", encoding="utf-8-sig") as file:
        records = list(csv.DictReader(file))
        header = list(records[0]) if records else []
    missing = [c for c in COLUMNS if c not in header]
    if records and missing:
        raise GraftError(f"data.review {path.name}: no column {missing[0]!r} (columns: {shown(header, 10)}); the "
                         f"columns are split, row, action and label")
    return [_decision(record, line, path.name) for line, record in enumerate(records, start=1)]


def _decision(record: dict[str, str | None], line: int, name: str) -> Decision:
    where = f"data.review {name} row {line}"
    split, row, action = ((record.get(c) or "").strip() for c in COLUMNS)
    label = (record.get("label") or "").strip() or None
    if action not in ACTIONS:
        raise GraftError(f"{where}: action {action!r}; write one of {', '.join(ACTIONS)}")
    if not row.isdigit() or int(row) < 1:
        raise GraftError(f"{where}: row {row!r}; write the example's row number (1 is the first data row)")
    if action == "relabel" and label is None:
        raise GraftError(f"{where}: relabel without a label; write the new label in the label column")
    return Decision(split, int(row), action, label if action == "relabel" else None, line)


def apply_decisions(parts: dict[str, Labelled], decisions: list[Decision], name: str) -> dict[str, Labelled]:
    """`parts` (split -> its file's examples) with the decisions applied: dropped rows left out, relabelled rows
    carrying their new label. Every decision must name a row that exists, once, and a label some file has."""
    known = {label for part in parts.values() for label in part.labels}
    position = {key: {row: i for i, row in enumerate(part.rows)} for key, part in parts.items()}
    seen: dict[tuple[str, int], int] = {}
    for d in decisions:
        where = f"data.review {name} row {d.line}"
        if d.split not in parts:
            carved = " (it is carved from train: name the row of the train file)" if d.split in SPLITS else ""
            raise GraftError(f"{where}: split {d.split!r} has no file in this recipe{carved}; write one of "
                             f"{', '.join(parts)}")
        if d.row not in position[d.split]:
            raise GraftError(f"{where}: {parts[d.split].name} has no row {d.row} (rows 1 to "
                             f"{max(parts[d.split].rows)}); fix the row number")
        if (d.split, d.row) in seen:
            raise GraftError(f"{where}: {d.split} row {d.row} is already decided in row {seen[d.split, d.row]}; keep "
                             f"one decision per example")
        seen[d.split, d.row] = d.line
        if d.label is not None and d.label not in known:
            raise GraftError(f"{where}: label {d.label!r} is not a label of the data (labels: {shown(sorted(known))}); "
                             f"write one of them")
    out = {}
    for key, part in parts.items():
        mine = {d.row: d for d in decisions if d.split == key}
        keep = [i for i, row in enumerate(part.rows) if row not in mine or mine[row].action != "drop"]
        labels = [mine[row].label if row in mine and mine[row].label else label
                  for row, label in zip(part.rows, part.labels, strict=True)]
        out[key] = replace(part, labels=labels).select(keep)
    return out


def apply_review(parts: dict[str, Labelled], path: Path | None) -> tuple[dict[str, Labelled], list[str]]:
    """`parts` with the review file's decisions applied (unchanged when `path` is None), and a line saying what
    changed."""
    if path is None:
        return parts, []
    decisions = read_review(path)
    counts = Counter(d.action for d in decisions)
    said = ", ".join(f"{verb} {plural(counts[action], 'row')}" for action, verb in
                     (("drop", "dropped"), ("relabel", "relabelled"), ("keep", "kept")) if counts[action])
    return apply_decisions(parts, decisions, Path(path).name), [f"data.review {Path(path).name}: {said or 'empty'}"]
