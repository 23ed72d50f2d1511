"""Reading the user's data files into `datasets.Dataset`: CSV, TSV, JSON, JSON lines, Parquet, saved datasets.

Row numbers in every message count data records from 1, the header not counted: "row 3" is the third record
of a CSV/TSV file (however many lines it spans; blank lines are not records), the third object of a JSON array
or JSON-lines file, the third row of a Parquet file or of a folder made by `Dataset.save_to_disk`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

from graft.data.checks import Labelled, label_values, require_column, text_values
from graft.errors import GraftError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def read_table(path: Path) -> datasets.Dataset:
    """Read one data file (by its suffix) or a folder made by `Dataset.save_to_disk`."""
    path = Path(path)
    if not path.exists():
        raise GraftError(f"{path}: no such file or folder; check the path (relative paths start at {Path.cwd()})")
    reader = _read_saved if path.is_dir() else _READERS.get(path.suffix.lower())
    if reader is None:
        raise GraftError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)} or a folder made by Dataset.save_to_disk"
        )
    datasets.disable_progress_bars()
    try:
        with _quiet_datasets_logs():
            return reader(path)
    except GraftError:
        raise
    except Exception as error:
        kind = "a saved dataset" if path.is_dir() else path.suffix.lower().lstrip(".").upper()
        raise GraftError(f"{path}: cannot read it as {kind} ({_root_cause(error)}); fix the file's format") from error


def _read_delimited(path: Path, sep: str) -> datasets.Dataset:
    # Every column is read as a string so that "007" or "NA" stay what the file says, not what pandas guesses.
    columns, has_rows = _header(path, sep)
    features = datasets.Features({column: datasets.Value("string") for column in columns})
    if not has_rows:  # datasets refuses a file that is only a header; the caller says what is missing
        return datasets.Dataset.from_dict({column: [] for column in columns}, features=features)
    return datasets.Dataset.from_csv(str(path), sep=sep, features=features, keep_default_na=False, na_values=[""])


def _header(path: Path, sep: str) -> tuple[list[str], bool]:
    """The column names, and whether any record follows them."""
    csv.field_size_limit(2**31 - 1)  # a long text is a text (the csv module's default stops at 131,072 characters)
    with path.open(newline="", encoding="utf-8-sig") as file:
        records = csv.reader(file, delimiter=sep)
        header = next(records, None)
        has_rows = any(any(cell.strip() for cell in record) for record in records)
    if not header:
        raise GraftError(f"{path}: the file is empty; give a header line with column names, then one row per example")
    if sep == "," and len(header) == 1 and "\t" in header[0]:
        raise GraftError(f"{path}: the header is one column holding tabs ({header[0][:60]!r}): the file is "
                         f"tab-separated; name it .tsv")
    columns = [name or f"Unnamed: {i}" for i, name in enumerate(header)]  # pandas' name for a blank header cell
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise GraftError(f"{path}: column {repeated[0]!r} appears twice in the header; rename one of them")
    return columns, has_rows


def _read_json(path: Path) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_json(str(path))  # a JSON array or JSON lines, whatever the suffix says
    except Exception as error:
        # pyarrow names a row counted from 0 inside a block of the file; Python's json module finds the line
        problem = _json_problem(path)
        if problem is None:
            raise
        raise GraftError(f"{path}: {problem}") from error


def _json_problem(path: Path) -> str | None:
    """Where the file stops being a JSON array of records or JSON lines, with the fix; None if Python reads it."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}); fix the file there"
        return None
    row = 0
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: a JSON string may hold U+2028
        if not line.strip():
            continue
        row += 1
        where = f"line {number}" if number == row else f"line {number} (row {row})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"{where} is not valid JSON ({error.msg} at column {error.colno}); fix that line"
        if not isinstance(record, dict):
            return (f"{where} holds {_json_kind(record)}, not an object; write one object of column: value pairs "
                    f"per line")
    return None


