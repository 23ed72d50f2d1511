"""Texts with one or more numeric targets (regression): read the user's files, check every target, carve missing
splits, and the training split's mean and spread that the model learns the targets in.

A split that is not given is carved from train by a seeded shuffle (there are no classes to stratify by). The
leakage and duplicate checks are the classifiers' own (`graft.data.checks`), applied to `Targets`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from graft.data.checks import drop_duplicate_texts, format_rows, require_column, text_values
from graft.data.sources import locate_splits
from graft.data.splits import SPLITS, TextSplits, remove_leakage, split_sources
from graft.data.tables import PLAIN, Source, TableFormat, read_rows, scalar_values, source_name
from graft.errors import GraftError


@dataclass(frozen=True)
class Targets:
    """Texts and their target values read from one file; `values[i]` holds the i-th text's targets, in the order of
    the target columns, and `rows[i]` its source row. Duck-types `Labelled` for the leakage and duplicate checks."""

    name: str
    texts: list[str]
    values: list[tuple[float, ...]]
    rows: list[int]
    noun: str = "text"

    def select(self, keep: Sequence[int]) -> Targets:
        return replace(self, texts=[self.texts[i] for i in keep], values=[self.values[i] for i in keep],
                       rows=[self.rows[i] for i in keep])


class TargetNames(list):
    """The target columns' names, in the order of the model's outputs, with each target's training mean and
    standard deviation (the loss standardises by them). `standardised`: the outputs are in standard deviations from
    the mean (while training); else in the targets' own units (a finished model, its scale folded in). Saved as a
    plain list (run.json, the model's id2label)."""

    def __init__(self, names: Sequence[str], mean: Sequence[float] = (), std: Sequence[float] = (),
                 standardised: bool = True) -> None:
        super().__init__(names)
        self.mean = [float(m) for m in mean] or [0.0] * len(names)
        self.std = [float(s) for s in std] or [1.0] * len(names)
        self.standardised = standardised


def target_columns(label_column: str, columns: list[str] | None) -> list[str]:
    """data.target_columns when given, else data.label_column alone."""
    return list(columns) if columns else [label_column]


def load_target_splits(train: Path | str, validation: Path | str | None, test: Path | str | None, *,
                       text_column: str, targets: list[str], split: tuple[float, float, float], seed: int,
                       leakage: str, fmt: TableFormat = PLAIN) -> TextSplits:
    """Read, check and split the user's files; `split` gives the (train, validation, test) fractions used to carve
    the splits that are not given."""
    given, warnings = locate_splits(train, validation, test)
    read = {key: read_targets(source, text_column, targets, fmt) for key, source in given.items()}
    parts, found = remove_leakage(read, leakage)  # type: ignore[arg-type]  # Targets duck-types Labelled
    warnings += found
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        whole, found = drop_duplicate_texts(parts["train"])  # type: ignore[arg-type]
        warnings += found
        parts |= {key: whole.select(rows) for key, rows in shuffled_split(len(whole.texts), carve, seed).items()}
    values = np.asarray(parts["train"].values, dtype=np.float64)
    std = values.std(axis=0)
    flat = [name for name, s in zip(targets, std, strict=True) if not s > 0]
    if flat:
        raise GraftError(f"{parts['train'].name}: target {flat[0]!r} has the same value in every training row, so "
                         f"there is nothing to learn; check data.target_columns / data.label_column")
    return TextSplits(**{key: to_dataset(parts[key]) for key in SPLITS},
                      labels=TargetNames(targets, values.mean(axis=0), std),
                      sources=split_sources({key: part.name for key, part in read.items()}, given),
                      warnings=warnings)


def read_targets(source: Source | Path, text_column: str, targets: list[str], fmt: TableFormat = PLAIN) -> Targets:
    """One file's texts and targets; a target that is missing, not a number, or not finite is refused with its row."""
    name = source_name(source)
    table, rows = read_rows(source, fmt)
    require_column(table.column_names, text_column, name, "data.text_column")
    field = "data.target_columns" if len(targets) > 1 else "data.label_column"
    for column in targets:
        require_column(table.column_names, column, name, field)
    if len(table) == 0:
        raise GraftError(f"{name}: no data rows; add examples below the header")
    texts = text_values(scalar_values(table, text_column, name, "data.text_column", rows), name, text_column, rows)
    columns = [_numbers(scalar_values(table, column, name, field, rows), name, column, rows) for column in targets]
    return Targets(name, texts, list(zip(*columns, strict=True)), list(rows))


def _numbers(values: list[object], name: str, column: str, rows: Sequence[int]) -> list[float]:
    out, bad = [], []
    for value, row in zip(values, rows, strict=True):
        number = _number(value)
        if number is None:
            bad.append((row, value))
        out.append(number)
    if bad:
        row, value = bad[0]
        what = "no value" if value is None or not str(value).strip() else f"{str(value)[:40]!r}, not a finite number"
        more = f" ({format_rows([r for r, _ in bad])})" if len(bad) > 1 else ""
        raise GraftError(f"{name}: row {row}: target column {column!r} holds {what}{more}; a regression needs a number "
                         f"in every row: fix or remove those rows")
    return out  # type: ignore[return-value]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def shuffled_split(n: int, carve: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Positions for `train` and each split in `carve` (name -> fraction), each in original order: a seeded shuffle
    cut into pieces, train keeping at least one example."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    counts = {key: max(1, round(n * fraction)) if fraction > 0 else 0 for key, fraction in carve.items()}
    while sum(counts.values()) >= n and max(counts.values()) > 0:
        counts[max(counts, key=counts.__getitem__)] -= 1
    picked, start = {}, 0
    for key, count in counts.items():
        picked[key] = sorted(order[start:start + count])
        start += count
    picked["train"] = sorted(order[start:])
    return picked


def to_dataset(part: Targets) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "text": pa.array(part.texts, pa.string()),
        "label": pa.array([list(v) for v in part.values], pa.list_(pa.float64())),
        "row": pa.array(part.rows, pa.int64()),
    })

