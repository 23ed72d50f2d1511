"""Tagged sentences for token classification: CoNLL-style files and tables of token and tag lists, checked, with
the splits not given carved from train.

CoNLL-style: one token a line, its tag in the last column (or `data.tag_column`), a blank line between sentences,
`-DOCSTART-` lines skipped; any file whose suffix is not a table's (.conll, .txt, .iob, .bio...). Tables (JSON
lines, JSON, Parquet, saved datasets, hub datasets): a list of tokens and a list of tags per row
(`data.tokens_column`, `data.tags_column`). Messages name a CoNLL file's line and a table's row.

Tags are BIO (IOB2): `O`, `B-TYPE`, `I-TYPE`. An `I-` tag that follows `O` or another type starts an entity, as
IOB1 files use it and as seqeval's default mode reads it; such tags in train are counted in a warning. Plain tags
(`PER`) and BIOES (`E-`, `S-`) are refused: entity-level scoring needs the prefixes.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from graft.data.checks import plural, require_column, shown
from graft.data.sources import locate_splits
from graft.data.splits import SPLITS, TextSplits, split_sources
from graft.data.tables import (
    SUFFIXES,
    LoadedSplit,
    Source,
    TableFormat,
    decoding_problem,
    glob_files,
    is_glob,
    read_rows,
    source_name,
)
from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.recipe import DataSpec

BIO = re.compile(r"O|[BI]-\S+")
DOCSTART = "-DOCSTART-"


@dataclass
class Sentences:
    """Sentences of one source: `words[i]` and `tags[i]` (strings) of sentence i, found at `where[i]`."""

    name: str
    words: list[list[str]]
    tags: list[list[str]]
    where: list[str]

    def select(self, keep: list[int]) -> Sentences:
        return Sentences(self.name, [self.words[i] for i in keep], [self.tags[i] for i in keep],
                         [self.where[i] for i in keep])


def load_tagged_splits(train: Path | str, validation: Path | str | None, test: Path | str | None, *,
                       data: DataSpec, seed: int) -> TextSplits:
    """Read and check each given split (tags of validation and test must be train's), carve the others from train
    by a seeded shuffle of its sentences (`data.split`), and remove sentences shared across splits
    (`data.leakage`)."""
    given, warnings = locate_splits(train, validation, test)
    parts = {key: read_sentences(source, source_name(source), data) for key, source in given.items()}
    labels = tag_order(parts["train"])
    warnings += _loose_inside(parts["train"])
    for key in ("validation", "test"):
        if key in parts:
            check_known_tags(parts[key], labels)
    carve = {key: share for key, share in zip(SPLITS[1:], data.split[1:], strict=True) if key not in given}
    if carve:
        parts.update(_carve(parts.pop("train"), carve, sum(data.split), seed))
    warnings += _leakage(parts, data.leakage)
    sources = split_sources({key: source_name(source) for key, source in given.items()}, given)
    return TextSplits(**{key: to_dataset(parts[key], labels) for key in SPLITS}, labels=labels, sources=sources,
                      warnings=warnings)


def read_labelled_sentences(path: Path, data: DataSpec, labels: list[str]) -> datasets.Dataset:
    """A tagged file to evaluate a trained run on, its tags checked against the run's."""
    part = read_sentences(path, source_name(path), data)
    check_known_tags(part, labels)
    return to_dataset(part, labels)


def read_sentences(source: Source, name: str, data: DataSpec) -> Sentences:
    """One source's sentences, each tag BIO; a table by its suffix (or a DatasetDict's split), else CoNLL."""
    if isinstance(source, LoadedSplit) or is_table(Path(source)):
        part = _read_table(source, name, data)
    else:
        files = glob_files(Path(source)) if is_glob(Path(source)) else [Path(source)]
        part = Sentences(name, [], [], [])
        for file in files:
            one = _read_conll(file, file.name if len(files) > 1 else name, data.tag_column, TableFormat.of(data))
            part.words += one.words
            part.tags += one.tags
            part.where += one.where
    if not part.words:
        raise GraftError(f"{name}: no sentences; give one token and its tag a line, a blank line between sentences "
                         f"(or rows of {data.tokens_column} and {data.tags_column} lists)")
    for tags, where in zip(part.tags, part.where, strict=True):
        bad = next((t for t in tags if not BIO.fullmatch(t)), None)
        if bad is not None:
            raise GraftError(f"{where}: tag {bad!r} is not BIO (O, B-TYPE or I-TYPE); entity scores need the "
                             f"prefixes: write the first token of each entity as B-TYPE and the rest as I-TYPE")
    return part


def is_table(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES or path.is_dir()


def _read_conll(path: Path, name: str, tag_column: int, fmt: TableFormat) -> Sentences:
    try:
        lines = path.read_text(encoding=fmt.decoding).splitlines()
    except FileNotFoundError:
        raise GraftError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})") from None
    except UnicodeDecodeError:
        raise GraftError(f"{path}: {decoding_problem(path, fmt)}") from None
    part = Sentences(name, [], [], [])
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, line in enumerate([*lines, ""], start=1):
        fields = line.split()
        if fields and fields[0] == DOCSTART:
            continue
        if not fields:
            if words:
                part.words.append(words)
                part.tags.append(tags)
                part.where.append(f"{name} line {start}")
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise GraftError(f"{name} line {n}: token {fields[0]!r} has no tag; write the token, a space or tab, "
                             f"then its tag (a blank line ends a sentence)")
        if not -len(fields) <= tag_column < len(fields) or tag_column == 0:
            raise GraftError(f"{name} line {n}: data.tag_column = {tag_column}, but the line has {len(fields)} "
                             f"columns (the token is column 0); set data.tag_column to the tags' column")
        if not words:
            start = n
        words.append(fields[0])
        tags.append(fields[tag_column])
    return part


