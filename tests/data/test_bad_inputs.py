"""Bad inputs that used to pass silently or with a misleading line (issue 21): nested columns, one number written
several ways as labels, and a broken JSON line named by the wrong row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from graft.data import read_table, read_unlabelled_texts
from graft.data.checks import label_values
from graft.data.images import read_image_list, unlabelled_images
from graft.data.tables import read_labelled
from tests.conftest import error_of


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def records(n: int) -> list[str]:
    return [json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) for i in range(1, n + 1)]


# Nested columns: a list or a struct would be stringified into a label like "['a', 'b']".

def list_labels_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"text": ["one", "two"], "tags": [["a", "b"], ["b"]]}).to_parquet(str(path))
    return path


def list_labels_saved(tmp_path: Path) -> Path:
    path = tmp_path / "train"
    features = datasets.Features({"text": datasets.Value("string"),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))})
    datasets.Dataset.from_dict({"text": ["one", "two"], "tags": [[0, 1], [1]]}, features=features).save_to_disk(path)
    return path


def list_labels_jsonl(tmp_path: Path) -> Path:  # a list among strings: datasets reads the column as Json
    lines = ['{"text": "one", "tags": "a"}', '{"text": "two", "tags": ["a", "b"]}']
    return write_jsonl(tmp_path / "train.jsonl", lines)


@pytest.mark.parametrize(
    ("write", "shown"),
    [(list_labels_parquet, "row 1: ['a', 'b']"), (list_labels_saved, "row 1: [0, 1]"),
     (list_labels_jsonl, "row 2: ['a', 'b']")],
    ids=["parquet", "save_to_disk", "jsonl-mixed"],
)
def test_label_column_of_lists_is_refused(tmp_path: Path, write, shown: str) -> None:
    path = write(tmp_path)
    message = error_of(read_labelled, path, path.name, "text", "tags")
    assert message.startswith(f"{path.name}: column 'tags' (data.label_column) holds lists ({shown})"), message
    assert "one label" in message and "several labels per row: task: multilabel_classification" in message


def test_label_column_of_structs_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ['{"text": "one", "label": {"name": "a"}}',
                                                  '{"text": "two", "label": {"name": "b"}}'])
    message = error_of(read_labelled, path, "train.jsonl", "text", "label")
    assert message.startswith("train.jsonl: column 'label' (data.label_column) holds structs (row 1: {'name': 'a'})")
    assert "give each row one label" in message and "multi-label" not in message


def test_text_column_of_structs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"text": [{"title": "t", "body": "b"}] * 2, "label": ["a", "b"]}).to_parquet(str(path))
    message = error_of(read_labelled, path, "train.parquet", "text", "label")
    assert message.startswith("train.parquet: column 'text' (data.text_column) holds structs (row 1: {")
    assert "set data.text_column to a column with one string per row" in message
    assert "holds structs" in error_of(read_unlabelled_texts, str(path), text_column="text")


def test_image_column_holding_images_is_refused(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"image": [{"bytes": png.getvalue(), "path": None}], "label": ["a"]},
                               features=features).to_parquet(str(path))
    message = error_of(read_image_list, path, "train.parquet", "image", "label")
    assert message.startswith("train.parquet: column 'image' (data.image_column) holds datasets.Image values, not "
                              "strings; list one image file path per row"), message
    # the images to predict on, read from the same kind of table
    message = error_of(unlabelled_images, str(path), "image")
    assert "holds datasets.Image values, not strings" in message, message


def test_scalar_columns_still_read(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"text": ["one", "two"], "label": [3, 4]}).to_parquet(str(path))
    part = read_labelled(path, "train.parquet", "text", "label")
    assert (part.texts, part.labels) == (["one", "two"], ["3", "4"])


# One number written several ways would be several classes.

def test_one_number_written_several_ways_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,1\nb,2\nc,01\nd,1.0\ne,1\nf,02\n", encoding="utf-8")
    message = error_of(read_labelled, path, "train.csv", "text", "label")
    assert message == ("train.csv: labels '1' (row 1), '01' (row 3), '1.0' (row 4) in column 'label' are one number "
                       "written 3 ways, which would make 3 classes (1 other number too); write each label one way, "
                       "e.g. '1' in every row")


def test_json_strings_of_one_number_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ['{"text": "a", "label": "1"}', '{"text": "b", "label": "1.0"}'])
    message = error_of(read_labelled, path, "train.jsonl", "text", "label")
    assert "labels '1' (row 1), '1.0' (row 2) in column 'label' are one number written 2 ways" in message


def test_json_ints_and_whole_floats_are_one_class(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ['{"text": "a", "label": 1}', '{"text": "b", "label": 1.0}',
                                                  '{"text": "c", "label": 2}'])
    assert read_labelled(path, "train.jsonl", "text", "label").labels == ["1", "1", "2"]


@pytest.mark.parametrize("labels", [["007", "8", "08.5"], ["1", " 1", "2"], ["1e3", "x", "1,000"]],
                         ids=["leading-zeros-alone", "whitespace-left-to-unify_labels", "not-numbers"])
def test_labels_that_are_not_two_spellings_stay_as_written(labels: list[str]) -> None:
    assert label_values(labels, "train.csv", "label") == labels


# A broken JSON line is named by its line, and by its row when blank lines make them differ.

def test_broken_jsonl_line_is_named(tmp_path: Path) -> None:
    lines = records(6)
    lines[4] = '{"text": "five" "label": "a"}'
    message = error_of(read_table, write_jsonl(tmp_path / "train.jsonl", lines))
    assert message.endswith("train.jsonl: line 5 is not valid JSON (Expecting ',' delimiter at column 17); fix that "
                            "line"), message


def test_broken_jsonl_line_after_blank_lines_names_line_and_row(tmp_path: Path) -> None:
    lines = records(3000)  # past pyarrow's first block, whose row count restarts
    lines[1999] = '{"text": "broken", "label": "a",}'
    lines.insert(10, "")
    message = error_of(read_table, write_jsonl(tmp_path / "train.jsonl", lines))
    assert "train.jsonl: line 2001 (row 2000) is not valid JSON (" in message and "fix that line" in message


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    message = error_of(read_table, write_jsonl(tmp_path / "train.jsonl", [*records(2), '["c", "a"]']))
    assert message.endswith("train.jsonl: line 3 holds a list, not an object; write one object of column: value pairs "
                            "per line"), message


@pytest.mark.parametrize(("content", "where"), [
    ('[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]', "line 2, column 15 (Expecting ',' delimiter)"),
    ('[{"text": "a", "label": "x"},\n', "line 2, column 1 (Expecting value)"),
])
def test_broken_json_array_names_line_and_column(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(content, encoding="utf-8")
    message = error_of(read_table, path)
    assert message.endswith(f"train.json: not valid JSON at {where}; fix the file there"), message


def test_json_that_is_not_json_at_all(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("garbage{{{", encoding="utf-8")
    assert error_of(read_table, path).endswith("bad.json: line 1 is not valid JSON (Expecting value at column 1); "
                                               "fix that line")
