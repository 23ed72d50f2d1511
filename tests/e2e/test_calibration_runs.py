"""Calibration through whole runs: every classifier run (full, LoRA, the exact probe, images) records ECE/NLL/Brier
in validation and test, fits and stores a temperature, and `graft eval` / `graft predict` / `Predictor` apply it
(`--raw` / `raw=True` do not); a run saved without one predicts as before; a language model is left alone; the
report draws the reliability diagram and the coverage curve from run.json alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.evaluation.calibration import TEMPERATURE_FILE
from graft.report import write_report
from tests.conftest import image_recipe, make_texts, tiny_recipe, write_csv

TEXTS = ["my invoice shows a double charge", "the courier never came with my parcel", "reset my password please"]
SCORES = ("ece", "nll", "brier")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("calibration") / "train.csv", make_texts(120, seed=1))


@pytest.fixture(scope="module")
def run(tiny_bert: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    run_dir = tmp_path_factory.mktemp("calibrated") / "run"
    return graft.train(tiny_recipe(tiny_bert, data, run_dir, train={"epochs": 6})), run_dir


def check_calibrated(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What every classifier run records; returns `calibration`."""
    test, c = record["metrics"]["test"], record["calibration"]
    assert all(isinstance(test[k], float) for k in SCORES)
    # every validation row with the full metrics (the exact probe's other L2 strengths keep loss and accuracy)
    validations = [h for h in record["metrics"]["history"] if h["split"] == "validation" and "f1_macro" in h]
    assert validations and all(isinstance(h[k], float) for h in validations for k in SCORES)
    assert c["temperature"] > 0
    assert c["before"] == pytest.approx({k: test[k] for k in (*SCORES, "accuracy")})  # metrics.test: the raw model
    assert c["after"]["accuracy"] == c["before"]["accuracy"]
    assert c["validation"]["after"]["nll"] <= c["validation"]["before"]["nll"] + 1e-9
    assert c["fitted_on"] == {"split": "validation", "n": record["data"]["sizes"]["validation"]}
    assert sum(b["count"] for b in c["reliability"]["after"]) == test["n"]
    assert c["coverage"][0]["coverage"] == 1.0 and c["coverage"][0]["accuracy"] == pytest.approx(test["accuracy"])
    stored = json.loads((run_dir / "model" / TEMPERATURE_FILE).read_text())
    assert stored["temperature"] == c["temperature"]
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk["calibration"]["temperature"] == c["temperature"] and "ece" in on_disk["metrics"]["test"]
    return c


def probabilities(rows: list[dict[str, Any]]) -> list[float]:
    return [p for row in rows for p in row["probabilities"].values()]


def log_ratios(row: dict[str, Any]) -> np.ndarray:
    p = np.array(list(row["probabilities"].values()))
    return np.log(p) - np.log(p[0])


