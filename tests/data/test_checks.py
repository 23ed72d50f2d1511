"""Each user error in the data gets one line naming the file, the rows and the fix; warnings for the rest."""

from __future__ import annotations

from pathlib import Path

import datasets

from graft.data import load_labelled_file, load_text_splits
from tests.conftest import error_of, write_csv


def many(prefix: str, labels: str = "ab", n: int = 4) -> list[tuple[str, str]]:
    """n distinct texts per label."""
    return [(f"{prefix} {label} {i}", label) for label in labels for i in range(n)]


def load(train: Path, validation: Path | None = None, test: Path | None = None, **options) -> object:
    settings = dict(
        text_column="text", label_column="label", split=(0.5, 0.25, 0.25), seed=0, leakage="error",
        normalize_labels=False,
    )
    return load_text_splits(train, validation, test, **{**settings, **options})


def test_missing_column_suggests_the_close_one(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    message = error_of(load, train, text_column="txt")
    assert message == (
        "train.csv: no column 'txt' (columns: text, label); did you mean 'text'? set data.text_column to one of them"
    )


def test_missing_label_column_names_its_field(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"), header=("text", "category"))
    message = error_of(load, train)
    assert "train.csv: no column 'label' (columns: text, category)" in message and "set data.label_column" in message


def test_header_without_rows(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [])
    assert error_of(load, train) == "train.csv: no data rows; add examples below the header"


def test_empty_texts_are_listed_by_row(tmp_path: Path) -> None:
    rows = [*many("t")[:2], ("", "a"), ("   ", "b"), *many("u")]
    train = write_csv(tmp_path / "train.csv", rows)
    message = error_of(load, train)
    assert message == "train.csv: empty text in column 'text', rows 3, 4; fill or remove those rows"


def test_missing_labels_are_listed_by_row(tmp_path: Path) -> None:
    rows = [*many("t"), ("no label here", ""), ("nor here", " ")]
    train = write_csv(tmp_path / "train.csv", rows)
    message = error_of(load, train)
    assert message == "train.csv: no label in column 'label', rows 9, 10; fill or remove those rows"


def test_long_row_lists_are_cut_after_five(tmp_path: Path) -> None:
    rows = [("", "a")] * 8 + many("t")
    message = error_of(load, write_csv(tmp_path / "train.csv", rows))
    assert "rows 1, 2, 3, 4, 5 … (3 more)" in message


def test_case_variants_of_a_label_are_an_error(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [*many("t", "ab"), ("one more", "B ")])
    message = error_of(load, train)
    assert "'b' (train.csv row 5), 'B ' (train.csv row 9)" in message
    assert "differ only in case or whitespace" in message and "data.normalize_labels: true" in message


def test_case_variants_across_files_name_both_files(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t", ["yes", "no"]))
    test = write_csv(tmp_path / "test.csv", [("fresh 1", "yes"), ("fresh 2", "Yes ")])
    message = error_of(load, train, test=test)
    assert "'yes' (train.csv row 1), 'Yes ' (test.csv row 2)" in message and "data.normalize_labels" in message


def test_normalize_labels_merges_into_the_most_frequent_spelling(tmp_path: Path) -> None:
    rows = [("t1", "Yes"), ("t2", "yes "), ("t3", "yes"), ("t4", "YES"), *many("n", ["no"], 4)]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [("u1", "yes"), ("u2", " No")])
    splits = load(train, test=test, normalize_labels=True)
    assert splits.labels == ["no", "yes"]
    assert sorted([*splits.train["label"], *splits.validation["label"]]) == [0] * 4 + [1] * 4
    assert list(splits.test["label"]) == [1, 0]
    assert "data.normalize_labels: merged 'Yes' (1 row), 'YES' (1 row) into 'yes'" in splits.warnings
    assert "data.normalize_labels: merged 'No' (1 row) into 'no'" in splits.warnings


def test_normalize_labels_ties_go_to_the_first_spelling_seen(tmp_path: Path) -> None:
    rows = [("t1", "Refund"), ("t2", "refund"), ("t3", "refund "), ("t4", "Refund"), *many("o", ["other"])]
    splits = load(write_csv(tmp_path / "train.csv", rows), normalize_labels=True)
    assert splits.labels == ["Refund", "other"]


def test_label_unseen_in_train(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    test = write_csv(tmp_path / "test.csv", [("x", "a"), ("y", "c"), ("z", "c")])
    message = error_of(load, train, test=test)
    assert message == (
        "test.csv: label 'c' (rows 2, 3) not in train.csv (labels: a, b); "
        "fix or remove those rows, or add examples of the label to train.csv"
    )


def test_leakage_is_an_error_by_default(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    test = write_csv(tmp_path / "test.csv", [("fresh", "a"), ("  T  b   2 ", "b"), ("t a 0", "a")])
    message = error_of(load, train, test=test)
    assert message == (
        "test.csv: 2 texts also in train.csv (e.g. test.csv row 2 = train.csv row 7); "
        "remove them or set data.leakage: drop"
    )


def test_leakage_warn_keeps_the_rows(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    test = write_csv(tmp_path / "test.csv", [("fresh", "a"), ("t b 2", "b")])
    splits = load(train, test=test, leakage="warn")
    assert splits.test["text"] == ["fresh", "t b 2"]
    [warning] = splits.warnings
    assert warning.startswith("test.csv: 1 text also in train.csv") and warning.endswith("(data.leakage: warn)")


def test_leakage_drop_removes_them_from_the_evaluation_split(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    validation = write_csv(tmp_path / "val.csv", [("t a 1", "a"), ("v", "b")])
    test = write_csv(tmp_path / "test.csv", [("fresh", "a"), ("t b 2", "b"), ("V", "b")])
    splits = load(train, validation, test, leakage="drop")
    assert len(splits.train) == 8
    assert splits.validation["row"] == [2]
    assert splits.test["text"] == ["fresh"] and splits.test["row"] == [1]
    assert "val.csv: dropped 1 text also in train.csv (e.g. val.csv row 1 = train.csv row 2) (data.leakage: drop)" in (
        splits.warnings
    )
    assert any(w.startswith("test.csv: dropped 1 text also in val.csv") for w in splits.warnings)


def test_leakage_drop_of_every_row_is_an_error(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", many("t"))
    test = write_csv(tmp_path / "test.csv", [("t a 1", "a")])
    message = error_of(load, train, test=test, leakage="drop")
    assert "test.csv: every text is also in train.csv" in message


def test_same_text_with_different_labels_is_a_warning(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [*many("t"), ("T a 1", "b")])
    validation = write_csv(tmp_path / "val.csv", [("v1", "a"), ("v2", "b")])
    test = write_csv(tmp_path / "test.csv", [("w1", "a"), ("w2", "b")])
    splits = load(train, validation, test)
    assert len(splits.train) == 9
    assert splits.warnings == [
        "train.csv: same text, different labels in rows 2, 9 (e.g. row 2 'a' vs row 9 'b'); check for label noise"
    ]


def test_eval_file_is_checked_against_the_model_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "eval.csv", [("x", "neg"), ("y", "maybe")])
    options = dict(text_column="text", label_column="label", labels=["neg", "pos"], normalize_labels=False)
    message = error_of(load_labelled_file, path, **options)
    assert message == (
        "eval.csv: label 'maybe' (row 2) not in the model's labels (labels: neg, pos); fix or remove those rows"
    )


def test_eval_file_reads_with_model_label_ids(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "eval.csv", [("x", "pos"), ("y", "Neg ")])
    options = dict(text_column="text", label_column="label", labels=["neg", "pos"])
    message = error_of(load_labelled_file, path, normalize_labels=False, **options)
    assert "'neg' (the model's labels), 'Neg ' (eval.csv row 2)" in message
    table = load_labelled_file(path, normalize_labels=True, **options)
    assert table.to_list() == [{"text": "x", "label": 1, "row": 1}, {"text": "y", "label": 0, "row": 2}]


def test_class_names_of_a_saved_dataset_are_the_labels(tmp_path: Path) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    saved = tmp_path / "eval"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).save_to_disk(str(saved))
    options = dict(text_column="text", label_column="label", normalize_labels=False)
    table = load_labelled_file(saved, labels=["pos", "neg"], **options)
    assert table["label"] == [0, 1]
