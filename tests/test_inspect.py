"""The data doctor: duplicates, conflicts, label issues, images, --fix, data.review, the page, the train-start check.

The engines are tested on data where the answer is certain (planted copies, flipped labels on separable features);
`graft.inspect` end to end on small CSVs with the tiny BERT, or without the model (probe=False) where the model adds
nothing to what is checked.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import graft
from graft.doctor.duplicates import close_hashes, neighbours, semantic_duplicates, text_duplicates
from graft.doctor.labels import label_issues, probe_probabilities
from tests.conftest import error_of, image_recipe, make_texts, tiny_recipe, write_csv

SENTENCE = "the quiet harbour town wakes slowly as fishing boats return before dawn"  # 12 words


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Duplicates of texts


def test_text_signatures_are_the_same_in_every_process():
    """Python's hash() is salted per process; were the MinHash signatures built on it, which near copies LSH offers
    would change from run to run (one run in forty lost one in this file's tests)."""
    import os
    import subprocess

    code = ("from graft.doctor.duplicates import signatures, shingles_of; "
            "print(signatures([shingles_of('a gripping, funny film about nothing')])[0].hashvalues.tolist())")
    printed = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("0", "39")}
    assert len(printed) == 1 and len(json.loads(printed.pop())) == 64


def test_recased_respaced_and_lightly_edited_copies_are_found_and_distinct_texts_are_not() -> None:
    others = [text for text, _ in make_texts(200, seed=4)]
    texts = [*others[:100], SENTENCE, SENTENCE.upper(), "  the quiet  harbour town wakes slowly as fishing boats "
             "return before   dawn ", SENTENCE.replace("town", "village"), SENTENCE, *others[100:]]
    groups = text_duplicates(texts)
    by_kind = {g.kind: g for g in groups}
    assert sorted(g.kind for g in groups) == ["near", "normalized"]
    assert by_kind["normalized"].members == [100, 101, 102, 104]  # exact, re-cased and re-spaced: one text
    assert by_kind["near"].members == [100, 101, 102, 103, 104]  # one word changed joins them
    assert 0.7 <= by_kind["near"].similarity < 1
    assert not [g for g in groups if set(g.members) - {100, 101, 102, 103, 104}]  # nothing among the others


def test_exact_copies_are_exact_and_unrelated_sentences_sharing_words_are_not_near() -> None:
    texts = ["a b c d", "a b c d", "the film is a great movie", "the film is a terrible mess of a movie"]
    groups = text_duplicates(texts)
    assert [(g.kind, g.members) for g in groups] == [("exact", [0, 1])]


# Duplicates of images and of features


def test_close_perceptual_hashes_are_grouped_and_far_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(0, 2**63, size=50)]
    hashes.append(hashes[7] ^ 0b1011)  # 3 bits flipped
    groups = close_hashes(hashes, bits=4)
    assert [sorted(m) for m, _ in groups] == [[7, 50]]
    assert groups[0][1] == pytest.approx(1 - 3 / 64)


def test_cosine_neighbours_find_near_copies_and_rank_the_lone_example_as_most_isolated() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    x = np.repeat(centres, 10, axis=0) + rng.normal(scale=0.3, size=(40, 16))
    x = np.vstack([x, x[3] * 2.0 + 1e-3, rng.normal(size=16) * 5])  # a scaled copy of row 3, and a loner
    found = neighbours(x, threshold=0.999, k=3, budget=64)  # tiny blocks: the block walk must find the same
    assert [(i, j) for i, j, _ in found.pairs] == [(3, 40)]
    assert int(np.argmax(found.isolation)) == 41
    groups = semantic_duplicates(found.pairs, len(x), [])
    assert [g.members for g in groups] == [[3, 40]]


def test_features_that_cannot_tell_inputs_apart_give_no_semantic_pairs() -> None:
    x = np.ones((30, 8)) + np.random.default_rng(2).normal(scale=1e-4, size=(30, 8))
    found = neighbours(x, threshold=0.97)
    assert found.crowded and found.pairs == []


# Label issues


