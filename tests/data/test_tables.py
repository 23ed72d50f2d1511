"""Every format `read_table` reads, its one-line errors, and the texts `graft predict` reads."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import datasets
import pytest

from graft.data import read_table, read_unlabelled_texts
from tests.conftest import error_of

RECORDS = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_csv_table(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "data.csv", RECORDS)


def write_tsv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "data.tsv", RECORDS, delimiter="\t")


def write_json_array(tmp_path: Path) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    return path


def write_json_lines(tmp_path: Path, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(record) + "\n" for record in RECORDS), encoding="utf-8")
    return path


def write_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_list(RECORDS).to_parquet(str(path))
    return path


def write_saved(tmp_path: Path) -> Path:
    path = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "write",
    [write_csv_table, write_tsv, write_json_array, write_json_lines, write_parquet, write_saved,
     lambda tmp_path: write_json_lines(tmp_path, "lines.json")],
    ids=["csv", "tsv", "json-array", "jsonl", "parquet", "save_to_disk", "json-lines-as-.json"],
)
def test_every_format_reads(tmp_path: Path, write) -> None:
    table = read_table(write(tmp_path))
    assert table.to_list() == RECORDS


def test_csv_values_stay_as_written(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('text,label\n007,1\nNA,2\n"two\nlines",3\n,4\n', encoding="utf-8")
    table = read_table(path)
    assert table["text"] == ["007", "NA", "two\nlines", None]
    assert table["label"] == ["1", "2", "3", "4"]


def test_csv_written_with_an_index_column_reads(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(",text,label\n0,hi,a\n1,ho,b\n", encoding="utf-8")
    assert read_table(path)["text"] == ["hi", "ho"]


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(read_table, tmp_path / "nope.csv")
    assert "nope.csv: no such file" in message and "check the path" in message


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"x")
    message = error_of(read_table, path)
    assert "data.xlsx: unsupported file type '.xlsx'" in message and ".csv, .tsv, .json, .jsonl, .parquet" in message


@pytest.mark.parametrize(
    ("name", "content"), [("bad.csv", 'text,label\n"open quote,a\n'), ("bad.parquet", "no")]
)  # a broken JSON file is named by its line: tests/data/test_bad_inputs.py
def test_unparsable_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    message = error_of(read_table, path)
    assert f"{name}: cannot read it as" in message and "fix the file's format" in message


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    message = error_of(read_table, path)
    assert "empty.csv: the file is empty" in message and "header" in message


def test_repeated_header_column(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\na,b,c\n", encoding="utf-8")
    message = error_of(read_table, path)
    assert "twice.csv: column 'text' appears twice" in message and "rename one" in message


def test_dataset_dict_folder_asks_for_one_split(tmp_path: Path) -> None:
    path = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(path))
    message = error_of(read_table, path)
    assert "dict: holds several splits (train)" in message and "give one split's folder" in message


def test_folder_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    message = error_of(read_table, tmp_path / "folder")
    assert "folder" in message and "Dataset.save_to_disk" in message


def test_unlabelled_texts_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("first text\n\n   \nsecond text\n"))
    assert read_unlabelled_texts("-", text_column="text") == ["first text", "second text"]


def test_unlabelled_texts_from_txt(tmp_path: Path) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_unlabelled_texts(str(path), text_column="text") == ["one", "two"]


def test_unlabelled_texts_from_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "inputs.csv", [{"id": "1", "body": "hello"}, {"id": "2", "body": "world"}])
    assert read_unlabelled_texts(str(path), text_column="body") == ["hello", "world"]


def test_unlabelled_csv_without_the_text_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "inputs.csv", [{"id": "1", "body": "hello"}])
    message = error_of(read_unlabelled_texts, str(path), text_column="text")
    assert "inputs.csv: no column 'text' (columns: id, body)" in message and "set data.text_column" in message


def test_unlabelled_csv_with_empty_texts(tmp_path: Path) -> None:
    rows = [{"id": "1", "text": "a"}, {"id": "2", "text": ""}, {"id": "3", "text": " "}]
    path = write_csv(tmp_path / "inputs.csv", rows)
    message = error_of(read_unlabelled_texts, str(path), text_column="text")
    assert "inputs.csv: empty text in column 'text', rows 2, 3" in message and "fill or remove" in message


def test_no_texts_on_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n"))
    message = error_of(read_unlabelled_texts, "-", text_column="text")
    assert "stdin: no texts" in message and "one text per line" in message


def test_missing_txt_file(tmp_path: Path) -> None:
    message = error_of(read_unlabelled_texts, str(tmp_path / "gone.txt"), text_column="text")
    assert "gone.txt: no such file" in message


def test_txt_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café\n".encode("latin-1"))
    message = error_of(read_unlabelled_texts, str(path), text_column="text")
    assert "latin.txt: not UTF-8 text" in message and "save it as UTF-8" in message