def _json_kind(value: object) -> str:
    kinds = {list: "a list", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _read_parquet(path: Path) -> datasets.Dataset:
    return datasets.Dataset.from_parquet(str(path))


def _read_saved(path: Path) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise GraftError(
            f"{path}: a folder that was not made by Dataset.save_to_disk; give a data file or a saved dataset"
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        example = path / next(iter(loaded))
        raise GraftError(f"{path}: holds several splits ({', '.join(loaded)}); give one split's folder, e.g. {example}")
    return loaded


_READERS: dict[str, Callable[[Path], datasets.Dataset]] = {
    ".csv": lambda path: _read_delimited(path, ","),
    ".tsv": lambda path: _read_delimited(path, "\t"),
    ".json": _read_json,
    ".jsonl": _read_json,
    ".parquet": _read_parquet,
}


@contextlib.contextmanager
def _quiet_datasets_logs() -> Iterator[None]:
    # datasets logs its own copy of a parse error; the one-line GraftError is what the user should see.
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return message if len(message) <= 200 else message[:200] + "…"


def read_labelled(path: Path, name: str, text_column: str, label_column: str,
                  text_field: str = "data.text_column") -> Labelled:
    """Texts (or image paths, named by `text_field`) and string labels of one file, after the checks every
    labelled file gets."""
    table = read_table(path)
    require_column(table.column_names, text_column, name, text_field)
    require_column(table.column_names, label_column, name, "data.label_column")
    if len(table) == 0:
        raise GraftError(f"{name}: no data rows; add examples below the header")
    texts = text_values(scalar_values(table, text_column, name, text_field), name, text_column)
    labels = label_values(_class_names(table, label_column, name), name, label_column)
    return Labelled(name=name, texts=texts, labels=labels, rows=list(range(1, len(table) + 1)))


def _values(table: datasets.Dataset, column: str) -> list[object]:
    return table.select_columns([column]).to_dict()[column]  # one Arrow conversion, not a Python call per row


def _class_names(table: datasets.Dataset, column: str, name: str) -> list[object]:
    feature = table.features[column]
    values = scalar_values(table, column, name, "data.label_column")
    if isinstance(feature, datasets.ClassLabel):  # a saved HF dataset stores ids; its class names are the labels
        return [None if value is None or value < 0 else feature.int2str(value) for value in values]
    return values


SCALAR_FIXES = {
    "data.label_column": "give each row one label, a string or a number",
    "data.image_column": "list one image file path per row (relative to the table's folder), or give a folder of "
                         "images per class",
}


def scalar_values(table: datasets.Dataset, column: str, name: str, field: str) -> list[object]:
    """The column's values; raise when it holds lists, structs, images or bytes rather than one string or number
    per row, since a text or label made from one would be its printed form, such as "['a', 'b']"."""
    values = _values(table, column)
    found = _non_scalar(table.features[column], values)
    if found is None:
        return values
    kind, row = found
    if row is None:
        what = f"{kind}, not strings"
    else:
        example = repr(values[row])
        what = f"{kind} (row {row + 1}: {example if len(example) <= 60 else example[:60] + '…'})"
    fix = SCALAR_FIXES.get(field, f"set {field} to a column with one string per row, or write this one as strings")
    if kind == "lists" and field == "data.label_column":
        fix += " (multi-label classification is not supported yet)"
    raise GraftError(f"{name}: column {column!r} ({field}) holds {what}; {fix}")


def _non_scalar(feature: object, values: list[object]) -> tuple[str, int | None] | None:
    """What a column holds and the position of an example to show, when that is not one string or number per row."""
    if isinstance(feature, datasets.Json):  # JSON mixing types in a column: look at the values themselves
        nested = next((i for i, value in enumerate(values) if isinstance(value, list | dict)), None)
        return None if nested is None else ("lists" if isinstance(values[nested], list) else "structs", nested)
    if isinstance(feature, datasets.List | datasets.LargeList | dict):
        first = next((i for i, value in enumerate(values) if value is not None), 0)
        return "lists" if isinstance(feature, datasets.List | datasets.LargeList) else "structs", first
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return "bytes", None
    if isinstance(feature, datasets.Value | datasets.ClassLabel):
        return None
    return f"datasets.{type(feature).__name__} values", None  # Image, Audio, Array2D, Translation…


def read_unlabelled_texts(source: str, *, text_column: str) -> list[str]:
    """Texts to predict on: `-` reads stdin and a .txt file is read one text per line (blank lines skipped);
    any table format `read_table` knows gives its `text_column`."""
    if source == "-":
        name, texts = "stdin", _lines(sys.stdin.read())
    elif Path(source).suffix.lower() == ".txt":
        name, texts = Path(source).name, _lines(_read_text(Path(source)))
    else:
        name, table = Path(source).name, read_table(Path(source))
        require_column(table.column_names, text_column, name, "data.text_column")
        texts = text_values(scalar_values(table, text_column, name, "data.text_column"), name, text_column)
    if not texts:
        raise GraftError(f"{name}: no texts to predict on; give one text per line, or rows under a header")
    return texts


def _lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise GraftError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})") from error
    except UnicodeDecodeError as error:
        raise GraftError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from error


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Path:
    """A CSV file, written beside and renamed into place (split files that runs read back)."""
    from graft.files import writing

    with writing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path
