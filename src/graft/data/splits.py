"""Train/validation/test splits for text classification: read the user's files, check them, carve missing splits.

Given splits are used as they are; a split that is not given is carved from train by a seeded split that is
stratified per class. Class ids follow `class_order`: numeric when every label is an integer, else sorted.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
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
    check_leakage,
    drop_duplicate_texts,
    label_noise,
    numeric_hint,
    plural,
    shown,
    unify_labels,
)
from graft.data.review import apply_review
from graft.data.sources import locate_splits
from graft.data.tables import PLAIN, Source, TableFormat, read_labelled, source_name
from graft.errors import GraftError

SPLITS = ("train", "validation", "test")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class TextSplits:
    """The three splits as datasets and what to report. Texts: columns `text`, `label` as class id, `row` as 1-based
    source row; a multi-label task's `label` is a 0/1 row per example, a regression's the raw target values, a
    token classifier's `words` and `tags` (ids into `labels`, `O` first) with `where` (file and line or row)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    labels: list[str]
    """Class (tag, target) names; index == class id. A regression's are `TargetNames`, carrying the scale."""
    sources: dict[str, str]
    """Split name -> where it came from, for display: `val.csv` or `train.csv (split)`."""
    warnings: list[str]
    """One line each, for the caller to print."""


def load_text_splits(
    train: Path | str,
    validation: Path | str | None,
    test: Path | str | None,
    *,
    text_column: str,
    label_column: str,
    split: tuple[float, float, float],
    seed: int,
    leakage: str,
    normalize_labels: bool,
    fmt: TableFormat = PLAIN,
    review: Path | None = None,
) -> TextSplits:
    """Read, check and split the user's files (globs, DatasetDicts and hub datasets too, see `graft.data.sources`);
    `split` gives the (train, validation, test) fractions used to carve the splits that are not given; `fmt` says
    how to read text files; `review` is a file of a person's decisions (see `graft.data.review`)."""
    given, warnings = locate_splits(train, validation, test)
    read, found = apply_review(read_text_files(given, text_column, label_column, fmt), review)
    hint = numeric_hint(read["train"].labels)
    parts, checked = check_labels(read, normalize_labels)
    warnings += found + checked + [line for part in parts.values() for line in label_noise(part)]
    warnings += [f"{read['train'].name}: {hint}"] if hint else []
    parts, found = remove_leakage(parts, leakage)
    warnings += found
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        parts, found = _carve(parts, carve, split, seed)
        warnings += found
    labels = class_order(parts["train"].labels)
    ids = {label: i for i, label in enumerate(labels)}
    return TextSplits(
        **{key: _to_dataset(parts[key], ids) for key in SPLITS},
        labels=labels,
        sources=split_sources({key: part.name for key, part in read.items()}, given),
        warnings=warnings,
    )


def read_text_files(given: dict[str, Source], text_column: str, label_column: str,
                    fmt: TableFormat = PLAIN) -> dict[str, Labelled]:
    """Each given source's texts and labels (split -> examples), before any check across sources."""
    names = _display_names(given)
    return {key: read_labelled(path, names[key], text_column, label_column, fmt=fmt) for key, path in given.items()}


def load_labelled_file(
    path: Path, *, text_column: str, label_column: str, labels: list[str], normalize_labels: bool,
    fmt: TableFormat = PLAIN,
) -> datasets.Dataset:
    """Read a labelled file (or glob) to evaluate a trained model on, checked like a validation/test file against
    the model's `labels`; columns `text`, `label` (id into `labels`) and `row`."""
    path = Path(path)
    part = read_labelled(path, source_name(path), text_column, label_column, fmt=fmt)
    [part], _ = unify_labels([part], normalize=normalize_labels, known=labels)
    check_known_labels(part, labels, reference=MODEL_LABELS, fix="fix or remove those rows")
    return _to_dataset(part, {label: i for i, label in enumerate(labels)})


