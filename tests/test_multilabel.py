"""Multi-label classification: label sets read from a delimited column or 0/1 columns (bad ones refused in one line
with file and row), metrics and thresholds, and a tiny BERT trained end to end: thresholds tuned on validation and
kept in run.json and beside the weights, used by eval and predict; compare and cross-validation run it."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import graft
from graft.data.multilabel import LabelFormat, load_multilabel_splits, read_label_sets
from graft.evaluation.multilabel import MIN_TUNING_EXAMPLES, multilabel_metrics, read_thresholds, tune_thresholds
from graft.recipe import load_recipe
from tests.conftest import KEYWORDS, error_of, make_label_sets, tiny_recipe

LABELS = tuple(KEYWORDS)


def write(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def multilabel_recipe(model_dir: Path, file: Path, run_dir: Path, **sections: dict) -> dict:
    tree = tiny_recipe(model_dir, file, run_dir, **{"train": {"epochs": 2}, **sections})
    tree["task"] = "multilabel_classification"
    return tree


# Reading label sets.

def test_delimited_column_reads_sets_and_empty_cells_as_no_label(tmp_path):
    path = write(tmp_path / "t.csv", ("text", "label"), [("a b", "x, y"), ("c", ""), ("d", "y"), ("e", "y,y")])
    part = read_label_sets(path, "t.csv", "text", LabelFormat())
    assert part.labels == ["x,y", "", "y", "y"]
    semi = write(tmp_path / "s.csv", ("text", "tags"), [("a", "x;y"), ("b", "z")])
    assert read_label_sets(semi, "s.csv", "text", LabelFormat("tags", ";")).labels == ["x;y", "z"]


def test_json_lists_are_label_sets(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": []}]))
    assert read_label_sets(path, "t.jsonl", "text", LabelFormat()).labels == ["x,y", ""]


def test_zero_one_columns_are_label_sets(tmp_path):
    path = write(tmp_path / "t.csv", ("text", "x", "y"), [("a", 1, 0), ("b", 1, 1), ("c", 0, 0)])
    assert read_label_sets(path, "t.csv", "text", LabelFormat(columns=("x", "y"))).labels == ["x", "x,y", ""]


def test_a_zero_one_column_holding_something_else_is_one_line_with_row(tmp_path):
    path = write(tmp_path / "t.csv", ("text", "x", "y"), [("a", 1, 0), ("b", "yes", 1)])
    message = error_of(read_label_sets, path, "t.csv", "text", LabelFormat(columns=("x", "y")))
    assert "t.csv" in message and "'x'" in message and "'yes'" in message and "row 2" in message


def test_an_unknown_label_in_test_is_one_line_with_file_and_row(tmp_path):
    train = write(tmp_path / "train.csv", ("text", "label"), make_label_sets(30, seed=1))
    test = write(tmp_path / "test.csv", ("text", "label"), [("invoice", "billing"), ("parcel", "delivery,refunds")])
    message = error_of(load_multilabel_splits, train, None, test, text_column="text", labels=LabelFormat(),
                       split=(0.7, 0.15, 0.15), seed=0, leakage="error")
    assert "test.csv" in message and "'refunds'" in message and "row 2" in message and "train.csv" in message


def test_splits_hold_multi_hot_rows_in_label_order(tmp_path):
    train = write(tmp_path / "train.csv", ("text", "label"), make_label_sets(60, seed=2))
    splits = load_multilabel_splits(train, None, None, text_column="text", labels=LabelFormat(),
                                    split=(0.7, 0.15, 0.15), seed=0, leakage="error")
    assert splits.labels == sorted(LABELS)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (42, 9, 9)
    rows = {text: labels for text, labels in make_label_sets(60, seed=2)}
    for text, hot in zip(splits.test["text"], splits.test["label"], strict=True):
        assert [name for name, bit in zip(splits.labels, hot, strict=True) if bit] == sorted(
            filter(None, rows[text].split(",")))


def test_recipe_fields_belong_to_the_task(tmp_path):
    train = write(tmp_path / "train.csv", ("text", "label"), make_label_sets(20, seed=3))
    tree = tiny_recipe(tmp_path, train, tmp_path / "run", data={"label_columns": ["a"]})
    with pytest.raises(Exception, match="label_columns"):
        load_recipe(tree)
    tree = multilabel_recipe(tmp_path, train, tmp_path / "run")
    recipe = load_recipe(tree)
    assert recipe.eval.metric == "f1_micro" and recipe.eval.resolved_mode == "max"
    tree["eval"] = {"metric": "hamming_loss"}
    assert load_recipe(tree).eval.resolved_mode == "min"
    with pytest.raises(Exception, match="f1_micro"):  # text classification is scored as before
        load_recipe(tiny_recipe(tmp_path, train, tmp_path / "run", eval={"metric": "f1_micro"}))
    with pytest.raises(Exception, match="retention"):
        load_recipe({**tree, "retention": {"data": str(train)}})


# Metrics and thresholds.

def test_metrics_of_a_known_case():
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    logits = np.array([[3.0, -3.0, 2.0], [-2.0, 1.0, 1.0], [2.0, -1.0, -2.0], [-3.0, -3.0, -3.0]])
    m = multilabel_metrics(logits, truth, ["a", "b", "c"])
    # Predicted: [1,0,1], [0,1,1], [1,0,0], [0,0,0]: two rows exactly right, two of 12 decisions wrong.
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["per_label"]["b"] == {**m["per_label"]["b"], "precision": 1.0, "recall": 0.5, "support": 2}
    assert m["per_label"]["a"]["roc_auc"] == 1.0 and m["roc_auc"] is not None
    at_zero = multilabel_metrics(logits, truth, ["a", "b", "c"], {"b": 0.2})  # b at p >= 0.2 catches row 3
    assert at_zero["per_label"]["b"]["recall"] == 1.0


def test_thresholds_maximise_each_labels_f1_and_keep_half_with_too_few_positives():
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 3), dtype=int)
    truth[:40, 0] = 1
    truth[:MIN_TUNING_EXAMPLES - 1, 2] = 1  # separable, but one positive short of being tuned on
    scores = np.where(truth[:, 0] == 1, rng.uniform(0.2, 0.35, 200), rng.uniform(0.0, 0.15, 200))
    logits = np.stack([np.log(scores / (1 - scores)), np.zeros(200), np.log(scores / (1 - scores))], axis=1)
    tuned = tune_thresholds(logits, truth, ["rare", "absent", "few"])
    assert 0.15 < tuned["rare"] < 0.2 and tuned["absent"] == 0.5 and tuned["few"] == 0.5
    truth[MIN_TUNING_EXAMPLES - 1, 2] = 1
    assert tune_thresholds(logits, truth, ["rare", "absent", "few"])["few"] != 0.5
    two = logits[:, :2], truth[:, :2], ["rare", "absent"]
    assert multilabel_metrics(*two, tuned)["per_label"]["rare"]["f1"] == 1.0
    assert multilabel_metrics(*two)["per_label"]["rare"]["f1"] == 0.0


def test_a_damaged_thresholds_file_is_one_line(tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"a": 1.5}}))
    assert "thresholds.json" in error_of(read_thresholds, tmp_path)
    assert read_thresholds(tmp_path / "none") is None


# Training end to end.

@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multilabel")
    train = write(root / "train.csv", ("text", "label"), make_label_sets(90, seed=4))
    record = graft.train(multilabel_recipe(tiny_bert, train, root / "run", optim={"lr": 5e-3}))
    assert record["status"] == "completed"
    return root


def test_run_record_holds_metrics_at_half_and_tuned_and_the_thresholds(trained):
    record = json.loads((trained / "run" / "run.json").read_text())
    test, thresholds = record["metrics"]["test"], record["thresholds"]
    assert set(thresholds["per_label"]) == set(LABELS) == set(test["per_label"])
    for name in ("f1_micro", "f1_macro", "f1_weighted", "subset_accuracy", "hamming_loss"):
        assert thresholds["test"]["tuned"][name] == pytest.approx(test[name])
        assert name in thresholds["test"]["at_0.5"] and name in thresholds["validation"]["at_0.5"]
    assert test["per_label"]["login"]["threshold"] == thresholds["per_label"]["login"]
    assert record["model"]["load_report"] and record["data"]["label_counts"]
    assert record["loss"]["pos_weight"] is None or set(record["loss"]["pos_weight"]) == set(LABELS)
    saved = json.loads((trained / "run" / "model" / "thresholds.json").read_text())
    assert saved["thresholds"] == thresholds["per_label"]
    config = json.loads((trained / "run" / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    page = (trained / "run" / "report.html").read_text()
    assert "Labels on test" in page and "subset accuracy" in page


def test_eval_uses_the_stored_thresholds(trained):
    data = write(trained / "eval.csv", ("text", "label"), make_label_sets(30, seed=9))
    metrics = graft.evaluate(trained / "run", data)
    assert metrics["thresholds"] == read_thresholds(trained / "run" / "model")
    assert metrics["per_label"]["billing"]["threshold"] == metrics["thresholds"]["billing"]
    bad = write(trained / "bad.csv", ("text", "label"), [("invoice", "billing"), ("x", "login,spam")])
    message = error_of(graft.trained.evaluate_run, trained / "run", bad)
    assert "bad.csv" in message and "'spam'" in message and "row 2" in message


def test_predict_gives_the_label_set_and_every_probability(trained):
    predictor = graft.Predictor(trained / "run")
    thresholds = read_thresholds(trained / "run" / "model")
    rows = predictor.predict(["invoice refund parcel", "my the is"])
    for row in rows:
        assert set(row["probabilities"]) == set(LABELS)
        assert set(row["labels"]) == {n for n, p in row["probabilities"].items() if p >= thresholds[n]}
    inputs = write(trained / "in.csv", ("text",), [("invoice refund parcel",), ("my the is",)])
    written = graft.predict(trained / "run", inputs, trained / "out.csv")
    with (trained / "out.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["text", "labels", *(f"p_{n}" for n in sorted(LABELS))]
    assert [r["labels"] for r in table] == [",".join(r["labels"]) for r in written]
    for file_row, memory_row in zip(written, rows, strict=True):
        assert file_row["probabilities"] == pytest.approx(memory_row["probabilities"])


def test_single_label_tools_decline_in_one_line(trained):
    assert "multi-label" in error_of(graft.predict, trained / "run", ["invoice"], mc_dropout=3)
    assert "threshold" in error_of(graft.predict, trained / "run", ["invoice"], min_confidence=0.5)


def test_an_onnx_export_keeps_the_thresholds_and_answers_as_its_run(trained, tmp_path, monkeypatch):
    from tests.test_onnx_export import run_snippet

    out = graft.export(trained / "run", tmp_path / "onnx", format="onnx", quantize="int8")
    meta = json.loads((out / "export.json").read_text())
    thresholds = read_thresholds(trained / "run" / "model")
    assert meta["thresholds"] == thresholds == read_thresholds(out) and "same_labels" not in meta["check"]
    test = json.loads((trained / "run" / "run.json").read_text())["metrics"]["test"]
    assert meta["test"]["pytorch"]["f1_micro"] == pytest.approx(test["f1_micro"])  # at the tuned thresholds
    assert meta["test"]["f1_micro_change"] == pytest.approx(meta["test"]["onnx_int8"]["f1_micro"] - test["f1_micro"])
    fp32 = graft.export(trained / "run", tmp_path / "fp32", format="onnx")
    texts = ["invoice refund parcel", "my the is", "password reset courier"]
    for got, want in zip(graft.Predictor(fp32).predict(texts), graft.Predictor(trained / "run").predict(texts),
                         strict=True):
        assert got["labels"] == want["labels"] and got["probabilities"] == pytest.approx(want["probabilities"],
                                                                                          abs=1e-5)
    data = write(tmp_path / "eval.csv", ("text", "label"), make_label_sets(30, seed=9))
    assert graft.evaluate(fp32, data)["f1_micro"] == pytest.approx(graft.evaluate(trained / "run", data)["f1_micro"])
    printed = run_snippet(fp32, monkeypatch)  # the model card's code, onnxruntime alone, on "an example text"
    chosen = graft.Predictor(trained / "run").predict("an example text")["labels"]
    assert set(ast.literal_eval(printed[:printed.index("]") + 1])) == set(chosen)


def test_compare_and_cross_validation_run_it(tiny_bert, tmp_path):
    from graft.compare import compare
    from graft.crossval import cross_validate

    piped = [(text, labels.replace(",", "|")) for text, labels in make_label_sets(48, 6)]
    train = write(tmp_path / "train.csv", ("text", "tags"), piped)
    tree = multilabel_recipe(tiny_bert, train, tmp_path / "cmp", data={"label_column": "tags",
                                                                       "label_delimiter": "|"},
                             train={"epochs": 1}, eval={"metric": "hamming_loss"})
    summary = compare(tree, ["head_only", "full"])
    assert summary["metric"] == "hamming_loss" and {r["label"] for r in summary["strategies"]} == {"head_only", "full"}
    assert all(r["hamming_loss"] is not None for r in summary["strategies"])
    folds = cross_validate({**tree, "output": {**tree["output"], "dir": str(tmp_path / "cv")}}, 2)
    assert len(folds["cv"]["folds"]) == 2 and "f1_micro" in folds["cv"]["mean"]
    written = (tmp_path / "cv" / "folds" / "fold-0" / "test.csv").read_text()
    assert "|" not in written.split("\n", 1)[1]  # label sets written back joined by commas


def test_cli_eval_prints_the_label_metrics_at_the_tuned_thresholds(trained):
    from tests.e2e.test_cli import graft_cli

    done = graft_cli("eval", str(trained / "run"), cwd=trained)
    assert done.returncode == 0, done.stderr
    first, header, *labels = done.stdout.strip().splitlines()
    test = json.loads((trained / "run" / "run.json").read_text())["metrics"]["test"]
    assert first.startswith(f"test: f1_micro {test['f1_micro']:.4f}") and "tuned thresholds" in first
    assert "threshold" in header and sorted(line.split()[0] for line in labels) == sorted(LABELS)


def test_the_rt_example_labels_real_sentences_by_its_documented_rule():
    """Reads ../shared/data/rt-polarity (real review sentences); skipped where it is absent."""
    from tests.conftest import SHARED_DATA
    from tests.e2e.test_real_resnet20 import load_example

    if not (SHARED_DATA / "rt-polarity").is_dir():
        pytest.skip(f"{SHARED_DATA / 'rt-polarity'} is absent here")
    example = load_example("multilabel_rt")
    rows = example.sentences(SHARED_DATA)
    built = example.examples(rows[:200], 1)
    polarity = dict(rows[:200])
    assert sum(len(text) for text, _ in built) + len(built) > sum(len(s) for s, _ in rows[:200])  # pairs were joined
    sizes = {len(labels.split(",")) for _, labels in built}
    assert {1, 2} <= sizes
    for text, labels in built:
        found = set(labels.split(","))
        assert ("question" in found) == ("?" in text) and ("exclaims" in found) == ("!" in text)
        if text in polarity:  # one sentence: its own file's label only
            assert found & {"pos", "neg"} == {polarity[text]}
