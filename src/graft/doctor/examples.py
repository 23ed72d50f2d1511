"""The recipe's data as the data doctor sees it: every file (train, validation, test) read and checked as training
reads it, a person's review applied, but nothing dropped for being a duplicate or leaking across splits: those are
what the doctor reports. One flat numbering runs over all files, train first."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from graft.data.checks import Labelled
from graft.data.review import Decision, apply_decisions, read_review
from graft.errors import GraftError
from graft.recipe import Recipe
from graft.tasks import get_task

SPLITS = ("train", "validation", "test")
CLIP = 300
"""Characters of a text kept in a report."""


@dataclass
class Examples:
    kind: str
    """`text` or `image` (inputs are then image paths)."""
    parts: dict[str, Labelled]
    """Split -> its file's examples, in the file's order."""
    paths: dict[str, Any]
    """Split -> where it was read from: a file, a folder, a glob (Path) or a DatasetDict's split."""
    reviewed: list[Decision] = field(default_factory=list)
    """The review's decisions, applied."""
    raw: dict[str, Labelled] = field(default_factory=dict)
    """The files as read, before the review."""
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def places(self) -> list[tuple[str, int]]:
        """(split, position in its part) of each example, in the flat order."""
        return [(key, i) for key, part in self.parts.items() for i in range(len(part.texts))]

    @cached_property
    def inputs(self) -> list[str]:
        return [text for part in self.parts.values() for text in part.texts]

    @cached_property
    def labels(self) -> list[str]:
        return [label for part in self.parts.values() for label in part.labels]

    @cached_property
    def splits(self) -> list[str]:
        return [key for key, _ in self.places]

    @cached_property
    def classes(self) -> list[str]:
        from graft.data.splits import class_order

        return class_order(self.parts["train"].labels)

    def __len__(self) -> int:
        return len(self.places)

    def row(self, n: int) -> int:
        key, i = self.places[n]
        return self.parts[key].rows[i]

    def ref(self, n: int) -> dict[str, Any]:
        """Where example `n` is, for people: split, file, row, label and the input (a text clipped, a path)."""
        key, i = self.places[n]
        part = self.parts[key]
        text = part.texts[i]
        return {"split": key, "file": part.name, "row": part.rows[i], "label": part.labels[i],
                "input": text if len(text) <= CLIP else text[: CLIP - 1] + "…"}

    def without(self, drop: set[int]) -> Examples:
        """The same files with the examples at flat positions `drop` left out (unreadable images)."""
        keep = {key: [] for key in self.parts}
        for n, (key, i) in enumerate(self.places):
            if n not in drop:
                keep[key].append(i)
        parts = {key: part.select(keep[key]) for key, part in self.parts.items()}
        return Examples(self.kind, parts, self.paths, self.reviewed, self.raw, self.warnings)


def read_examples(recipe: Recipe) -> Examples:
    """The recipe's files, read and checked as training reads them, with data.review applied."""
    task = get_task(recipe.task)
    kind = task.input_kind
    if not task.single_label:
        raise GraftError(f"graft inspect: single-label classification tasks only so far, not {recipe.task}")
    from graft.data.tables import TableFormat

    d = recipe.data
    fmt = TableFormat.of(d)
    if kind == "image":
        from graft.data.images import read_image_files

        given = {key: Path(getattr(d, key)) for key in SPLITS if getattr(d, key) is not None}
        raw, given, warnings = read_image_files(given, d.image_column, d.label_column, fmt)
    else:
        from graft.data.sources import locate_splits
        from graft.data.splits import read_text_files

        given, warnings = locate_splits(d.train, d.validation, d.test)
        raw = read_text_files(given, d.text_column, d.label_column, fmt)
    decisions = read_review(d.review) if d.review is not None else []
    parts = apply_decisions(raw, decisions, d.review.name) if d.review is not None else raw
    if kind == "image":
        from graft.data.images import check_classes

        check_classes(parts, given)
    else:
        from graft.data.splits import check_labels

        parts, found = check_labels(parts, d.normalize_labels)
        warnings += found
    return Examples(kind, parts, given, decisions, raw, warnings)