def class_order(labels: Sequence[str]) -> list[str]:
    """Class names in id order: numeric order when every label is an integer, else sorted strings."""
    names = set(labels)
    if all(_INTEGER.fullmatch(name.strip()) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def stratified_split(labels: Sequence[str], carve: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices for `train` and each split in `carve` (name -> fraction of every class), each in original order.

    Written by hand because scikit-learn's splitter fails on small classes with opaque messages; the caller
    checks class sizes first (`check_class_sizes`) so the message can name the class and the fix.
    """
    rng = np.random.default_rng(seed)
    members: defaultdict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    picked: dict[str, list[int]] = {key: [] for key in ("train", *carve)}
    for label in sorted(members):  # a fixed class order, so one seed always draws the same split
        shuffled = np.asarray(members[label])[rng.permutation(len(members[label]))].tolist()
        start = 0
        for key, n in _carve_counts(len(shuffled), carve).items():
            picked[key] += shuffled[start : start + n]
            start += n
        picked["train"] += shuffled[start:]
    return {key: sorted(indices) for key, indices in picked.items()}


def _carve_counts(n: int, carve: dict[str, float]) -> dict[str, int]:
    counts = {key: max(1, round(n * fraction)) if fraction > 0 else 0 for key, fraction in carve.items()}
    while sum(counts.values()) >= n and max(counts.values()) > 1:  # train keeps at least one of every class
        counts[max(counts, key=counts.__getitem__)] -= 1
    return counts


def check_class_sizes(part: Labelled, carve: dict[str, float], split: tuple[float, float, float]) -> None:
    """Raise when a class is too small to put one example in train and one in every carved split."""
    need = 1 + sum(1 for fraction in carve.values() if fraction > 0)
    counts = Counter(part.labels)
    small = [(label, counts[label]) for label in class_order(part.labels) if counts[label] < need]
    if not small:
        return
    if len(small) == 1:
        what = f"class {small[0][0]!r} has {plural(small[0][1], 'example')}"
    else:
        what = f"classes {shown([f'{label!r} ({n})' for label, n in small])} have too few examples"
    if len(carve) == 2:
        layout = "/".join(_percent(fraction) for fraction in split)
    else:
        layout = " ".join(f"{_percent(fraction)}% {key}" for key, fraction in carve.items())
    give = " and ".join(f"data.{key}" for key in carve)
    hint = numeric_hint(part.labels)
    raise GraftError(
        f"{part.name}: {what}; a stratified {layout} split needs at least {need} per class; "
        f"add examples, remove the class, or give {give}" + (f" ({hint})" if hint else "")
    )


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}"


def check_labels(parts: dict[str, Labelled], normalize: bool) -> tuple[dict[str, Labelled], list[str]]:
    """Labels spelt several ways unified (or refused), and validation/test labels that train lacks refused."""
    unified, warnings = unify_labels(list(parts.values()), normalize=normalize)
    parts = dict(zip(parts, unified, strict=True))
    train = parts["train"]
    fix = f"fix or remove those rows, or add examples of the label to {train.name}"
    for key in (key for key in SPLITS[1:] if key in parts):
        check_known_labels(parts[key], class_order(train.labels), reference=train.name, fix=fix)
    return parts, warnings


def _carve(
    parts: dict[str, Labelled], carve: dict[str, float], split: tuple[float, float, float], seed: int
) -> tuple[dict[str, Labelled], list[str]]:
    train, warnings = drop_duplicate_texts(parts["train"])
    check_class_sizes(train, carve, split)
    carved = {key: train.select(indices) for key, indices in stratified_split(train.labels, carve, seed).items()}
    return {**parts, **carved}, warnings


def remove_leakage(parts: dict[str, Labelled], mode: str) -> tuple[dict[str, Labelled], list[str]]:
    parts, warnings = dict(parts), []
    for earlier, later in (("train", "validation"), ("train", "test"), ("validation", "test")):
        if earlier in parts and later in parts:
            parts[later], found = check_leakage(parts[earlier], parts[later], mode)
            warnings += found
    return parts, warnings


def split_sources(names: dict[str, str], given: dict[str, Source]) -> dict[str, str]:
    """Where each split came from, for display: its own file's name, or `train.csv (split)` when carved."""
    return {key: names[key] if key in given else f"{names['train']} (split)" for key in SPLITS}


def _display_names(sources: dict[str, Source]) -> dict[str, str]:
    names = {key: source_name(source) for key, source in sources.items()}
    if len(set(names.values())) < len(names):  # e.g. train/data.csv and test/data.csv
        return {key: str(source) if isinstance(source, Path) else names[key] for key, source in sources.items()}
    return names


def _to_dataset(part: Labelled, ids: dict[str, int]) -> datasets.Dataset:
    # Typed Arrow arrays: the column types hold even for an empty split, and no per-value encoding pass is needed.
    return datasets.Dataset.from_dict(
        {
            "text": pa.array(part.texts, pa.string()),
            "label": pa.array([ids[label] for label in part.labels], pa.int64()),
            "row": pa.array(part.rows, pa.int64()),
        }
    )
