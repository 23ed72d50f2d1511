"""Reading the user's data files into `datasets.Dataset`: CSV, TSV, JSON, JSON lines, Parquet, saved datasets, and
globs of such files read as one table.

Row numbers in every message count data records from 1, the header not counted: "row 3" is the third record
of a CSV/TSV file (however many lines it spans; blank lines are not records), the third object of a JSON array
or JSON-lines file, the third row of a Parquet file or of a folder made by `Dataset.save_to_disk`. A record of a
glob's table is named by its own file's row: "row 3 of b.csv".

How text files are read beyond their suffix (headerless CSV/TSV, another encoding or delimiter) is a `TableFormat`,
made from the recipe's data section.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from graft.data.checks import Labelled, label_values, plural, require_column, text_values
from graft.errors import GraftError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


GLOB = re.compile(r"[*?[]")
SEPARATORS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "pipes"}


@dataclass(frozen=True)
class TableFormat:
    """How to read CSV, TSV, JSON and .txt files beyond what their suffix says (data.columns, data.encoding,
    data.delimiter); Parquet files and saved datasets carry their own names and types."""

    columns: tuple[str, ...] | None = None
    """The names of a headerless CSV/TSV file's columns; None: its first line is the header."""
    encoding: str = "utf-8"
    """utf-8 also reads a leading byte-order mark."""
    delimiter: str | None = None
    """None: by suffix, `,` for .csv and a tab for .tsv."""

    @classmethod
    def of(cls, data: Any) -> TableFormat:
        """The format a recipe's data section describes."""
        return cls(tuple(data.columns) if data.columns else None, data.encoding, data.delimiter)

    @property
    def utf8(self) -> bool:
        return codecs.lookup(self.encoding).name in ("utf-8", "utf-8-sig")

    @property
    def decoding(self) -> str:
        """The codec to decode with: UTF-8 tolerates a byte-order mark."""
        return "utf-8-sig" if self.utf8 else self.encoding


PLAIN = TableFormat()
"""UTF-8 files whose first line is the header, separated as their suffix says."""
WRITTEN = {"columns": None, "encoding": "utf-8", "delimiter": None, "review": None, "label_columns": None,
           "label_delimiter": ","}
"""The data fields that read back the CSV and JSON-lines files graft writes (runs that read them must not inherit a
recipe's headerless or latin-1 format, nor apply its data.review again: the rows written are the reviewed ones; a
multi-label row's label set is written in one column, joined by commas)."""


class FileRow(int):
    """A record of a table read from several files (a glob): it counts, sorts and is stored as its position in the
    whole table, and reads in messages as its own file's row (`3 of b.csv`)."""

    path: Path
    file: str
    row: int

    def __new__(cls, position: int, path: Path, file: str, row: int) -> FileRow:
        self = super().__new__(cls, position)
        self.path, self.file, self.row = path, file, row
        return self

    def __getnewargs__(self) -> tuple[int, Path, str, int]:  # type: ignore[override]
        return int(self), self.path, self.file, self.row

    def __str__(self) -> str:
        return f"{self.row} of {self.file}"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else super().__format__(spec)


@dataclass(frozen=True)
class LoadedSplit:
    """One split of a DatasetDict (a saved folder or a hub dataset), already loaded."""

    name: str
    """For messages: `imdb/train` for a folder, `hf://imdb[train]` for a hub dataset."""
    split: str
    table: datasets.Dataset


Source = Path | LoadedSplit
"""What one split is read from: a file, a folder or a glob, or a split of a DatasetDict."""


def read_table(path: Source, fmt: TableFormat = PLAIN) -> datasets.Dataset:
    """Read one data file (by its suffix), a folder made by `Dataset.save_to_disk`, or every file a glob matches
    (sorted, as one table with the same columns); `fmt` says how to read text files."""
    return read_rows(path, fmt)[0]


def read_rows(source: Source, fmt: TableFormat = PLAIN) -> tuple[datasets.Dataset, list[int]]:
    """The table `read_table` reads, and the row of each record as messages name it: its position for one file,
    a `FileRow` for a glob."""
    if isinstance(source, LoadedSplit):
        return source.table, list(range(1, len(source.table) + 1))
    path = Path(source)
    if not is_glob(path):
        table = _read_file(path, fmt)
        return table, list(range(1, len(table) + 1))
    files, base = glob_files(path), _glob_base(path)
    tables = [_read_file(file, fmt) for file in files]
    names = [str(file.relative_to(base)) for file in files]
    rows: list[int] = []
    for file, name, table in zip(files, names, tables, strict=True):
        before = len(rows)
        rows += [FileRow(before + row, file, name, row) for row in range(1, len(table) + 1)]
    return _concatenated(tables, names, source_name(path)), rows