def separable(n_per_class: int = 60, k: int = 3, flips: int = 12, seed: int = 0) -> tuple:
    """Well-separated Gaussian classes with `flips` labels moved to another class: every flip is certain."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 10)) * 6
    y = np.repeat(np.arange(k), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), 10))
    flipped = rng.choice(len(y), size=flips, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1 + rng.integers(0, k - 1, size=flips)) % k
    return x, y, noisy, set(flipped.tolist())


def test_flipped_labels_on_separable_features_are_found_first_with_their_true_label_suggested() -> None:
    x, y, noisy, flipped = separable()
    probe = probe_probabilities({"train": x}, {"train": noisy}, 3)
    issues = label_issues(noisy, probe.probs["train"])
    ranked = np.argsort(issues.quality)[: len(flipped)]
    assert set(ranked.tolist()) == flipped  # the ranking puts every flip first
    assert set(issues.flagged) <= flipped and len(issues.flagged) >= 0.8 * len(flipped)  # the flags: sure, most
    assert all(issues.suggested[i] == y[i] for i in flipped)


def test_test_labels_are_checked_by_the_probe_fitted_on_train() -> None:
    x, y, _, _ = separable(flips=1)
    xt, _, noisy_t, flipped_t = separable(n_per_class=10, flips=3, seed=0)
    probe = probe_probabilities({"train": x, "test": xt}, {"train": y, "test": noisy_t}, 3)
    assert probe.accuracy["train"] > 0.95
    issues = label_issues(noisy_t, probe.probs["test"])
    assert set(np.argsort(issues.quality)[:3].tolist()) == flipped_t
    assert set(issues.flagged) <= flipped_t and issues.flagged


# graft.inspect end to end


def write_texts(folder: Path) -> dict[str, Path]:
    rows = make_texts(90, seed=1)
    rows[10] = (rows[3][0].upper(), rows[3][1])  # re-cased copy of row 4 (rows count from 1)
    rows[12] = (rows[5][0], "login" if rows[5][1] != "login" else "billing")  # row 13: row 6's text, another label
    test = [*make_texts(24, seed=7), rows[20]]  # test row 25 is train row 21
    return {"train": write_csv(folder / "train.csv", rows), "test": write_csv(folder / "test.csv", test)}


def text_tree(model: Path, folder: Path, **data: object) -> dict:
    files = write_texts(folder)
    return tiny_recipe(model, files["train"], folder / "runs" / "r", data={"test": str(files["test"]),
                                                                           "split": [0.8, 0.2, 0.0], **data})


def test_inspect_reports_copies_within_and_across_splits_and_conflicts_with_file_and_row(tiny_bert: Path,
                                                                                         tmp_path: Path) -> None:
    report = graft.inspect(text_tree(tiny_bert, tmp_path), probe=False, say=lambda line: None)
    places = {(g["kind"], tuple((m["split"], m["row"]) for m in g["members"])) for g in report["duplicates"]}
    assert ("normalized", (("train", 4), ("train", 11))) in places
    assert ("exact", (("train", 21), ("test", 25))) in places
    across = [g for g in report["duplicates"] if g["across_splits"]]
    assert [g["members"][1]["file"] for g in across] == ["test.csv"]
    [conflict] = report["conflicts"]
    assert [(m["row"], m["file"]) for m in conflict["members"]] == [(6, "train.csv"), (13, "train.csv")]
    assert conflict["conflicting"] and len({m["label"] for m in conflict["members"]}) == 2
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert saved["duplicates"] == report["duplicates"]
    assert Path(report["files"]["json"]).parent == tmp_path / "runs" / "inspect-r"  # beside output.dir
    assert not (tmp_path / "runs" / "r").exists()


def test_inspect_json_holds_the_contract_fields_and_the_page_escapes_texts(tiny_bert: Path, tmp_path: Path) -> None:
    tree = text_tree(tiny_bert, tmp_path)
    rows = read_rows(Path(tree["data"]["train"]))
    rows[30] = rows[31] = {**rows[30], "text": "<script>alert(1)</script> " + rows[30]["text"]}  # shown as copies
    write_csv(Path(tree["data"]["train"]), [(r["text"], r["label"]) for r in rows])
    report = graft.inspect(tree, say=lambda line: None)
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert saved["label_issues"], "the tiny random BERT's probe flags something to show"
    for issue in saved["label_issues"]:
        assert {"split", "row", "given", "suggested", "score"} <= set(issue)
        assert issue["given"] != issue["suggested"] and 0 <= issue["score"] <= 1
    assert [i["score"] for i in saved["label_issues"]] == sorted((i["score"] for i in saved["label_issues"]),
                                                                 reverse=True)
    assert set(saved["label_scores"]) == {"train", "test"} and len(saved["label_scores"]["train"]["rows"]) == 90
    assert saved["probe"]["folds"] == 5 and set(saved["probe"]["agreement"]) == {"train", "test"}
    page = Path(report["files"]["page"]).read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "exportReview()" in page and "data-key='train:13'" in page


def test_fix_writes_cleaned_copies_and_a_log_and_never_touches_the_originals(tiny_bert: Path, tmp_path: Path) -> None:
    tree = text_tree(tiny_bert, tmp_path)
    originals = {key: digest(Path(tree["data"][key])) for key in ("train", "test")}
    report = graft.inspect(tree, fix=tmp_path / "clean", label_issues="keep", say=lambda line: None)
    assert {key: digest(Path(tree["data"][key])) for key in ("train", "test")} == originals
    log = read_rows(tmp_path / "clean" / "fix_log.csv")
    dropped = {(r["split"], int(r["row"])): r["reason"] for r in log}
    assert set(dropped) == {("train", 11), ("train", 6), ("train", 13), ("train", 21)}
    assert dropped["train", 11] == "copy of train.csv row 4"
    assert dropped["train", 21] == "copy of test.csv row 25"  # the test copy stays: test is never changed
    assert dropped["train", 6].startswith("the same text carries labels 'billing', 'login' (train row 13 'billing')")
    train = read_rows(tmp_path / "clean" / "train.csv")
    assert len(train) == 90 - 4 and list(train[0]) == ["text", "label"]
    assert read_rows(tmp_path / "clean" / "test.csv") == read_rows(Path(tree["data"]["test"]))
    assert report["fix"]["dropped"] == 4 and report["fix"]["relabelled"] == 0
    cleaned = graft.inspect({**tree, "data": {**tree["data"], **report["fix"]["data"]}}, probe=False,
                            output=tmp_path / "again", say=lambda line: None)
    assert [g for g in cleaned["duplicates"] if g["kind"] != "near"] == [] and cleaned["conflicts"] == []


def test_fix_relabels_where_the_probe_is_sure_and_drops_the_other_issues(tiny_bert: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.doctor import inspection

    def planted(recipe, examples, features, report) -> None:  # two train issues, one test issue
        report["probe"] = {"folds": 5, "agreement": {"train": 0.9}}
        report["label_issues"] = [{**examples.ref(n), "given": examples.labels[n], "suggested": "login",
                                   "score": s, "p_given": 1 - s, "p_suggested": s} for n, s in ((40, 0.95), (41, 0.6))]
        test = examples.splits.index("test")
        report["label_issues"].append({**examples.ref(test), "given": examples.labels[test], "suggested": "login",
                                       "score": 0.99, "p_given": 0.01, "p_suggested": 0.99})

    monkeypatch.setattr(inspection, "_label_issues", planted)
    tree = text_tree(tiny_bert, tmp_path)
    graft.inspect(tree, fix=tmp_path / "clean", say=lambda line: None)
    log = {int(r["row"]): r for r in read_rows(tmp_path / "clean" / "fix_log.csv") if r["split"] == "train"}
    assert log[41]["action"] == "relabel" and log[41]["new_label"] == "login"
    assert log[42]["action"] == "drop" and log[42]["reason"].startswith("likely mislabeled")
    assert not [r for r in read_rows(tmp_path / "clean" / "fix_log.csv") if r["split"] == "test"]
    row_41 = read_rows(Path(tree["data"]["train"]))[40]["text"]
    assert [r["label"] for r in read_rows(tmp_path / "clean" / "train.csv") if r["text"] == row_41] == ["login"]


def test_fix_refuses_a_folder_that_is_not_empty_before_any_work(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "notes.txt").write_text("mine")
    message = error_of(graft.inspect, text_tree(tiny_bert, tmp_path), fix=tmp_path / "clean")
    assert "--fix" in message and "exists and is not empty" in message
    assert (tmp_path / "clean" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "runs" / "inspect-r").exists()


def test_the_report_never_goes_into_a_run_directory_or_a_folder_of_other_files(tiny_bert: Path,
                                                                              tmp_path: Path) -> None:
    tree = text_tree(tiny_bert, tmp_path)
    run = tmp_path / "runs" / "done"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert "is a run directory" in error_of(graft.inspect, tree, output=run, probe=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert "not an inspect report" in error_of(graft.inspect, tree, output=tmp_path / "mine", probe=False)
    graft.inspect(tree, output=tmp_path / "rep", probe=False, say=lambda line: None)
    graft.inspect(tree, output=tmp_path / "rep", probe=False, say=lambda line: None)  # its own report: replaced
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["inspect.html", "inspect.json"]


def test_causal_lm_is_declined_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    message = error_of(graft.inspect, {"task": "causal_lm", "data": {"train": str(path)}})
    assert "classification tasks only" in message


# Images


def blob_image(path: Path, seed: int, size: int = 40) -> Path:
    """A smooth random picture (low-frequency blobs), so that resized copies keep their structure."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)
    return path


