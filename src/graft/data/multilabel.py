"""Multi-label data: each text has a set of labels (possibly none), given as one delimited column (`a,b`; an empty
cell is no label; a JSON list works too) or as one 0/1 column per label.

While files are checked and split, a label set travels as one string, its labels sorted and joined by the delimiter
(labels cannot contain it): the leakage and duplicate checks of single-label data then apply as they are, and the
string is what compare and cross-validation write back to files. Splits hold `text`, `label` (a 0/1 float per
label, in label order) and `row`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from graft.data.checks import (
    MODEL_LABELS,
    Labelled,
    check_known_labels,
    drop_duplicate_texts,
    require_column,
    text_values,
)
from graft.data.sources import locate_splits
from graft.data.splits import SPLITS, TextSplits, class_order, remove_leakage, split_sources
from graft.data.tables import PLAIN, Source, TableFormat, read_rows, scalar_values, source_name
from graft.errors import GraftError


@dataclass(frozen=True)
class LabelFormat:
    """Where a file's label sets are: `column` split on `delimiter`, or the 0/1 `columns` (when given)."""

    column: str = "label"
    delimiter: str = ","
    columns: tuple[str, ...] | None = None

    @classmethod
    def of(cls, data: object) -> LabelFormat:
        columns = getattr(data, "label_columns", None)
        return cls(data.label_column, data.label_delimiter,
                   tuple(columns) if columns else None)

    def split(self, joined: str) -> list[str]:
        return joined.split(self.delimiter) if joined else []


def read_label_sets(source: Source, name: str, text_column: str, labels: LabelFormat,
                    fmt: TableFormat = PLAIN) -> Labelled:
    """The texts of one file (or glob, or split of a DatasetDict) and their label sets, as joined strings."""
    table, rows = read_rows(source, fmt)
    require_column(table.column_names, text_column, name, "data.text_column")
    if len(table) == 0:
        raise GraftError(f"{name}: no data rows; add examples below the header")
    texts = text_values(scalar_values(table, text_column, name, "data.text_column", rows), name, text_column, rows)
    sets = _from_columns(table, labels, name, rows) if labels.columns else _from_column(table, labels, name, rows)
    return Labelled(name=name, texts=texts, labels=[labels.delimiter.join(sorted(s)) for s in sets], rows=rows)


def _from_column(table: datasets.Dataset, labels: LabelFormat, name: str, rows: Sequence[int]) -> list[set[str]]:
    require_column(table.column_names, labels.column, name, "data.label_column")
    sets = []
    for value in table.select_columns([labels.column]).to_dict()[labels.column]:
        items = value if isinstance(value, list) else [] if value is None else str(_plain(value)).split(
            labels.delimiter)
        sets.append({str(_plain(item)).strip() for item in items if item is not None and str(item).strip()})
    for row, found in zip(rows, sets, strict=True):
        inside = next((label for label in found if labels.delimiter in label), None)
        if inside is not None:
            raise GraftError(f"{name}: label {inside!r} at row {row} holds data.label_delimiter "
                             f"{labels.delimiter!r}; rename the label or set another delimiter")
    return sets


def _plain(value: object) -> object:
    """A whole number read as a float (`1.0` from JSON) as the integer it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def _from_columns(table: datasets.Dataset, labels: LabelFormat, name: str, rows: Sequence[int]) -> list[set[str]]:
    assert labels.columns is not None
    sets: list[set[str]] = [set() for _ in rows]
    for column in labels.columns:
        require_column(table.column_names, column, name, "data.label_columns")
        if labels.delimiter in column:
            raise GraftError(f"{name}: label column {column!r} holds data.label_delimiter {labels.delimiter!r}, "
                             f"which joins labels in the files graft writes; rename the column or set another "
                             f"delimiter")
        for i, value in enumerate(scalar_values(table, column, name, "data.label_columns", rows)):
            bit = BINARY.get(str(value).strip().lower()) if value is not None else None
            if bit is None:
                raise GraftError(f"{name}: column {column!r} (data.label_columns) holds {value!r} at row {rows[i]}; "
                                 f"each label column holds 0 or 1")
            if bit:
                sets[i].add(column)
    return sets


def label_names(part: Labelled, labels: LabelFormat) -> list[str]:
    """Every label the file's label sets use, in class order; with 0/1 columns, the columns (even one never set)."""
    if labels.columns:
        return list(labels.columns)
    return class_order([label for joined in part.labels for label in labels.split(joined)])