def is_glob(path: Path) -> bool:
    """Whether `path` is a pattern (`*`, `?`, `[`) rather than a file that exists under that name."""
    return GLOB.search(str(path)) is not None and not path.exists()


def glob_files(pattern: Path) -> list[Path]:
    """The files (and folders) `pattern` matches, sorted; `**` matches any depth, hidden files are left out."""
    found = sorted(Path(match) for match in glob.glob(str(pattern), recursive=True))
    if not found:
        raise GraftError(f"{pattern}: no file matches this pattern; check it (the folder, the suffix, the case)")
    return found


def _glob_base(pattern: Path) -> Path:
    """The folder above the first part of `pattern` that holds a wildcard."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if GLOB.search(part))
    return Path(*parts[:first])


def source_name(source: Source) -> str:
    """How messages name a source: a file's name, a glob from its last plain folder (`reviews/*.csv`), a split of a
    DatasetDict by its own name."""
    if isinstance(source, LoadedSplit):
        return source.name
    path = Path(source)
    if is_glob(path):
        base = _glob_base(path)
        return str(Path(base.name) / path.relative_to(base))
    return path.name


def _concatenated(tables: list[datasets.Dataset], names: list[str], pattern: str) -> datasets.Dataset:
    columns = tables[0].column_names
    for name, table in zip(names[1:], tables[1:], strict=True):
        if set(table.column_names) != set(columns):
            raise GraftError(f"{pattern}: {name} has the columns {', '.join(table.column_names)} but {names[0]} has "
                             f"{', '.join(columns)}; give every file the pattern matches the same columns")
    aligned = [table.select_columns(columns) for table in tables]
    for name, table in zip(names[1:], aligned[1:], strict=True):
        differ = next((c for c in columns if table.features[c] != aligned[0].features[c]), None)
        if differ is not None:
            raise GraftError(f"{pattern}: column {differ!r} holds {_kind(table.features[differ])} in {name} but "
                             f"{_kind(aligned[0].features[differ])} in {names[0]}; write it one way in every file")
    return datasets.concatenate_datasets(aligned)


def _kind(feature: object) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{dtype} values" if isinstance(dtype, str) else f"datasets.{type(feature).__name__} values"


def _read_file(path: Path, fmt: TableFormat) -> datasets.Dataset:
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
        with quiet_datasets_logs():
            return reader(path, fmt)
    except GraftError:
        raise
    except Exception as error:
        problem = None if path.is_dir() or path.suffix.lower() == ".parquet" else decoding_problem(path, fmt)
        if problem is not None:
            raise GraftError(f"{path}: {problem}") from error
        kind = "a saved dataset" if path.is_dir() else path.suffix.lower().lstrip(".").upper()
        raise GraftError(f"{path}: cannot read it as {kind} ({root_cause(error)}); fix the file's format") from error


def decoding_problem(path: Path, fmt: TableFormat) -> str | None:
    """Where the file stops being text in `fmt`'s encoding, with the fix; None when all of it decodes. Read in
    chunks, so a large file is never held whole."""
    decoder = codecs.getincrementaldecoder(fmt.decoding)()
    offset, lines = 0, 1
    with path.open("rb") as file:
        while True:
            chunk = file.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                held = len(error.object) - len(chunk)  # bytes of a character begun in the previous chunk
                line = lines + error.object.count(b"\n", held, max(held, error.start))
                named = "UTF-8" if fmt.utf8 else fmt.encoding
                return (f"not {named} text: byte 0x{error.object[error.start]:02x} at offset "
                        f"{offset - held + error.start} (line {line}); set data.encoding to the file's encoding "
                        f"(e.g. data.encoding: latin-1, or cp1252 for files saved on Windows), or save it as UTF-8")
            if not chunk:
                return None
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")


def _read_delimited(path: Path, sep: str, fmt: TableFormat) -> datasets.Dataset:
    # Every column is read as a string so that "007" or "NA" stay what the file says, not what pandas guesses.
    sep = fmt.delimiter or sep
    columns, has_rows = _header(path, sep, fmt)
    features = datasets.Features({column: datasets.Value("string") for column in columns})
    if not has_rows:  # datasets refuses a file that is only a header; the caller says what is missing
        return datasets.Dataset.from_dict({column: [] for column in columns}, features=features)
    layout = {"header": None, "names": columns} if fmt.columns else {}
    encoding = {} if fmt.utf8 else {"encoding": fmt.encoding}  # pandas reads UTF-8 (and its BOM) natively
    return datasets.Dataset.from_csv(str(path), sep=sep, features=features, keep_default_na=False, na_values=[""],
                                     **layout, **encoding)


def _header(path: Path, sep: str, fmt: TableFormat) -> tuple[list[str], bool]:
    """The column names, and whether any record follows them (or, for a headerless file, is there at all)."""
    csv.field_size_limit(2**31 - 1)  # a long text is a text (the csv module's default stops at 131,072 characters)
    with path.open(newline="", encoding=fmt.decoding) as file:
        records = csv.reader(file, delimiter=sep)
        first = next(records, None)
        has_rows = any(any(cell.strip() for cell in record) for record in records)
    if not first:
        what = "one row per example" if fmt.columns else "a header line with column names, then one row per example"
        raise GraftError(f"{path}: the file is empty; give {what}")
    if fmt.columns:
        _check_width(path, first, fmt.columns, sep)
        return list(fmt.columns), True
    if fmt.delimiter is None:
        _refuse_other_separator(path, first, sep)
    columns = [name or f"Unnamed: {i}" for i, name in enumerate(first)]  # pandas' name for a blank header cell
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise GraftError(f"{path}: column {repeated[0]!r} appears twice in the header; rename one of them")
    return columns, has_rows


def _check_width(path: Path, first: list[str], columns: tuple[str, ...], sep: str) -> None:
    """A headerless file's first row must have one field per name in data.columns, and not be a header itself."""
    if [cell.strip().casefold() for cell in first] == [name.casefold() for name in columns]:
        raise GraftError(f"{path}: row 1 is a header ({', '.join(first)}); data.columns is for files without one, so "
                         f"remove data.columns")
    if len(first) == len(columns):
        return
    other = _other_separator(first, sep)
    hint = f" (it looks separated by {SEPARATORS[other]}: set data.delimiter: {json.dumps(other)})" if other else ""
    raise GraftError(f"{path}: row 1 has {plural(len(first), 'field')} but data.columns names {len(columns)} "
                     f"({', '.join(columns)}){hint}; give data.columns one name per column of the file")