def test_a_resized_re_encoded_copy_of_an_image_is_found_and_fix_writes_an_image_list(tiny_resnet: Path,
                                                                                     tmp_path: Path) -> None:
    from PIL import Image

    from graft.data.images import read_image_list

    for split, seeds in (("train", range(12)), ("test", range(100, 106))):
        for i, seed in enumerate(seeds):
            folder = tmp_path / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            blob_image(folder / f"{seed}.png", seed)
    source = tmp_path / "train" / "a" / "3.png"
    with Image.open(source) as image:  # into test, resized and re-encoded as JPEG
        image.resize((56, 56)).save(tmp_path / "test" / "a" / "copy.jpg", quality=70)
    (tmp_path / "train" / "b" / "same.png").write_bytes((tmp_path / "train" / "b" / "0.png").read_bytes())
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"not a png")
    tree = image_recipe({"name": str(tiny_resnet)}, tmp_path / "train", tmp_path / "runs" / "r",
                        data={"test": str(tmp_path / "test"), "split": [0.8, 0.2, 0.0]})
    report = graft.inspect(tree, fix=tmp_path / "clean", label_issues="keep", say=lambda line: None)
    kinds = {(g["kind"], tuple(Path(m["input"]).name for m in g["members"])) for g in report["duplicates"]
             if g["kind"] != "semantic"}  # the random ResNet's features: not a judge of sameness
    assert kinds == {("image", ("3.png", "copy.jpg")), ("exact", ("0.png", "same.png"))}
    assert [Path(r["input"]).name for r in report["unreadable"]] == ["broken.png"]
    kept = read_image_list(tmp_path / "clean" / "train.csv", "train.csv", "image", "label")
    names = sorted(Path(p).name for p in kept.texts)
    assert "broken.png" not in names and "3.png" not in names and "same.png" not in names and len(names) == 12 - 1
    assert len(read_image_list(tmp_path / "clean" / "test.csv", "test.csv", "image", "label").texts) == 7


