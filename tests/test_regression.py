"""task: regression: numeric targets read and checked row by row, learnt standardised, scored and predicted in
their own units beside the mean predictor; compare and cross-validation rank by the chosen metric (RMSE: lower
wins); what it cannot take is refused in one line."""

from __future__ import annotations

import ast
import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

import graft
from tests.conftest import FILLER, error_of, make_texts, tiny_recipe, write_csv


def scored_texts(n: int, seed: int) -> list[tuple[str, float, float]]:
    """`n` distinct (text, score, count) rows: score = 10 + 5 x the number of `invoice` words (0-4) and count = minus
    the number of `parcel` words (0-2); the rest is filler. Learnable by the tiny BERT in a few epochs."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        k, m = rng.randint(0, 4), rng.randint(0, 2)
        words = rng.choices(FILLER, k=rng.randint(3, 10)) + ["invoice"] * k + ["parcel"] * m
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, 10.0 + 5 * k, -float(m)))
    return rows


def write_scores(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "score", "count")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def regression_recipe(model: Path, train_file: Path, run_dir: Path, **sections: dict) -> dict:
    tree = tiny_recipe(model, train_file, run_dir, **sections)
    tree["task"] = "regression"
    tree["data"] = {"label_column": "score", **tree["data"]}
    return tree


@pytest.fixture(scope="module")
def two_target_run(tiny_bert, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regression")
    train = write_scores(root / "train.csv", scored_texts(160, seed=3))
    record = graft.train(regression_recipe(tiny_bert, train, root / "run",
                                           data={"target_columns": ["score", "count"]}, train={"epochs": 4}))
    assert record["status"] == "completed"
    return root / "run"


def test_two_targets_learnt_standardised_and_reported_in_their_units(two_target_run: Path) -> None:
    record = json.loads((two_target_run / "run.json").read_text())
    test = record["metrics"]["test"]
    assert record["data"]["labels"] == ["score", "count"] and record["recipe"]["eval"]["metric"] == "rmse"
    # The scale is the training split's, and the loss is standardised by it.
    train = np.asarray([[float(r["score"]), float(r["count"])] for r in _rows(two_target_run)], dtype=np.float64)
    scale = record["loss"]["standardised"]
    assert scale["score"]["std"] > 3 and scale["count"]["std"] < 1.5  # each target its own scale
    assert train[:, 0].min() <= scale["score"]["mean"] <= train[:, 0].max()
    # The model beats the mean predictor in the targets' own units; averaged and per target.
    assert test["rmse"] < test["baseline_rmse"] and test["beats_baseline"] is True and record["warnings"] == []
    assert test["per_target"]["score"]["rmse"] < 5.0 and test["r2"] > 0.3 and test["spearman"] > 0.5
    assert test["rmse"] == pytest.approx(np.mean([test["per_target"][n]["rmse"] for n in ("score", "count")]))
    assert len(record["scatter"]["score"]["true"]) == test["n"] and len(record["largest_errors"]) == 10
    page = (two_target_run / "report.html").read_text()
    assert "Predicted against true" in page and "Largest errors on test" in page and "mean predictor: RMSE" in page


def test_cli_eval_prints_the_errors_per_target(two_target_run: Path) -> None:
    from tests.e2e.test_cli import graft_cli

    done = graft_cli("eval", str(two_target_run), cwd=two_target_run)
    assert done.returncode == 0, done.stderr
    first, score, count = done.stdout.strip().splitlines()  # eval has no training means: no mean predictor
    test = json.loads((two_target_run / "run.json").read_text())["metrics"]["test"]
    assert first.startswith(f"test: rmse {test['rmse']:.4f}  mae {test['mae']:.4f}  r2 {test['r2']:.4f}")
    assert score.split()[:3] == ["score", "rmse", f"{test['per_target']['score']['rmse']:.4f}"]
    assert count.split()[0] == "count"


def test_the_training_summary_says_the_mean_predictor(two_target_run: Path, capsys) -> None:
    from graft.cli import _print_metrics

    test = json.loads((two_target_run / "run.json").read_text())["metrics"]["test"]
    _print_metrics(test)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"  mean predictor (each target's training mean for every example): rmse "
                           f"{test['baseline_rmse']:.4f}")
    assert last.endswith("this model does not beat it") != test["beats_baseline"]


def _rows(run: Path) -> list[dict[str, str]]:
    recipe = json.loads((run / "run.json").read_text())["recipe"]
    with open(recipe["data"]["train"], newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_saved_model_predicts_in_the_targets_units(two_target_run: Path, tmp_path: Path) -> None:
    record = json.loads((two_target_run / "run.json").read_text())
    # The saved model carries the scale folded in: eval of its own test split gives the recorded metrics.
    again = graft.evaluate(two_target_run)
    assert again["rmse"] == pytest.approx(record["metrics"]["test"]["rmse"], rel=1e-4)
    assert again["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-4)  # standardised, as trained
    assert again["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-4)
    rows = graft.predict(two_target_run, ["invoice invoice invoice invoice my the", "my the is"])
    assert set(rows[0]) == {"text", "predicted"} and set(rows[0]["predicted"]) == {"score", "count"}
    assert rows[0]["predicted"]["score"] > rows[1]["predicted"]["score"] + 5  # in points, not standard deviations
    out = tmp_path / "predicted.csv"
    write_csv(tmp_path / "texts.csv", [("my invoice", "x")], header=("text", "other"))
    graft.predict(two_target_run, str(tmp_path / "texts.csv"), output=out)
    assert out.read_text().splitlines()[0] == "text,predicted_score,predicted_count"
    config = json.loads((two_target_run / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 2 and "graft_targets" in config
    assert "predict 2 numeric value(s)" in (two_target_run / "model" / "README.md").read_text()
    assert "--mc-dropout: for classifiers" in error_of(graft.predict, two_target_run, ["my"], mc_dropout=3)
    assert "a regression's values" in error_of(graft.predict, two_target_run, ["my"], min_confidence=0.5)


@pytest.mark.parametrize(("value", "said"), [("abc", "'abc', not a finite number"), ("", "no value"),
                                             ("inf", "'inf', not a finite number")])
def test_a_bad_target_is_one_line_with_file_and_row(tiny_bert, tmp_path: Path, value: str, said: str) -> None:
    rows = [(t, str(s), str(c)) for t, s, c in scored_texts(30, seed=1)]
    rows[6] = (rows[6][0], value, rows[6][2])
    train = write_scores(tmp_path / "train.csv", rows)
    message = error_of(graft.train, regression_recipe(tiny_bert, train, tmp_path / "run"))
    assert message.startswith(f"train.csv: row 7: target column 'score' holds {said}")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_missing_target_column_and_a_flat_target_are_refused(tiny_bert, tmp_path: Path) -> None:
    train = write_scores(tmp_path / "train.csv", scored_texts(30, seed=1))
    message = error_of(graft.train, regression_recipe(tiny_bert, train, tmp_path / "run",
                                                      data={"target_columns": ["score", "cuont"]}))
    assert "no column 'cuont'" in message and "did you mean 'count'" in message
    flat = write_scores(tmp_path / "flat.csv", [(t, 1.5, c) for t, _, c in scored_texts(30, seed=1)])
    assert "target 'score' has the same value in every training row" in error_of(
        graft.train, regression_recipe(tiny_bert, flat, tmp_path / "run"))


@pytest.mark.parametrize(("sections", "said"), [
    ({"loss": {"class_weights": {"a": 2.0}}}, "loss.class_weights: for classifiers"),
    ({"eval": {"metric": "accuracy"}}, "regression is scored by loss, mse, rmse"),
    ({"data": {"augment": {"swap": 0.1}}}, "data.augment.swap: regression does not read it"),
    ({"data": {"target_columns": ["score", "score"]}}, "must name each target column once"),
    ({"retention": {"data": "source.csv"}}, "retention: measured on a classifier's"),
])
def test_what_a_regression_cannot_take_is_refused(tiny_bert, tmp_path: Path, sections: dict, said: str) -> None:
    train = write_scores(tmp_path / "train.csv", scored_texts(30, seed=1))
    tree = regression_recipe(tiny_bert, train, tmp_path / "run")
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    assert said in error_of(graft.load_recipe, tree)


def test_target_columns_are_refused_for_classifiers(tiny_bert, tmp_path: Path) -> None:
    tree = tiny_recipe(tiny_bert, write_csv(tmp_path / "t.csv", make_texts(30, seed=1)), tmp_path / "run",
                       data={"target_columns": ["a", "b"]})
    assert "data.target_columns: text_classification does not read it" in error_of(graft.load_recipe, tree)


def test_inspect_and_advise_decline_in_one_line(tiny_bert, two_target_run: Path, tmp_path: Path) -> None:
    from graft.advise import advise
    from graft.doctor.examples import read_examples

    recipe = graft.load_recipe(json.loads((two_target_run / "run.json").read_text())["recipe"])
    assert "classification tasks only so far, not regression" in error_of(read_examples, recipe)
    assert "graft advise: its signals" in error_of(advise, recipe)


def test_an_onnx_export_predicts_and_evaluates_in_the_targets_units(two_target_run: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from tests.test_onnx_export import run_snippet

    out = graft.export(two_target_run, tmp_path / "onnx", format="onnx", quantize="int8")
    meta = json.loads((out / "export.json").read_text())
    test = json.loads((two_target_run / "run.json").read_text())["metrics"]["test"]
    assert meta["labels"] == ["score", "count"] and "same_labels" not in meta["check"]
    assert meta["config"]["graft_targets"]["std"][0] > 1  # the scale, for the standardised loss
    assert meta["test"]["pytorch"]["rmse"] == pytest.approx(test["rmse"], rel=1e-5)
    assert meta["test"]["onnx_fp32"] == pytest.approx(meta["test"]["pytorch"], rel=1e-4)
    assert meta["test"]["rmse_change"] == pytest.approx(meta["test"]["onnx_int8"]["rmse"] - test["rmse"], rel=1e-4)
    fp32 = graft.export(two_target_run, tmp_path / "fp32", format="onnx")
    texts = [t for t, *_ in scored_texts(6, seed=9)]
    got, want = graft.Predictor(fp32).predict(texts), graft.Predictor(two_target_run).predict(texts)
    for g, w in zip(got, want, strict=True):
        assert g["predicted"] == pytest.approx(w["predicted"], abs=1e-4)
    labelled = write_scores(tmp_path / "labelled.csv", scored_texts(15, seed=8))
    export_scores, run_scores = graft.evaluate(fp32, labelled), graft.evaluate(two_target_run, labelled)
    for key in ("rmse", "r2", "loss"):  # the loss standardised by the run's scale, which the export carries
        assert export_scores[key] == pytest.approx(run_scores[key], rel=1e-4), key
    printed = ast.literal_eval(run_snippet(fp32, monkeypatch))  # the model card's code, onnxruntime alone
    assert printed == pytest.approx(graft.Predictor(two_target_run).predict("an example text")["predicted"], abs=1e-4)


def test_float_labels_for_a_classifier_get_the_hint(tiny_bert, tmp_path: Path) -> None:
    rows = [(text, f"{0.37 * i:.3f}") for i, (text, _) in enumerate(make_texts(40, seed=1))]
    message = error_of(graft.train, tiny_recipe(tiny_bert, write_csv(tmp_path / "t.csv", rows), tmp_path / "run"))
    assert "too few examples" in message and "for a numeric target use task: regression" in message
    from graft.data.checks import numeric_hint

    assert numeric_hint([str(i % 5) for i in range(100)]) == ""  # integer classes are classes


def test_metrics_against_numpy_and_the_mean_predictor() -> None:
    from scipy.stats import spearmanr

    from graft.evaluation.metrics import metric_mode
    from graft.evaluation.regression import mean_baseline, regression_metrics

    rng = np.random.default_rng(0)
    truth = rng.normal(5, 2, (50, 1))
    predicted = truth + rng.normal(0, 1, (50, 1))
    m = regression_metrics(predicted, truth, ["y"])
    error = (predicted - truth)[:, 0]
    assert m["mse"] == pytest.approx(np.mean(error ** 2)) and m["rmse"] == pytest.approx(np.sqrt(m["mse"]))
    assert m["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert m["r2"] == pytest.approx(1 - np.sum(error ** 2) / np.sum((truth - truth.mean()) ** 2))
    assert m["pearson"] == pytest.approx(np.corrcoef(predicted[:, 0], truth[:, 0])[0, 1])
    assert m["spearman"] == pytest.approx(spearmanr(predicted[:, 0], truth[:, 0])[0])
    base = mean_baseline(truth, [float(truth.mean())], ["y"])
    assert base["baseline_r2"] == pytest.approx(0.0) and base["baseline_rmse"] == pytest.approx(truth.std())
    constant = regression_metrics(np.full((50, 1), 3.0), truth, ["y"])
    assert constant["pearson"] is None and constant["spearman"] is None  # undefined, not 0 or NaN
    assert [metric_mode(n) for n in ("mse", "rmse", "mae", "r2", "pearson", "spearman")] == [
        "min", "min", "min", "max", "max", "max"]


def test_a_model_no_better_than_the_mean_is_warned_about() -> None:
    from graft.pipeline import model_warnings

    warned = model_warnings({"rmse": 2.0, "baseline_rmse": 1.9, "beats_baseline": False})
    assert len(warned) == 1 and "does not beat the mean predictor" in warned[0]
    assert model_warnings({"rmse": 1.0, "baseline_rmse": 1.9, "beats_baseline": True}) == []


def test_compare_ranks_lower_rmse_first() -> None:
    from graft.compare import format_table, judge

    def row(label: str, rmse: float) -> dict:
        return {"label": label, "strategy": label, "rmse": rmse, "rmse_std": 0.0, "r2": 0.5, "r2_std": 0.0,
                "accuracy": None, "accuracy_std": 0.0, "f1_macro": None, "f1_macro_std": 0.0, "n_test": 500,
                "runs": ["r"], "retention": None, "trainable": 10, "cost_s": 1.0, "s_per_epoch": 1.0,
                "peak_memory_mb": 1.0}

    rows = [row("full", 0.10), row("head_only", 0.16), row("scratch", 0.20)]
    verdict = judge(rows, "rmse")
    assert verdict["winner"] == "full" and verdict["negative_transfer"] == []
    table = format_table({"metric": "rmse", "seeds": [0], "strategies": rows, **verdict})
    lines = table.splitlines()
    assert "rmse" in lines[0] and "accuracy" not in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["full", "head_only", "scratch"]
    close = judge([row("full", 0.100), row("lora", 0.101)], "rmse")  # within the test set's sampling error
    assert close["winner"] is None and close["ties"] == ["lora"]


def test_cross_validation_folds_by_shuffle_with_every_target(tiny_bert, tmp_path: Path) -> None:
    from graft.crossval import cross_validate
    from graft.setup import load_splits

    train = write_scores(tmp_path / "train.csv", scored_texts(40, seed=2))
    seen: list[list[str]] = []

    def fake_train(fold, **_: object) -> dict:
        splits = load_splits(fold)  # the fold files read back as the recipe reads them
        seen.append(sorted(splits.test["text"]))
        assert splits.labels == ["score", "count"] and len(splits.test) in (13, 14)
        return {"metrics": {"test": {"rmse": 1.0, "r2": 0.5}}, "recipe": fold.dump(), "timings": {"train_s": 1.0},
                "data": {"labels": list(splits.labels)}, "params": {"trainable": 1, "total": 1}, "peak_memory_mb": 1}

    summary = cross_validate(regression_recipe(tiny_bert, train, tmp_path / "cv",
                                               data={"target_columns": ["score", "count"]}), 3, train=fake_train)
    assert summary["cv"]["mean"]["rmse"] == 1.0 and len(seen) == 3
    assert sorted(t for fold in seen for t in fold) == sorted(t for t, _, _ in scored_texts(40, seed=2))
    assert "rmse" in (tmp_path / "cv" / "report.html").read_text()


def test_head_only_trains_by_the_loop_on_cached_features_and_lora_saves_the_scale(tiny_bert, tmp_path: Path) -> None:
    train = write_scores(tmp_path / "train.csv", scored_texts(60, seed=4))
    record = graft.train(regression_recipe(tiny_bert, train, tmp_path / "head", strategy={"name": "head_only"}))
    assert record["strategy"]["feature_cache"].startswith("on") and "probe" not in record["strategy"]
    assert record["metrics"]["test"]["rmse"] is not None
    record = graft.train(regression_recipe(tiny_bert, train, tmp_path / "lora", strategy={"name": "lora"}))
    again = graft.evaluate(tmp_path / "lora")  # the PEFT run rebuilt: its saved head gives the targets' units
    assert again["rmse"] == pytest.approx(record["metrics"]["test"]["rmse"], rel=1e-4)
    assert again["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-4)  # standardised, as trained