def _refuse_other_separator(path: Path, header: list[str], sep: str) -> None:
    """A header of one column holding another separator: the file is separated by that one."""
    other = _other_separator(header, sep)
    if other is None:
        return
    rename = {"\t": ", or name the file .tsv", ",": ", or name the file .csv"}.get(other, "")
    raise GraftError(f"{path}: the header is one column holding {SEPARATORS[other]} ({header[0][:60]!r}): the file "
                     f"is separated by {SEPARATORS[other]}; set data.delimiter: {json.dumps(other)}{rename}")


def _other_separator(record: list[str], sep: str) -> str | None:
    if len(record) != 1:
        return None
    return next((c for c in SEPARATORS if c != sep and c in record[0]), None)


def _read_json(path: Path, fmt: TableFormat) -> datasets.Dataset:
    if fmt.utf8:  # pyarrow decodes UTF-8 itself and keeps bytes that are not, to fail when a value is read
        problem = decoding_problem(path, fmt)
        if problem is not None:
            raise GraftError(f"{path}: {problem}")
    encoding = {} if fmt.utf8 else {"encoding": fmt.encoding}
    try:
        return datasets.Dataset.from_json(str(path), **encoding)  # a JSON array or JSON lines, whatever the suffix
    except Exception as error:
        # pyarrow names a row counted from 0 inside a block of the file; Python's json module finds the line
        problem = _json_problem(path, fmt)
        if problem is None:
            raise
        raise GraftError(f"{path}: {problem}") from error


def _json_problem(path: Path, fmt: TableFormat) -> str | None:
    """Where the file stops being a JSON array of records or JSON lines, with the fix; None if Python reads it."""
    text = path.read_text(encoding=fmt.decoding, errors="replace")
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


def _read_parquet(path: Path, fmt: TableFormat) -> datasets.Dataset:
    return datasets.Dataset.from_parquet(str(path))


def _read_saved(path: Path, fmt: TableFormat) -> datasets.Dataset:
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


_READERS: dict[str, Callable[[Path, TableFormat], datasets.Dataset]] = {
    ".csv": lambda path, fmt: _read_delimited(path, ",", fmt),
    ".tsv": lambda path, fmt: _read_delimited(path, "\t", fmt),
    ".json": _read_json,
    ".jsonl": _read_json,
    ".parquet": _read_parquet,
}