# data.review


def test_review_decisions_apply_in_training_and_in_inspect(tiny_bert: Path, tmp_path: Path) -> None:
    from graft.setup import load_splits

    tree = text_tree(tiny_bert, tmp_path)
    from graft.doctor.examples import read_examples

    tree = text_tree(tiny_bert, tmp_path, leakage="warn")
    assert read_rows(Path(tree["data"]["train"]))[29]["label"] == "login"
    (tmp_path / "review.csv").write_text("split,row,action,label,input\ntrain,13,drop,,x\ntrain,30,relabel,billing,y"
                                         "\ntest,2,keep,,z\n")
    tree["data"]["review"] = str(tmp_path / "review.csv")
    report = graft.inspect(tree, probe=False, fix=tmp_path / "clean", say=lambda line: None)
    assert report["conflicts"] == []  # row 13 dropped by the person
    assert report["data"]["review"]["drop"] == 1 and report["data"]["review"]["relabel"] == 1
    train = read_examples(graft.load_recipe(tree)).parts["train"]
    assert 13 not in train.rows and train.labels[train.rows.index(30)] == "billing"
    log = {(r["split"], int(r["row"])): r for r in read_rows(tmp_path / "clean" / "fix_log.csv")}
    assert log["train", 13]["reason"] == "review (data.review row 1)"
    assert log["train", 30]["action"] == "relabel" and log["train", 30]["new_label"] == "billing"
    assert ("test", 2) not in log
    assert report["fix"]["data"]["review"] is None  # the cleaned rows are the reviewed ones
    splits = load_splits(graft.load_recipe(tree))
    rows = list(splits.train["row"]) + list(splits.validation["row"])
    assert 13 not in rows and len(rows) == 90 - 2  # row 13 by the review, row 11 (row 4 re-cased) before carving
    assert any("data.review review.csv: dropped 1 row, relabelled 1 row, kept 1 row" in w for w in splits.warnings)


