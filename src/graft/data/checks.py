"""Checks on labelled text data: missing columns, empty texts, missing, mis-spelt or unknown labels, noise, leakage.

A check either raises `GraftError` with one line naming the file, the rows and the fix, or returns warning
lines for the caller to print. Rows are 1-based data records, the header not counted (see `graft.data.tables`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from graft.errors import GraftError

LEAKAGE_MODES = ("error", "warn", "drop")
MODEL_LABELS = "the model's labels"
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Labelled:
    """Texts and string labels read from one file; `rows[i]` is the source row of the i-th example."""

    name: str
    texts: list[str]
    labels: list[str]
    rows: list[int]
    noun: str = "text"
    """What `texts` hold, for messages: `text`, or `image` when they are image paths."""

    def select(self, keep: Sequence[int]) -> Labelled:
        """The examples at positions `keep`, in that order."""
        return replace(
            self,
            texts=[self.texts[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            rows=[self.rows[i] for i in keep],
        )


def shown(items: Sequence[object], limit: int = 5) -> str:
    """`a, b, c … (K more)`: at most `limit` items, so a message stays one readable line."""
    head = ", ".join(str(item) for item in items[:limit])
    return head + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


def format_rows(rows: Sequence[int]) -> str:
    """`row 3` or `rows 3, 8, 9 … (4 more)`."""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown(rows)}"


def plural(n: int, word: str) -> str:
    """`1 text`, `3 texts`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def identity_of(part: Labelled) -> Callable[[str], str]:
    """What makes two entries of `part` the same example: for texts their normalised form, for images the resolved
    path exactly (two files may differ only in case)."""
    return str if part.noun == "image" else normalize_text


def normalize_text(text: str) -> str:
    """The form in which two texts count as the same: stripped, inner whitespace collapsed, casefolded."""
    return " ".join(text.split()).casefold()