def _read_table(source: Source, name: str, data: DataSpec) -> Sentences:
    table, rows = read_rows(source, TableFormat.of(data))
    for column, field in ((data.tokens_column, "data.tokens_column"), (data.tags_column, "data.tags_column")):
        require_column(table.column_names, column, name, field)
    columns = table.select_columns([data.tokens_column, data.tags_column]).to_dict()
    part = Sentences(name, [], [], [])
    for row, words, tags in zip(rows, columns[data.tokens_column], columns[data.tags_column], strict=True):
        where = f"{name} row {row}"
        for value, column in ((words, data.tokens_column), (tags, data.tags_column)):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise GraftError(f"{where}: {column!r} must be a non-empty list of non-empty strings, got "
                                 f"{str(value)[:60]!r}")
        if len(words) != len(tags):
            raise GraftError(f"{where}: {len(words)} tokens but {len(tags)} tags; give each token one tag")
        part.words.append([w.strip() for w in words])
        part.tags.append([t.strip() for t in tags])
        part.where.append(where)
    return part


def tag_order(part: Sentences) -> list[str]:
    """Train's tags: `O` first, then by entity type, B before I."""
    found = {t for tags in part.tags for t in tags}
    if found <= {"O"}:
        raise GraftError(f"{part.name}: every tag is O; token classification needs entities (B-TYPE, I-TYPE) to "
                         f"learn (check data.tag_column / data.tags_column)")
    return ["O", *sorted(found - {"O"}, key=lambda t: (t[2:], t[0]))]


def check_known_tags(part: Sentences, labels: list[str]) -> None:
    known = set(labels)
    for tags, where in zip(part.tags, part.where, strict=True):
        unknown = next((t for t in tags if t not in known), None)
        if unknown is not None:
            raise GraftError(f"{where}: tag {unknown!r} is not among the training tags ({shown(labels, 8)}); fix "
                             f"the tag, or add examples of it to the training data")


def _loose_inside(part: Sentences) -> list[str]:
    """A warning when I- tags start entities (after O or another type): IOB1 files, or tagging slips."""
    count = sum(1 for tags in part.tags for before, tag in zip(["O", *tags], tags, strict=False)
                if tag.startswith("I-") and before[2:] != tag[2:])
    if not count:
        return []
    return [f"{part.name}: {plural(count, 'I- tag')} start an entity (after O or another type: IOB1 style, or a "
            f"tagging slip); they are read as entity starts, as seqeval's default mode reads them"]


def _carve(part: Sentences, carve: dict[str, float], total: float, seed: int) -> dict[str, Sentences]:
    order = list(range(len(part.words)))
    random.Random(seed).shuffle(order)
    out, taken = {}, 0
    for key, share in carve.items():
        n = round(len(order) * share / total)
        out[key] = part.select(sorted(order[taken:taken + n]))
        taken += n
    out["train"] = part.select(sorted(order[taken:]))
    if not out["train"].words:
        raise GraftError(f"data.split: {part.name} has {plural(len(order), 'sentence')}, too few to carve "
                         f"validation and test from; give more, or data.validation and data.test files")
    return out


def _leakage(parts: dict[str, Sentences], mode: str) -> list[str]:
    """Sentences of validation or test that also occur in an earlier split: an error, a warning, or dropped."""
    seen: set[tuple[str, ...]] = set()
    warnings = []
    for key in SPLITS:
        part = parts[key]
        shared = [i for i, words in enumerate(part.words) if tuple(words) in seen]
        if shared and mode == "error":
            raise GraftError(f"{part.where[shared[0]]}: this sentence is also in an earlier split (train, then "
                             f"validation), {plural(len(shared), 'sentence')} of {key} in all; remove them, or set "
                             f"data.leakage: drop (or warn)")
        if shared:
            verb = "dropped" if mode == "drop" else "kept"
            warnings.append(f"data.{key}: {plural(len(shared), 'sentence')} also in an earlier split ({verb}, "
                            f"data.leakage: {mode})")
            if mode == "drop":
                dropped = set(shared)
                parts[key] = part = part.select([i for i in range(len(part.words)) if i not in dropped])
        seen.update(tuple(words) for words in part.words)
    return warnings


def to_dataset(part: Sentences, labels: list[str]) -> datasets.Dataset:
    ids = {label: i for i, label in enumerate(labels)}
    return datasets.Dataset.from_dict({"words": part.words, "tags": [[ids[t] for t in tags] for tags in part.tags],
                                       "where": part.where})


def entity_counts(tag_lists: list[list[str]]) -> dict[str, int]:
    """How many entities of each type (a B- tag, or an I- tag starting one)."""
    counts: Counter[str] = Counter()
    for tags in tag_lists:
        for before, tag in zip(["O", *tags], tags, strict=False):
            if tag.startswith("B-") or (tag.startswith("I-") and before[2:] != tag[2:]):
                counts[tag[2:]] += 1
    return dict(sorted(counts.items()))