def check_known(part: Labelled, known: list[str], labels: LabelFormat, reference: str, fix: str) -> None:
    """Refuse labels outside `known`, each named with its rows (as single-label files are)."""
    pairs = [(label, row) for joined, row in zip(part.labels, part.rows, strict=True) for label in labels.split(joined)]
    exploded = Labelled(part.name, [""] * len(pairs), [label for label, _ in pairs], [row for _, row in pairs])
    check_known_labels(exploded, known, reference=reference, fix=fix)


def multi_hot(part: Labelled, names: list[str], labels: LabelFormat) -> datasets.Dataset:
    ids = {label: j for j, label in enumerate(names)}
    hot = np.zeros((len(part.labels), len(names)), dtype=np.float32)
    for i, joined in enumerate(part.labels):
        for label in labels.split(joined):
            hot[i, ids[label]] = 1.0
    return datasets.Dataset.from_dict({
        "text": pa.array(part.texts, pa.string()),
        "label": pa.array(list(hot), pa.list_(pa.float32())),
        "row": pa.array(part.rows, pa.int64()),
    })


def load_multilabel_splits(train: Path | str, validation: Path | str | None, test: Path | str | None, *,
                           text_column: str, labels: LabelFormat, split: tuple[float, float, float], seed: int,
                           leakage: str, fmt: TableFormat = PLAIN) -> TextSplits:
    """Read and check the files; carve the splits not given from train by a seeded shuffle (not stratified: label
    sets rarely repeat often enough to stratify by). The labels are those of the train file: a validation or test
    label it lacks is refused with its rows."""
    given, warnings = locate_splits(train, validation, test)
    names = {key: source_name(source) for key, source in given.items()}
    parts = {key: read_label_sets(source, names[key], text_column, labels, fmt) for key, source in given.items()}
    known = label_names(parts["train"], labels)
    if not known:
        raise GraftError(f"{names['train']}: no row has a label; a multi-label classifier needs labelled examples "
                         f"(check data.label_column / data.label_columns)")
    fix = f"fix or remove those rows, or add examples of the label to {names['train']}"
    for key in (key for key in SPLITS[1:] if key in parts):
        check_known(parts[key], known, labels, names["train"], fix)
    parts, found = remove_leakage(parts, leakage)
    warnings += found
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        parts["train"], found = drop_duplicate_texts(parts["train"])
        warnings += found
        parts.update(_shuffle_split(parts["train"], carve, seed))
    return TextSplits(**{key: multi_hot(parts[key], known, labels) for key in SPLITS}, labels=known,
                      sources=split_sources(names, given), warnings=warnings)


def _shuffle_split(part: Labelled, carve: dict[str, float], seed: int) -> dict[str, Labelled]:
    order = np.random.default_rng(seed).permutation(len(part.texts)).tolist()
    picked: dict[str, list[int]] = defaultdict(list)
    start = 0
    for key, fraction in carve.items():
        n = round(len(order) * fraction)
        picked[key] = order[start:start + n]
        start += n
    picked["train"] = order[start:]
    if not picked["train"]:
        raise GraftError(f"{part.name}: {len(order)} examples leave none to train on after carving "
                         f"{', '.join(carve)}; add examples or give data.validation / data.test")
    return {key: part.select(sorted(indices)) for key, indices in picked.items()}


def load_labelled_sets(path: Path, *, text_column: str, labels: LabelFormat, known: list[str],
                       fmt: TableFormat = PLAIN) -> datasets.Dataset:
    """A labelled file to evaluate a trained model on, its labels checked against the model's."""
    part = read_label_sets(path, source_name(path), text_column, labels, fmt)
    check_known(part, known, labels, MODEL_LABELS, "fix or remove those rows")
    return multi_hot(part, known, labels)