@contextlib.contextmanager
def quiet_datasets_logs() -> Iterator[None]:
    # datasets logs its own copy of a parse error; the one-line GraftError is what the user should see.
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def root_cause(error: BaseException) -> str:
    """The first line of the innermost cause of `error`, at most 200 characters."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return message if len(message) <= 200 else message[:200] + "…"


def read_labelled(path: Source, name: str, text_column: str, label_column: str,
                  text_field: str = "data.text_column", fmt: TableFormat = PLAIN) -> Labelled:
    """Texts (or image paths, named by `text_field`) and string labels of one file (or glob, or split of a
    DatasetDict), after the checks every labelled file gets."""
    table, rows = read_rows(path, fmt)
    require_column(table.column_names, text_column, name, text_field)
    require_column(table.column_names, label_column, name, "data.label_column")
    if len(table) == 0:
        raise GraftError(f"{name}: no data rows; add examples below the header")
    texts = text_values(scalar_values(table, text_column, name, text_field, rows), name, text_column, rows)
    labels = label_values(_class_names(table, label_column, name, rows), name, label_column, rows)
    return Labelled(name=name, texts=texts, labels=labels, rows=rows)


def _values(table: datasets.Dataset, column: str) -> list[object]:
    return table.select_columns([column]).to_dict()[column]  # one Arrow conversion, not a Python call per row


def _class_names(table: datasets.Dataset, column: str, name: str, rows: Sequence[int]) -> list[object]:
    feature = table.features[column]
    values = scalar_values(table, column, name, "data.label_column", rows)
    if isinstance(feature, datasets.ClassLabel):  # a saved HF dataset stores ids; its class names are the labels
        return [None if value is None or value < 0 else feature.int2str(value) for value in values]
    return values


SCALAR_FIXES = {
    "data.label_column": "give each row one label, a string or a number",
    "data.image_column": "list one image file path per row (relative to the table's folder), or give a folder of "
                         "images per class",
}


def scalar_values(table: datasets.Dataset, column: str, name: str, field: str,
                  rows: Sequence[int] | None = None) -> list[object]:
    """The column's values; raise when it holds lists, structs, images or bytes rather than one string or number
    per row, since a text or label made from one would be its printed form, such as "['a', 'b']". `rows` names the
    records (default: 1, 2, ...)."""
    values = _values(table, column)
    found = _non_scalar(table.features[column], values)
    if found is None:
        return values
    kind, row = found
    if row is None:
        what = f"{kind}, not strings"
    else:
        example = repr(values[row])
        where = rows[row] if rows else row + 1
        what = f"{kind} (row {where}: {example if len(example) <= 60 else example[:60] + '…'})"
    fix = SCALAR_FIXES.get(field, f"set {field} to a column with one string per row, or write this one as strings")
    if kind == "lists" and field == "data.label_column":
        fix += " (several labels per row: task: multilabel_classification)"
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


def read_unlabelled_texts(source: str, *, text_column: str, fmt: TableFormat = PLAIN) -> list[str]:
    """Texts to predict on: `-` reads stdin and a .txt file (or a glob of them) is read one text per line (blank
    lines skipped); any table format `read_table` knows gives its `text_column`."""
    path = Path(source)
    if source == "-":
        name, texts = "stdin", _lines(sys.stdin.read())
    elif path.suffix.lower() == ".txt":
        files = glob_files(path) if is_glob(path) else [path]
        name, texts = source_name(path), [line for file in files for line in _lines(_read_text(file, fmt))]
    else:
        name, (table, rows) = source_name(path), read_rows(path, fmt)
        require_column(table.column_names, text_column, name, "data.text_column")
        texts = text_values(scalar_values(table, text_column, name, "data.text_column", rows), name, text_column,
                            rows)
    if not texts:
        raise GraftError(f"{name}: no texts to predict on; give one text per line, or rows under a header")
    return texts


def _lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line.strip()]


def _read_text(path: Path, fmt: TableFormat) -> str:
    try:
        return path.read_text(encoding=fmt.decoding)
    except FileNotFoundError as error:
        raise GraftError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})") from error
    except UnicodeDecodeError as error:
        raise GraftError(f"{path}: {decoding_problem(path, fmt)}") from error


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Path:
    """A CSV file, written beside and renamed into place (split files that runs read back)."""
    from graft.files import writing

    with writing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A JSON-lines file, written beside and renamed into place (for examples a CSV cell cannot hold: token lists,
    chat messages)."""
    from graft.files import writing

    with writing(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