REVIEW_ERRORS = {
    "split,row,action\nvalidation,3,drop\n": "data.review review.csv row 1: split 'validation' has no file in this "
                                             "recipe (it is carved from train",
    "split,row,action\ntrain,500,drop\n": "data.review review.csv row 1: train.csv has no row 500 (rows 1 to 90)",
    "split,row,action\ntrain,3,delete\n": "data.review review.csv row 1: action 'delete'; write one of keep, drop",
    "split,row,action\ntrain,3,drop\ntrain,3,keep\n": "review.csv row 2: train row 3 is already decided in row 1",
    "split,row,action,label\ntrain,3,relabel,refunds\n": "row 1: label 'refunds' is not a label of the data",
    "split,row,action\ntrain,3,relabel\n": "row 1: relabel without a label",
    "split,row,action\ntrain,three,drop\n": "row 1: row 'three'; write the example's row number",
    "split,line,action\ntrain,3,drop\n": "data.review review.csv: no column 'row'",
}


@pytest.mark.parametrize("content", list(REVIEW_ERRORS))
def test_a_review_row_that_cannot_apply_is_one_line_naming_it(content: str, tiny_bert: Path, tmp_path: Path) -> None:
    from graft.setup import load_splits

    tree = text_tree(tiny_bert, tmp_path)
    (tmp_path / "review.csv").write_text(content)
    tree["data"]["review"] = str(tmp_path / "review.csv")
    assert REVIEW_ERRORS[content] in error_of(load_splits, graft.load_recipe(tree))
    assert REVIEW_ERRORS[content] in error_of(graft.inspect, tree, probe=False)


def test_review_path_in_a_recipe_file_is_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("data: {train: train.csv, review: review.csv}\n")
    assert graft.load_recipe(tmp_path / "recipe.yaml").data.review == tmp_path / "review.csv"


# The quick check at the start of graft train