def test_a_run_records_calibration_and_stores_its_temperature(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    c = check_calibrated(record, run_dir)
    assert c["note"] is None and c["temperature"] != 1.0


def test_eval_applies_the_temperature_and_raw_does_not(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    c, test = record["calibration"], record["metrics"]["test"]
    scaled = graft.evaluate(run_dir)
    assert scaled["temperature"] == c["temperature"]
    assert {k: scaled[k] for k in SCORES} == pytest.approx({k: c["after"][k] for k in SCORES}, rel=1e-4, abs=1e-6)
    assert scaled["loss"] == pytest.approx(c["after"]["nll"], rel=1e-4)
    raw = graft.evaluate(run_dir, raw=True)
    assert "temperature" not in raw
    assert {k: raw[k] for k in (*SCORES, "loss")} == pytest.approx({k: test[k] for k in (*SCORES, "loss")}, rel=1e-4)


def test_predictions_are_scaled_by_the_temperature(run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, run_dir = run
    t = record["calibration"]["temperature"]
    scaled, raw = graft.Predictor(run_dir).predict(TEXTS), graft.Predictor(run_dir, raw=True).predict(TEXTS)
    for s, r in zip(scaled, raw, strict=True):
        assert s["label"] == r["label"]
        np.testing.assert_allclose(log_ratios(s), log_ratios(r) / t, rtol=1e-4, atol=1e-5)  # softmax(z / T)
        assert s["score"] == pytest.approx(max(s["probabilities"].values()))
    assert probabilities(graft.predict(run_dir, TEXTS)) == pytest.approx(probabilities(scaled), rel=1e-5)
    assert probabilities(graft.predict(run_dir, TEXTS, raw=True)) == pytest.approx(probabilities(raw), rel=1e-5)
    inputs = tmp_path / "new.txt"
    inputs.write_text("\n".join(TEXTS) + "\n")
    cli = CliRunner()
    for flags, expected in (([], scaled), (["--raw"], raw)):
        result = cli.invoke(app, ["predict", str(run_dir), str(inputs), *flags])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert probabilities(rows) == pytest.approx(probabilities(expected), rel=1e-5)
    result = cli.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 0 and f"temperature {t:.3f} applied" in result.stdout, result.output


def test_a_run_saved_without_a_temperature_predicts_as_before(run: tuple[dict[str, Any], Path],
                                                             tmp_path: Path) -> None:
    _, run_dir = run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("checkpoints", TEMPERATURE_FILE))
    assert probabilities(graft.predict(old, TEXTS)) == pytest.approx(probabilities(graft.predict(run_dir, TEXTS,
                                                                                                raw=True)))
    assert "temperature" not in graft.evaluate(old)


def test_the_report_shows_calibration_from_files_alone(run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, run_dir = run
    copy = tmp_path / "copy"  # from files alone: no model, no checkpoints
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model", "report.html"))
    page = write_report(copy).read_text()
    section = page[page.index("Calibration: can its confidence be trusted?"):page.index("Most confident mistakes")
                   if "Most confident mistakes" in page else page.index(">What trained<")]
    assert section.count("<svg") == 2  # the reliability diagrams, the coverage curve
    assert f"T = {record['calibration']['temperature']:.3f}" in section
    assert "answer only when confidence" in section
    assert ("Suggested threshold" in section) == (record["calibration"]["threshold"]["value"] is not None)
    assert "50% most confident" in section and "half the error rate" in section


def test_the_summary_line(run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]) -> None:
    from graft.cli import _print_summary

    record, _ = run
    _print_summary(record)
    c = record["calibration"]
    assert f"test ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f} with temperature" in capsys.readouterr().out


def test_lora_run_is_calibrated_and_its_merged_export_carries_the_temperature(
        tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    record = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "run", strategy={"name": "lora", "lora": {"r": 4}},
                                     optim={"lr": 5e-2}, train={"epochs": 3}))
    c = check_calibrated(record, tmp_path / "run")
    t = c["temperature"]
    scaled, raw = graft.predict(tmp_path / "run", TEXTS), graft.predict(tmp_path / "run", TEXTS, raw=True)
    np.testing.assert_allclose(log_ratios(scaled[0]), log_ratios(raw[0]) / t, rtol=1e-4, atol=1e-5)
    graft.export(tmp_path / "run", tmp_path / "merged", merge=True)
    assert json.loads((tmp_path / "merged" / TEMPERATURE_FILE).read_text())["temperature"] == t


def test_the_exact_probe_run_is_calibrated(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    record = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "run", strategy={"name": "head_only"}))
    assert record["strategy"]["probe"]["method"] == "exact"
    check_calibrated(record, tmp_path / "run")


def test_an_image_run_is_calibrated(tiny_resnet: Path, image_folder: Path, tmp_path: Path) -> None:
    record = graft.train(image_recipe({"name": str(tiny_resnet)}, image_folder, tmp_path / "run",
                                      train={"epochs": 2}))
    check_calibrated(record, tmp_path / "run")


def test_a_language_model_is_not_calibrated(tmp_path: Path) -> None:
    from tests.test_causal_lm import PAIRS, build_tiny_lm, lm_recipe

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS * 2))
    record = graft.train(lm_recipe(build_tiny_lm(tmp_path / "lm"), pairs, tmp_path / "run",
                                   train={"epochs": 1}, eval={"samples": 0}))
    assert "calibration" not in record and "ece" not in record["metrics"]["test"]
    assert not (tmp_path / "run" / "model" / TEMPERATURE_FILE).exists()
    assert "temperature" not in graft.evaluate(tmp_path / "run")


def test_the_report_says_when_no_temperature_was_fitted(run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, run_dir = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model", "report.html"))
    record = json.loads((copy / "run.json").read_text())
    record["calibration"].update(temperature=1.0, note="every validation example is predicted right")
    record["calibration"]["threshold"].update(value=None, why="no validation examples")
    (copy / "run.json").write_text(json.dumps(record))
    page = write_report(copy).read_text()
    assert "No temperature was fitted: every validation example is predicted right." in page
    assert "No confidence threshold is suggested: no validation examples" in page
    assert "Suggested threshold" not in page
