"""The seeded stratified split, given splits used as they are, and class order."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from graft.data import TextSplits, load_text_splits
from graft.data.splits import class_order, stratified_split
from graft.errors import GraftError


def write_csv(path: Path, rows: list[tuple[object, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


def dataset(counts: dict[str, int]) -> list[tuple[str, str]]:
    """`counts[label]` distinct texts per label, classes interleaved as a real file would be."""
    rows = [(f"example {label} {i}", label) for label, n in counts.items() for i in range(n)]
    return sorted(rows, key=lambda row: int(row[0].split()[-1]))


def load(train: Path, validation: Path | None = None, test: Path | None = None, **options) -> TextSplits:
    settings = dict(
        text_column="text", label_column="label", split=(0.7, 0.15, 0.15), seed=0, leakage="error",
        normalize_labels=False,
    )
    return load_text_splits(train, validation, test, **{**settings, **options})


def texts(splits: TextSplits) -> dict[str, list[str]]:
    return {key: list(getattr(splits, key)["text"]) for key in ("train", "validation", "test")}


def test_one_file_is_split_70_15_15_within_every_class(tmp_path: Path) -> None:
    splits = load(write_csv(tmp_path / "train.csv", dataset({"pos": 100, "neg": 60, "odd": 20})))
    assert splits.labels == ["neg", "odd", "pos"]
    per_class = {key: Counter(getattr(splits, key)["label"]) for key in ("train", "validation", "test")}
    assert per_class["validation"] == per_class["test"] == {2: 15, 0: 9, 1: 3}
    assert per_class["train"] == {2: 70, 0: 42, 1: 14}
    assert splits.sources == {"train": "train.csv", "validation": "train.csv (split)", "test": "train.csv (split)"}
    assert splits.warnings == []


def test_split_rows_point_back_to_the_file_in_order(tmp_path: Path) -> None:
    rows = dataset({"a": 10, "b": 10})
    splits = load(write_csv(tmp_path / "train.csv", rows))
    for part in (splits.train, splits.validation, splits.test):
        assert list(part["row"]) == sorted(part["row"])
        assert all(rows[row - 1][0] == text for row, text in zip(part["row"], part["text"], strict=True))
    assert sorted([*splits.train["row"], *splits.validation["row"], *splits.test["row"]]) == list(range(1, 21))
    assert splits.train.column_names == ["text", "label", "row"]


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", dataset({"a": 40, "b": 40}))
    assert texts(load(train, seed=3)) == texts(load(train, seed=3))
    assert texts(load(train, seed=3)) != texts(load(train, seed=4))


def test_repeated_texts_are_dropped_before_splitting(tmp_path: Path) -> None:
    rows = [*dataset({"a": 20, "b": 20}), ("Example  A 3", "a"), ("example a 4 ", "a")]
    splits = load(write_csv(tmp_path / "train.csv", rows))
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40
    assert "train.csv: dropped 2 rows repeating an earlier text (e.g. row 41 = row 7) before splitting it" in (
        splits.warnings
    )


def test_given_splits_are_used_as_they_are(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [("t1", "a"), ("t2", "b"), ("t1 again", "a")])
    validation = write_csv(tmp_path / "val.csv", [("v1", "b")])
    test = write_csv(tmp_path / "test.csv", [("w1", "a"), ("w2", "a")])
    splits = load(train, validation, test)
    assert texts(splits) == {"train": ["t1", "t2", "t1 again"], "validation": ["v1"], "test": ["w1", "w2"]}
    assert list(splits.test["row"]) == [1, 2]
    assert splits.sources == {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


def test_only_the_missing_split_is_carved(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", dataset({"a": 20, "b": 20}))
    validation = write_csv(tmp_path / "val.csv", [("v1", "a"), ("v2", "b")])
    splits = load(train, validation)
    assert list(splits.validation["text"]) == ["v1", "v2"]
    assert Counter(splits.test["label"]) == {0: 3, 1: 3}
    assert len(splits.train) == 34
    assert splits.sources["test"] == "train.csv (split)"


def test_class_too_small_to_split(tmp_path: Path) -> None:
    rows = [*dataset({"billing": 10}), ("give money back", "refund"), ("now", "refund")]
    train = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(GraftError) as caught:
        load(train)
    assert str(caught.value) == (
        "train.csv: class 'refund' has 2 examples; a stratified 70/15/15 split needs at least 3 per class; "
        "add examples, remove the class, or give data.validation and data.test"
    )


def test_class_too_small_to_carve_one_split(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [*dataset({"billing": 10}), ("give money back", "refund")])
    test = write_csv(tmp_path / "test.csv", [("w", "billing")])
    with pytest.raises(GraftError) as caught:
        load(train, test=test)
    message = str(caught.value)
    assert "train.csv: class 'refund' has 1 example; a stratified 15% validation split needs at least 2" in message
    assert message.endswith("or give data.validation") and "\n" not in message


def test_numeric_labels_are_ordered_as_numbers(tmp_path: Path) -> None:
    rows = [(f"text {label} {i}", label) for label in (10, 2, 1) for i in range(4)]
    splits = load(write_csv(tmp_path / "train.csv", rows), split=(0.5, 0.25, 0.25))
    assert splits.labels == ["1", "2", "10"]
    pairs = zip(splits.train["text"], splits.train["label"], strict=True)
    assert {text.split()[1]: label for text, label in pairs} == {"1": 0, "2": 1, "10": 2}


def test_numbers_in_json_are_labels_too(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    records = [{"text": f"text {i}", "label": [3, 1.0, 20][i % 3]} for i in range(12)]
    path.write_text(json.dumps(records), encoding="utf-8")
    assert load(path, split=(0.5, 0.25, 0.25)).labels == ["1", "3", "20"]


@pytest.mark.parametrize(
    ("labels", "order"),
    [
        (["10", "2", "-1"], ["-1", "2", "10"]),
        (["b", "10", "a", "2"], ["10", "2", "a", "b"]),
        (["1.5", "1"], ["1", "1.5"]),
    ],
)
def test_class_order(labels: list[str], order: list[str]) -> None:
    assert class_order(labels) == order


def test_stratified_split_keeps_one_of_every_class_in_train() -> None:
    labels = ["a"] * 4 + ["b"] * 3
    picked = stratified_split(labels, {"validation": 0.4, "test": 0.4}, seed=0)
    assert {labels[i] for i in picked["train"]} == {"a", "b"}
    assert sorted(i for indices in picked.values() for i in indices) == list(range(7))


def test_zero_fraction_carves_nothing() -> None:
    picked = stratified_split(["a"] * 10, {"validation": 0.2, "test": 0.0}, seed=0)
    assert (len(picked["train"]), len(picked["validation"]), len(picked["test"])) == (8, 2, 0)
