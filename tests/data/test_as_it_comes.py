"""Data as it comes: headerless files (data.columns), other encodings and delimiters, globs of several files,
DatasetDict folders and Hugging Face Hub datasets (hf://); each with its one-line error. No test touches the network:
hub loads are monkeypatched, and the offline one runs with the network refused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image

import graft
from graft.crossval import cross_validate
from graft.data import load_text_splits, read_table, read_unlabelled_texts
from graft.data.images import load_image_splits
from graft.data.instructions import load_instruction_splits
from graft.data.sources import locate_splits
from graft.data.splits import TextSplits
from graft.data.tables import PLAIN, TableFormat, read_labelled, read_rows
from graft.recipe import DataSpec, load_recipe
from graft.tasks import get_task
from tests.conftest import error_of, make_texts, tiny_recipe

LABELS = datasets.ClassLabel(names=["neg", "pos"])
FEATURES = datasets.Features({"text": datasets.Value("string"), "label": LABELS})


def write(path: Path, content: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode(encoding))
    return path


def load(train: Path | str, validation: Path | str | None = None, test: Path | str | None = None,
         fmt: TableFormat = PLAIN, **options) -> TextSplits:
    settings = dict(text_column="text", label_column="label", split=(0.5, 0.25, 0.25), seed=0, leakage="error",
                    normalize_labels=False, fmt=fmt)
    return load_text_splits(train, validation, test, **{**settings, **options})


def split_dict(sizes: dict[str, int]) -> datasets.DatasetDict:
    """Splits of `n` distinct texts each, labels alternating, labels as a ClassLabel (as hub datasets store them)."""
    columns = {name: {"text": [f"{name} text {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
               for name, n in sizes.items()}
    return datasets.DatasetDict({name: datasets.Dataset.from_dict(c, features=FEATURES) for name, c in columns.items()})


# The recipe: new fields checked in one line, hub ids kept whole, globs kept, old recipes unchanged.

def test_recipe_keeps_hub_ids_whole_and_globs_relative_to_the_recipe(tmp_path: Path) -> None:
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"data": {"train": "hf://nyu-mll/glue:sst2@main",
                                                    "validation": "reviews/*.csv", "test": "test.csv",
                                                    "columns": ["text", "label"], "encoding": "cp1252",
                                                    "delimiter": ";"}}))
    data = load_recipe(recipe_file).data
    assert data.train == "hf://nyu-mll/glue:sst2@main"  # a Path would fold '//' into 'hf:/nyu-mll'
    assert data.validation == tmp_path / "reviews" / "*.csv" and data.test == tmp_path / "test.csv"
    assert (data.columns, data.encoding, data.delimiter) == (["text", "label"], "cp1252", ";")
    dumped = load_recipe(recipe_file).dump()["data"]
    assert dumped["train"] == "hf://nyu-mll/glue:sst2@main" and dumped["validation"] == str(data.validation)
    assert DataSpec(**dumped).train == "hf://nyu-mll/glue:sst2@main"  # a run's saved recipe loads back


def test_an_old_recipe_reads_as_before(tmp_path: Path) -> None:
    data = load_recipe({"data": {"train": "train.csv"}}).data
    assert data.train == Path.cwd() / "train.csv" and isinstance(data.train, Path)
    assert (data.columns, data.encoding, data.delimiter) == (None, "utf-8", None)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("delimiter", ";;", "data.delimiter = ';;': must be one character"),
    ("delimiter", '"', "other than a quote or a line break"),
    ("encoding", "latin-42", "data.encoding = 'latin-42': not an encoding Python knows; e.g. utf-8, latin-1"),
    ("columns", ["text", "text"], "data.columns = ['text', 'text']: names 'text' twice"),
    ("columns", [], "data.columns = []: must name every column"),
    ("train", "hf://not a/dataset", "data.train = 'hf://not a/dataset': a Hugging Face dataset is hf://owner/name"),
])
def test_a_wrong_data_format_field_is_one_line(field: str, value: object, expected: str) -> None:
    message = error_of(load_recipe, {"data": {"train": "train.csv", field: value}})
    assert expected in message, message


# Headerless files: data.columns names the columns, the first line is data.

@pytest.mark.parametrize(("name", "sep"), [("train.csv", ","), ("train.tsv", "\t")])
def test_headerless_file_reads_every_line_as_data(tmp_path: Path, name: str, sep: str) -> None:
    path = write(tmp_path / name, f"\ufeffgreat film{sep}pos\nawful{sep}neg\n")  # a byte-order mark is tolerated
    table = read_table(path, TableFormat(columns=("text", "label")))
    assert table.to_dict() == {"text": ["great film", "awful"], "label": ["pos", "neg"]}


def test_headerless_file_of_another_width_names_the_file_the_row_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "great film,pos,2024\nawful,neg,2023\n")
    message = error_of(read_table, path, TableFormat(columns=("text", "label")))
    assert message == (f"{path}: row 1 has 3 fields but data.columns names 2 (text, label); give data.columns one "
                       f"name per column of the file")
    semicolons = write(tmp_path / "semi.csv", "great film;pos\n")
    assert "looks separated by semicolons: set data.delimiter: \";\"" in error_of(
        read_table, semicolons, TableFormat(columns=("text", "label")))


def test_headerless_format_on_a_file_with_a_header_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "Text,Label\ngreat film,pos\n")  # it would become a class named 'Label'
    message = error_of(read_table, path, TableFormat(columns=("text", "label")))
    assert "train.csv: row 1 is a header (Text, Label)" in message and "remove data.columns" in message


def test_headerless_splits_through_load_text_splits(tmp_path: Path) -> None:
    lines = "".join(f"{text},{label}\n" for text, label in make_texts(40, seed=2))
    splits = load(write(tmp_path / "train.csv", lines), fmt=TableFormat(columns=("text", "label")))
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40  # no line lost to a header


# Encodings: a file that is not UTF-8 is one line naming the byte, its offset and line, and data.encoding.

@pytest.mark.parametrize(("name", "content"), [
    ("train.csv", "text,label\nfine,pos\ncafé crème,neg\n"),
    ("train.jsonl", '{"text": "fine", "label": "pos"}\n\n{"text": "café crème", "label": "neg"}\n'),
    ("inputs.txt", "fine\n\ncafé crème\n"),
])
def test_latin1_file_read_as_utf8_is_one_line_with_the_fix(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content, encoding="latin-1")
    offset = content.index("é")
    if name.endswith(".txt"):
        message = error_of(read_unlabelled_texts, str(path), text_column="text")
    else:
        message = error_of(read_table, path)
    assert message == (f"{path}: not UTF-8 text: byte 0xe9 at offset {offset} (line 3); set data.encoding to the "
                       f"file's encoding (e.g. data.encoding: latin-1, or cp1252 for files saved on Windows), or save "
                       f"it as UTF-8")


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_encoding_reads_csv_json_and_text_files(tmp_path: Path, encoding: str) -> None:
    fmt = TableFormat(encoding=encoding)
    text = "naïve “quoted” café" if encoding == "cp1252" else "naïve café"
    csv_file = write(tmp_path / "a.csv", f"text,label\n{text},pos\n", encoding)
    jsonl = write(tmp_path / "a.jsonl", json.dumps({"text": text, "label": "pos"}, ensure_ascii=False) + "\n", encoding)
    txt = write(tmp_path / "a.txt", f"{text}\n", encoding)
    assert read_table(csv_file, fmt)["text"] == read_table(jsonl, fmt)["text"] == [text]
    assert read_unlabelled_texts(str(txt), text_column="text", fmt=fmt) == [text]


# Delimiters.

@pytest.mark.parametrize(("name", "sep"), [("train.csv", ";"), ("train.csv", "|"), ("train.tsv", ",")])
def test_delimiter_overrides_the_suffix(tmp_path: Path, name: str, sep: str) -> None:
    path = write(tmp_path / name, f'text{sep}label\n"fine, really; yes|no"{sep}pos\n')
    table = read_table(path, TableFormat(delimiter=sep))
    assert table.to_dict() == {"text": ["fine, really; yes|no"], "label": ["pos"]}


@pytest.mark.parametrize(("sep", "shown"), [(";", 'semicolons; set data.delimiter: ";"'),
                                            ("\t", 'tabs; set data.delimiter: "\\t", or name the file .tsv')])
def test_header_of_one_column_holding_another_separator_says_which(tmp_path: Path, sep: str, shown: str) -> None:
    path = write(tmp_path / "train.csv", f"text{sep}label\nfine{sep}pos\n")
    message = error_of(read_table, path)
    assert message.startswith(f"{path}: the header is one column holding ") and message.endswith(shown), message


# Globs: every matching file, sorted, as one table; rows named by their own file.

def test_glob_reads_every_matching_file_sorted_as_one_table(tmp_path: Path) -> None:
    write(tmp_path / "reviews" / "b.csv", "text,label\nthird,pos\n")
    write(tmp_path / "reviews" / "a.csv", "label,text\nneg,first\npos,second\n")  # columns in another order
    write(tmp_path / "reviews" / ".hidden.csv", "text,label\nnever,neg\n")
    write(tmp_path / "reviews" / "2024" / "c.csv", "text,label\nfourth,neg\n")
    table, rows = read_rows(tmp_path / "reviews" / "**" / "*.csv")
    assert table.to_dict() == {"text": ["fourth", "first", "second", "third"], "label": ["neg", "neg", "pos", "pos"]}
    assert [str(row) for row in rows] == ["1 of 2024/c.csv", "1 of a.csv", "2 of a.csv", "1 of b.csv"]
    assert rows == [1, 2, 3, 4]  # as numbers: positions in the whole table (the `row` column of a split)
    assert read_table(tmp_path / "reviews" / "*.csv")["text"] == ["first", "second", "third"]


def test_glob_errors_name_the_file_and_its_own_row(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "text,label\none,1\ntwo,2\n")
    write(tmp_path / "b.csv", "text,label\nthree,1\n  ,2\n")
    message = error_of(read_labelled, tmp_path / "*.csv", "part/*.csv", "text", "label")
    assert message == "part/*.csv: empty text in column 'text', row 2 of b.csv; fill or remove those rows"
    write(tmp_path / "b.csv", "text,label\nthree,1.0\nfour,2\n")  # one number two ways, across the files
    message = error_of(read_labelled, tmp_path / "*.csv", "part/*.csv", "text", "label")
    assert "labels '1' (row 1 of a.csv), '1.0' (row 1 of b.csv)" in message
    write(tmp_path / "b.csv", 'text,label\n"three,1\n')
    assert error_of(read_table, tmp_path / "*.csv").startswith(f"{tmp_path / 'b.csv'}: cannot read it as CSV")


def test_glob_rows_stay_named_in_later_checks(tmp_path: Path) -> None:
    write(tmp_path / "train" / "a.csv", "text,label\none,neg\ntwo,pos\n")
    write(tmp_path / "train" / "b.csv", "text,label\nthree,neg\nfour,pos\n")
    test = write(tmp_path / "test.csv", "text,label\nfour,pos\nfive,neg\n")
    message = error_of(load, tmp_path / "train" / "*.csv", None, test)
    assert "test.csv row 1 = train/*.csv row 2 of b.csv" in message, message
    splits = load(tmp_path / "train" / "*.csv", None, test, leakage="drop")
    assert splits.sources["train"] == "train/*.csv"
    assert sorted([*splits.train["row"], *splits.validation["row"]]) == [1, 2, 3, 4]  # positions in the whole glob


def test_glob_that_matches_nothing_is_one_line(tmp_path: Path) -> None:
    message = error_of(read_table, tmp_path / "reviews" / "*.csv")
    assert message == f"{tmp_path / 'reviews' / '*.csv'}: no file matches this pattern; check it (the folder, the " \
                      f"suffix, the case)"


def test_glob_of_files_with_other_columns_names_both_files(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "text,label\none,neg\n")
    write(tmp_path / "b.csv", "text,label,source\ntwo,pos,web\n")
    message = error_of(read_table, tmp_path / "*.csv")
    assert message.endswith("*.csv: b.csv has the columns text, label, source but a.csv has text, label; give every "
                            "file the pattern matches the same columns"), message
    write(tmp_path / "a.jsonl", '{"text": "one", "label": 1}\n')
    write(tmp_path / "b.jsonl", '{"text": "two", "label": "pos"}\n')
    message = error_of(read_table, tmp_path / "*.jsonl")
    assert "column 'label' holds string values in b.jsonl but int64 values in a.jsonl" in message


def test_glob_of_image_lists_resolves_paths_from_each_list(tmp_path: Path) -> None:
    for colour, rgb in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        for shot in range(4):
            folder = tmp_path / "shoots" / f"{colour}{shot}"
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), rgb).save(folder / "img.png")
            write(folder / "list.csv", f"img.png;{colour}\n")  # headerless, semicolons, relative to its own folder
    splits = load_image_splits(tmp_path / "shoots" / "*" / "list.csv", None, None, split=(0.5, 0.25, 0.25), seed=0,
                               fmt=TableFormat(columns=("image", "label"), delimiter=";"))
    found = [p for part in (splits.train, splits.validation, splits.test) for p in part.paths]
    assert sorted(found) == sorted((tmp_path / "shoots").glob("*/img.png"))
    assert splits.sources["train"] == "shoots/*/list.csv"


# DatasetDicts: a folder made by DatasetDict.save_to_disk gives its splits by name.

def test_dataset_dict_folder_gives_its_splits_by_name(tmp_path: Path) -> None:
    split_dict({"train": 12, "dev": 4, "test": 6, "unsupervised": 3}).save_to_disk(str(tmp_path / "reviews"))
    splits = load(tmp_path / "reviews")
    assert splits.sources == {"train": "reviews/train", "validation": "reviews/dev", "test": "reviews/test"}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (12, 4, 6)
    assert splits.labels == ["neg", "pos"]  # the ClassLabel's names, not its ids


def test_a_split_the_recipe_gives_wins_over_the_dicts_with_a_warning(tmp_path: Path) -> None:
    split_dict({"train": 12, "validation": 4}).save_to_disk(str(tmp_path / "reviews"))
    val = write(tmp_path / "val.csv", "text,label\nmine,neg\nalso mine,pos\n")
    splits = load(tmp_path / "reviews", val)
    assert splits.sources == {"train": "reviews/train", "validation": "val.csv", "test": "reviews/train (split)"}
    assert splits.warnings == ["data.validation: val.csv is used, not the 'validation' split of reviews"]
    assert list(splits.validation["text"]) == ["mine", "also mine"]


def test_dataset_dict_as_data_test_gives_its_test_split(tmp_path: Path) -> None:
    split_dict({"train": 5, "test": 3}).save_to_disk(str(tmp_path / "other"))
    train = write(tmp_path / "train.csv", "text,label\n" + "".join(f"mine {i},{'neg' if i % 2 else 'pos'}\n"
                                                                   for i in range(12)))
    splits = load(train, None, tmp_path / "other")
    assert splits.sources["test"] == "other/test" and len(splits.test) == 3


def test_dataset_dict_without_the_split_lists_its_splits(tmp_path: Path) -> None:
    split_dict({"training": 5, "testing": 3}).save_to_disk(str(tmp_path / "odd"))
    message = error_of(load, tmp_path / "odd")
    assert message == (f"data.train: {tmp_path / 'odd'} has no 'train' split (its splits: training, testing); give "
                       f"data.train a DatasetDict with one, or a file or folder of that split")
    train = write(tmp_path / "train.csv", "text,label\na,neg\nb,pos\n")
    assert "data.validation: " in error_of(load, train, tmp_path / "odd")
    assert "'validation' or 'valid' or 'val' or 'dev' split" in error_of(load, train, tmp_path / "odd")


# Hugging Face Hub datasets, hf://owner/name[:config][@revision], through datasets.load_dataset.

def test_hub_dataset_loads_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path: str, name: str | None = None, **kwargs: object) -> datasets.DatasetDict:
        calls.append((path, name, kwargs))
        return split_dict({"train": 10, "test": 4, "unsupervised": 2})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits = load("hf://stanfordnlp/imdb:plain_text@main", split=(0.8, 0.2, 0.0))
    assert calls == [("stanfordnlp/imdb", "plain_text", {"revision": "main"})]
    assert splits.sources == {"train": "hf://stanfordnlp/imdb:plain_text@main[train]",
                              "validation": "hf://stanfordnlp/imdb:plain_text@main[train] (split)",
                              "test": "hf://stanfordnlp/imdb:plain_text@main[test]"}
    assert (len(splits.train) + len(splits.validation), len(splits.test)) == (10, 4)
    load("hf://imdb", None, "hf://imdb", split=(0.8, 0.2, 0.0))  # one id given twice is downloaded once
    assert calls[1:] == [("imdb", None, {"revision": None})]


def test_offline_hub_is_one_line_and_never_opens_a_connection(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a test opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    message = error_of(locate_splits, "hf://someone/not-cached", None, None)
    assert message == ("hf://someone/not-cached: the hub is switched off (HF_HUB_OFFLINE=1) and the dataset is not in "
                       "the local cache; load it once where the hub is reachable (it is cached then), or give a folder "
                       "made by DatasetDict.save_to_disk")


@pytest.mark.parametrize(("error", "expected"), [
    (ConnectionError("Couldn't reach 'imdb' on the Hub (ConnectTimeout)"),
     "hf://imdb: the Hugging Face Hub is not reachable and the dataset is not in the local cache"),
    (datasets.exceptions.DatasetNotFoundError("Dataset 'imdb' doesn't exist on the Hub"),
     "hf://imdb: no such dataset on the Hugging Face Hub"),
    (ValueError("Config name is missing.\nPlease pick one among the available configs: ['ax', 'cola']\nExample"),
     "hf://imdb: pick one of its configurations after a colon, e.g. hf://imdb:ax (configurations: ax, cola)"),
])
def test_hub_failures_are_one_line(monkeypatch: pytest.MonkeyPatch, error: Exception, expected: str) -> None:
    def load_dataset(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    assert error_of(load, "hf://imdb").startswith(expected)


def test_hub_dataset_without_a_train_split_lists_its_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: split_dict({"validation": 3, "test": 3}))
    message = error_of(load, "hf://someone/eval-only")
    assert message.startswith("data.train: hf://someone/eval-only has no 'train' split (its splits: validation, test)")


def test_images_refuse_hub_datasets_in_one_line() -> None:
    message = error_of(load_recipe, {"task": "image_classification", "data": {"train": "hf://cifar10"}})
    assert "data.train: hf:// datasets are read for text tasks" in message


# Instruction data (causal LMs) reads tables too.

def test_instruction_data_from_a_headerless_glob_and_a_hub_dataset(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for part in range(2):
        write(tmp_path / "pairs" / f"{part}.tsv", "".join(f"question {part}-{i}|answer {i}\n" for i in range(5)))
    data = load_recipe({"task": "causal_lm", "data": {"train": str(tmp_path / "pairs" / "*.tsv"),
                                                      "columns": ["prompt", "response"], "delimiter": "|"}}).data
    splits = load_instruction_splits(data.train, None, None, data=data, split=(0.6, 0.2, 0.2), seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 10
    write(tmp_path / "pairs" / "1.tsv", "question|\n")
    assert "pairs/*.tsv: empty prompt or response in row 1 of 1.tsv" in error_of(
        load_instruction_splits, data.train, None, None, data=data, split=(0.6, 0.2, 0.2), seed=0)
    chats = datasets.Dataset.from_dict({"prompt": [f"q{i}" for i in range(6)], "response": ["a"] * 6})
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: datasets.DatasetDict({"train": chats, "test": chats.select([0, 1])}))
    hub = load_recipe({"task": "causal_lm", "data": {"train": "hf://someone/chats", "leakage": "warn"}}).data
    splits = load_instruction_splits(hub.train, None, None, data=hub, split=(0.8, 0.2, 0.0), seed=0)
    assert splits.sources["test"] == "hf://someone/chats[test]" and len(splits.test) == 2


# Runs that write split files (cross-validation folds, compare) read them back as plain CSV.

def test_cross_validation_folds_are_read_as_plain_csv(tmp_path: Path) -> None:
    lines = "".join(f"{text};{label}\n" for text, label in make_texts(30, seed=3))
    write(tmp_path / "train.csv", lines, encoding="cp1252")
    recipe = load_recipe({"data": {"train": str(tmp_path / "train.csv"), "columns": ["text", "label"],
                                   "delimiter": ";", "encoding": "cp1252"}, "output": {"dir": str(tmp_path / "cv")}})

    class Stop(Exception):
        pass

    def train(fold: graft.Recipe, **kwargs: object) -> dict:
        splits = get_task(fold.task).load_splits(fold)
        raise Stop(len(splits.train) + len(splits.validation) + len(splits.test))

    with pytest.raises(Stop) as stopped:
        cross_validate(recipe, k=3, train=train)
    assert stopped.value.args == (30,)  # the fold's train (validation carved from it) and test: no header lost


# End to end through the public API: a tiny BERT trained on a hub dataset, validated on headerless latin-1 files.

def test_train_on_a_hub_dataset_with_headerless_validation_files(tiny_bert: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_texts(90, seed=5)
    names = sorted({label for _, label in rows})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def part(chosen: list[tuple[str, str]]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"text": [t for t, _ in chosen],
                                           "label": [names.index(label) for _, label in chosen]}, features=features)

    hub = datasets.DatasetDict({"train": part(rows[:60]), "test": part(rows[60:75])})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)
    for i, chunk in enumerate((rows[75:83], rows[83:])):
        write(tmp_path / "val" / f"{i}.csv", "".join(f"{text} é;{label}\n" for text, label in chunk), "latin-1")
    recipe = tiny_recipe(tiny_bert, Path("unused.csv"), tmp_path / "run", train={"epochs": 1})
    recipe["data"] = {"train": "hf://someone/tickets", "validation": str(tmp_path / "val" / "*.csv"),
                      "columns": ["text", "label"], "delimiter": ";", "encoding": "latin-1"}
    record = graft.train(recipe)
    assert record["data"]["sources"] == {"train": "hf://someone/tickets[train]", "validation": "val/*.csv",
                                         "test": "hf://someone/tickets[test]"}
    assert record["data"]["sizes"] == {"train": 60, "validation": 15, "test": 15}
    assert record["recipe"]["data"]["train"] == "hf://someone/tickets"
    evaluated = graft.evaluate(tmp_path / "run", tmp_path / "val" / "*.csv")  # read as the recipe says
    assert sum(map(sum, evaluated["confusion_matrix"])) == 15