def require_column(columns: Sequence[str], column: str, name: str, field: str) -> None:
    """Raise unless `column` is one of `columns`; suggest the closest one and the recipe `field` to set."""
    if column in columns:
        return
    close = difflib.get_close_matches(column, list(columns), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = shown(list(columns), limit=20)
    raise GraftError(f"{name}: no column {column!r} (columns: {listed}); {hint}set {field} to one of them")


def text_values(values: Sequence[object], name: str, column: str, rows: Sequence[int] | None = None) -> list[str]:
    """The column as strings; raise on rows whose text is missing or only whitespace. `rows` names the records
    (default: 1, 2, ...)."""
    texts = ["" if value is None else str(value) for value in values]
    rows = rows or range(1, len(texts) + 1)
    empty = [rows[i] for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise GraftError(f"{name}: empty text in column {column!r}, {format_rows(empty)}; fill or remove those rows")
    return texts


def label_values(values: Sequence[object], name: str, column: str, rows: Sequence[int] | None = None) -> list[str]:
    """The column as label strings (`1.0` read from JSON becomes `1`); raise on rows without a label, and on one
    number written several ways (`1`, `01`, `1.0`), which would otherwise be several classes. `rows` names the
    records (default: 1, 2, ...)."""
    labels = [_label_string(value) for value in values]
    rows = rows or range(1, len(labels) + 1)
    missing = [rows[i] for i, label in enumerate(labels) if not label.strip()]
    if missing:
        raise GraftError(f"{name}: no label in column {column!r}, {format_rows(missing)}; fill or remove those rows")
    _refuse_number_spellings(labels, name, column, rows)
    return labels


def numeric_hint(labels: Sequence[str]) -> str:
    """When a label column looks like a continuous target (more than half its rows distinct non-integer numbers),
    the line that says so; else empty."""
    distinct = {label for label in labels if NUMBER.fullmatch(label.strip()) and not float(label).is_integer()}
    if len(labels) < 20 or len(distinct) * 2 <= len(labels):
        return ""
    return (f"the labels look like measurements, not classes ({len(distinct)} distinct numbers in {len(labels)} "
            f"rows): for a numeric target use task: regression")


def _refuse_number_spellings(labels: list[str], name: str, column: str, rows: Sequence[int]) -> None:
    # Spellings compare stripped: `1` beside ` 1` is a whitespace variant, which unify_labels reports or merges.
    first_row: dict[str, int] = {}
    for row, label in zip(rows, labels, strict=True):
        first_row.setdefault(label, row)
    counts: Counter[str] = Counter(labels)
    spellings: defaultdict[Decimal, dict[str, int]] = defaultdict(dict)  # number → spelling → first row
    totals: Counter[str] = Counter()
    for label, row in first_row.items():
        spelt = label.strip()
        if NUMBER.fullmatch(spelt):
            spellings[Decimal(spelt)].setdefault(spelt, row)
            totals[spelt] += counts[label]
    clashes = [group for group in spellings.values() if len(group) > 1]
    if not clashes:
        return
    group = clashes[0]
    listed = ", ".join(f"{spelt!r} (row {row})" for spelt, row in group.items())
    more = f" ({plural(len(clashes) - 1, 'other number')} too)" if len(clashes) > 1 else ""
    usual = max(group, key=totals.__getitem__)
    raise GraftError(f"{name}: labels {listed} in column {column!r} are one number written {len(group)} ways, "
                     f"which would make {len(group)} classes{more}; write each label one way, e.g. {usual!r} in every "
                     f"row")


def _label_string(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JSON readers widen a column of 1, 2.0 to floats; the class is still `1`
    return str(value)


def unify_labels(
    parts: list[Labelled], *, normalize: bool, known: Sequence[str] = ()
) -> tuple[list[Labelled], list[str]]:
    """Labels that differ only in case or surrounding whitespace are one class spelt two ways.

    Without `normalize` that is an error naming each spelling with a row. With it, labels are stripped and
    each group maps to its most frequent spelling (ties: first seen; a `known` label always wins), with a
    warning per merged group.
    """
    counts: Counter[str] = Counter()
    first_place: dict[str, str] = dict.fromkeys(known, MODEL_LABELS)
    for part in parts:
        counts.update(part.labels)
        for label, row in zip(part.labels, part.rows, strict=True):
            first_place.setdefault(label, f"{part.name} row {row}")
    groups: defaultdict[str, list[str]] = defaultdict(list)
    for label in first_place:  # first-seen order, which settles ties
        groups[label.strip().casefold()].append(label)
    if not normalize:
        clashes = [group for group in groups.values() if len(group) > 1 and not set(group) <= set(known)]
        _raise_on_variants(clashes, first_place)
        return parts, []
    mapping: dict[str, str] = {}
    warnings: list[str] = []
    for group in groups.values():
        canonical, warning = _merge_spellings(group, counts, set(known))
        mapping.update(dict.fromkeys(group, canonical))
        warnings += warning
    mapping.update({label: label for label in known})  # distinct classes of a trained model stay distinct
    return [replace(part, labels=[mapping[label] for label in part.labels]) for part in parts], warnings


def _raise_on_variants(clashes: list[list[str]], first_place: dict[str, str]) -> None:
    if not clashes:
        return
    spellings = ", ".join(f"{label!r} ({first_place[label]})" for label in clashes[0])
    more = f" (and {plural(len(clashes) - 1, 'more such label')})" if len(clashes) > 1 else ""
    raise GraftError(
        f"labels differ only in case or whitespace: {spellings}{more}; "
        "write each label one way in the files or set data.normalize_labels: true"
    )


def _merge_spellings(group: list[str], counts: Counter[str], known: set[str]) -> tuple[str, list[str]]:
    stripped: Counter[str] = Counter()
    for label in group:
        stripped[label.strip()] += counts[label]
    canonical = next((label for label in group if label in known), None) or max(stripped, key=stripped.__getitem__)
    others = [f"{label!r} ({plural(n, 'row')})" for label, n in stripped.items() if label != canonical]
    if not others:
        return canonical, []
    return canonical, [f"data.normalize_labels: merged {', '.join(others)} into {canonical!r}"]


def check_known_labels(part: Labelled, known: Sequence[str], reference: str, fix: str) -> None:
    """Raise when `part` has labels outside `known` (the train labels, or a trained model's labels)."""
    allowed = set(known)
    unknown: defaultdict[str, list[int]] = defaultdict(list)
    for label, row in zip(part.labels, part.rows, strict=True):
        if label not in allowed:
            unknown[label].append(row)
    if not unknown:
        return
    listed = shown([f"{label!r} ({format_rows(rows)})" for label, rows in unknown.items()])
    what = "label" if len(unknown) == 1 else "labels"
    raise GraftError(f"{part.name}: {what} {listed} not in {reference} (labels: {shown(list(known), 10)}); {fix}")


def label_noise(part: Labelled) -> list[str]:
    """A warning when the same text carries different labels in one file: likely label noise, not an error."""
    by_text: defaultdict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(part.texts):
        by_text[normalize_text(text)].append(i)
    clashes = [group for group in by_text.values() if len({part.labels[i] for i in group}) > 1]
    if not clashes:
        return []
    first, second = clashes[0][0], next(i for i in clashes[0] if part.labels[i] != part.labels[clashes[0][0]])
    example = f"row {part.rows[first]} {part.labels[first]!r} vs row {part.rows[second]} {part.labels[second]!r}"
    rows = sorted(part.rows[i] for group in clashes for i in group)
    return [f"{part.name}: same text, different labels in {format_rows(rows)} (e.g. {example}); check for label noise"]


def check_leakage(earlier: Labelled, later: Labelled, mode: str) -> tuple[Labelled, list[str]]:
    """Texts of `later` (validation/test) also in `earlier`: raise, warn, or drop them from `later`, by `mode`."""
    if mode not in LEAKAGE_MODES:
        raise ValueError(f"leakage mode must be one of {LEAKAGE_MODES}, not {mode!r}")
    same = identity_of(later)
    seen: dict[str, int] = {}
    for text, row in zip(earlier.texts, earlier.rows, strict=True):
        seen.setdefault(same(text), row)
    hits = [i for i, text in enumerate(later.texts) if same(text) in seen]
    if not hits:
        return later, []
    first = hits[0]
    example = f"{later.name} row {later.rows[first]} = {earlier.name} row {seen[same(later.texts[first])]}"
    found = f"{plural(len(hits), later.noun)} also in {earlier.name} (e.g. {example})"
    if mode == "error":
        raise GraftError(f"{later.name}: {found}; remove them or set data.leakage: drop")
    if mode == "warn":
        return later, [f"{later.name}: {found}; its scores may be optimistic (data.leakage: warn)"]
    if len(hits) == len(later.texts):
        raise GraftError(f"{later.name}: every {later.noun} is also in {earlier.name}; nothing is left to evaluate on")
    dropped = set(hits)
    kept = later.select([i for i in range(len(later.texts)) if i not in dropped])
    return kept, [f"{later.name}: dropped {found} (data.leakage: drop)"]


def drop_duplicate_texts(part: Labelled) -> tuple[Labelled, list[str]]:
    """Keep the first row of each text, so that splitting one file cannot put a text in two splits."""
    same = identity_of(part)
    first: dict[str, int] = {}
    repeats: list[int] = []
    for i, text in enumerate(part.texts):
        if first.setdefault(same(text), i) != i:
            repeats.append(i)
    if not repeats:
        return part, []
    original = first[same(part.texts[repeats[0]])]
    example = f"row {part.rows[repeats[0]]} = row {part.rows[original]}"
    dropped = set(repeats)
    kept = part.select([i for i in range(len(part.texts)) if i not in dropped])
    dropped_rows = plural(len(repeats), "row")
    return kept, [f"{part.name}: dropped {dropped_rows} repeating an earlier {part.noun} (e.g. {example}) before "
                  f"splitting it"]