def test_train_start_prints_the_quick_check_and_error_mode_stops_before_the_run_is_written(
        tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graft.doctor import check_data

    tree = text_tree(tiny_bert, tmp_path, leakage="warn")
    lines: list[str] = []
    check_data(graft.load_recipe(tree), lines.append)
    assert len(lines) == 1
    assert lines[0].startswith("inspect: 2 exact, 1 normalized duplicate groups (1 across splits); 1 input with "
                               "conflicting labels (e.g. train.csv row 6 'login' vs train.csv row 13 'billing')")
    tree["data"]["inspect"] = "error"
    message = error_of(graft.train, tree)
    assert message.startswith("data.inspect: 2 exact, 1 normalized") and "set data.inspect: warn" in message
    assert not (tmp_path / "runs" / "r").exists()
    tree["data"]["inspect"] = "off"
    lines.clear()
    check_data(graft.load_recipe(tree), lines.append)
    assert lines == []


def test_clean_data_gets_no_line_at_train_start(tiny_bert: Path, tmp_path: Path) -> None:
    from graft.doctor import check_data

    tree = tiny_recipe(tiny_bert, write_csv(tmp_path / "train.csv", make_texts(90, seed=1)), tmp_path / "r")
    lines: list[str] = []
    check_data(graft.load_recipe(tree), lines.append)
    assert lines == []


def test_inspect_cli_prints_the_summary_and_refuses_in_one_line(tiny_bert: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from graft.cli import main

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(text_tree(tiny_bert, tmp_path)))
    monkeypatch.setattr(sys, "argv", ["graft", "inspect", str(tmp_path / "recipe.yaml"), "--no-probe"])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "conflicting labels: 1 input with two or more labels" in out
    assert f"page: {tmp_path / 'runs' / 'inspect-r' / 'inspect.html'}" in out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    monkeypatch.setattr(sys, "argv", ["graft", "inspect", str(tmp_path / "recipe.yaml"), "--fix",
                                      str(tmp_path / "full")])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --fix ")


def test_fix_drops_train_s_near_copy_of_a_test_sentence_and_keeps_near_copies_within_train(tiny_bert: Path,
                                                                                          tmp_path: Path) -> None:
    rows = make_texts(60, seed=1)
    rows[5] = (SENTENCE, "login")
    rows[6] = (SENTENCE.replace("dawn", "noon"), "login")  # near-copies within train: both stay
    test = [*make_texts(20, seed=7), (SENTENCE.replace("town", "village"), "login")]
    tree = tiny_recipe(tiny_bert, write_csv(tmp_path / "train.csv", rows), tmp_path / "runs" / "r",
                       data={"test": str(write_csv(tmp_path / "test.csv", test)), "split": [0.8, 0.2, 0.0]})
    report = graft.inspect(tree, probe=False, fix=tmp_path / "clean", say=lambda line: None)
    [near] = report["duplicates"]
    assert near["kind"] == "near" and [(m["split"], m["row"]) for m in near["members"]] == [
        ("train", 6), ("train", 7), ("test", 21)]
    log = read_rows(tmp_path / "clean" / "fix_log.csv")
    assert [(r["row"], r["reason"].split(" (")[0]) for r in log] == [("6", "near-copy"), ("7", "near-copy")]
    assert all(r["reason"].endswith("of test.csv row 21") for r in log)


def test_fix_of_a_headerless_latin_1_file_writes_plain_csv_and_says_how_to_read_it(tiny_bert: Path,
                                                                                  tmp_path: Path) -> None:
    rows = make_texts(60, seed=1)
    rows[9] = ("why is my invoice from the café still wrong", "billing")
    rows[10] = (rows[9][0].upper(), rows[9][1])
    with (tmp_path / "train.csv").open("w", newline="", encoding="latin-1") as f:
        csv.writer(f).writerows(rows)
    tree = tiny_recipe(tiny_bert, tmp_path / "train.csv", tmp_path / "runs" / "r",
                       data={"columns": ["text", "label"], "encoding": "latin-1"})
    report = graft.inspect(tree, probe=False, fix=tmp_path / "clean", say=lambda line: None)
    fixed = report["fix"]["data"]
    assert fixed == {"train": str(tmp_path / "clean" / "train.csv"), "columns": None, "encoding": "utf-8",
                     "delimiter": None, "review": None}
    cleaned = read_rows(tmp_path / "clean" / "train.csv")
    assert len(cleaned) == 59 and cleaned[9]["text"] == rows[9][0]  # row 11, the re-cased copy, is gone
    again = graft.inspect({**tree, "data": {**tree["data"], **fixed}}, probe=False, output=tmp_path / "again",
                          say=lambda line: None)
    assert again["duplicates"] == []


def test_class_imbalance_is_said_at_train_start_but_never_blocks(tiny_bert: Path, tmp_path: Path) -> None:
    from graft.doctor import check_data

    rows = [r for r in make_texts(240, seed=1) if r[1] != "login"][:150] + make_texts(30, seed=5, labels=("login",))[:6]
    tree = tiny_recipe(tiny_bert, write_csv(tmp_path / "train.csv", rows), tmp_path / "r", data={"inspect": "error"})
    lines: list[str] = []
    check_data(graft.load_recipe(tree), lines.append)
    assert lines == ["inspect: class imbalance 12:1 in train (rows: graft inspect RECIPE)"]  # 75 / 6


def test_cross_validation_and_compare_read_the_reviewed_rows_once(tiny_bert: Path, tmp_path: Path) -> None:
    from graft.compare import write_splits
    from graft.tasks import get_task

    rows = make_texts(60, seed=1)
    (tmp_path / "review.csv").write_text("split,row,action,label\ntrain,3,drop,\ntrain,4,relabel,login\n")
    tree = tiny_recipe(tiny_bert, write_csv(tmp_path / "train.csv", rows), tmp_path / "r",
                       data={"review": str(tmp_path / "review.csv")})
    recipe = graft.load_recipe(tree)
    examples = get_task(recipe.task).read_examples(recipe)  # what --cv folds
    assert len(examples) == 59 and rows[2] not in examples and (rows[3][0], "login") in examples
    data = write_splits(recipe, tmp_path / "splits")  # what every compared strategy reads
    assert data["review"] is None
