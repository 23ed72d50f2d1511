"""The run directory contract (SPEC §5) through the Python API, and the loop's stopping rules.

One 10-epoch run of the tiny BERT on three balanced synthetic classes is shared by the contract tests; the loop
tests (early stopping, evaluation every N steps, bf16 on CPU, divergence) train their own few steps.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import graft
from graft.errors import GraftError
from graft.training.loop import NonFiniteError
from tests.conftest import KEYWORDS, make_texts, tiny_recipe, write_csv

LABELS = sorted(KEYWORDS)
BATCH = 8  # tiny_recipe's train.batch_size


@pytest.fixture(scope="module")
def run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A completed 10-epoch run: (the returned record, its run directory)."""
    root = tmp_path_factory.mktemp("record")
    data = write_csv(root / "train.csv", make_texts(120, seed=1))
    record = graft.train(tiny_recipe(tiny_bert, data, root / "run", train={"epochs": 10}))
    return record, root / "run"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 examples: 51 train, so 7 optimiser steps per epoch (7 is not a multiple of 3)."""
    return write_csv(tmp_path_factory.mktemp("small") / "train.csv", make_texts(75, seed=4))


def steps_of(record: dict[str, Any], split: str) -> list[int]:
    return [h["step"] for h in record["metrics"]["history"] if h["split"] == split]


def steps_per_epoch(record: dict[str, Any]) -> int:
    return math.ceil(record["data"]["sizes"]["train"] / BATCH)


def test_run_json_holds_the_record_with_the_contract_keys(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(record, default=str))
    assert on_disk["status"] == "completed"
    assert on_disk["stopped"] is None
    assert isinstance(on_disk["recipe"], dict) and on_disk["recipe"]["train"]["epochs"] == 10
    test = on_disk["metrics"]["test"]
    for key in ("accuracy", "f1_macro"):
        assert isinstance(test[key], float) and 0.0 <= test[key] <= 1.0, key
    assert test["n"] == on_disk["data"]["sizes"]["test"] > 0
    assert isinstance(on_disk["metrics"]["history"], list) and on_disk["metrics"]["history"]
    assert all(isinstance(on_disk["params"][k], int) for k in ("total", "trainable"))
    assert isinstance(on_disk["timings"]["train_s"], float) and on_disk["timings"]["train_s"] > 0
    assert isinstance(on_disk["peak_memory_mb"], float) and on_disk["peak_memory_mb"] > 0
    assert on_disk["data"]["labels"] == LABELS


def test_full_strategy_trains_every_parameter_of_the_model(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    count = sum(p.numel() for p in model.parameters())
    assert record["params"] == {"total": count, "trainable": count}


def test_history_has_train_and_validation_records_and_the_loss_fell(run: tuple[dict[str, Any], Path]) -> None:
    record, _ = run
    history = record["metrics"]["history"]
    assert {h["split"] for h in history} == {"train", "validation"}
    per_epoch = steps_per_epoch(record)
    assert steps_of(record, "validation") == [per_epoch * e for e in range(1, 11)]
    assert steps_of(record, "train")[-1] == record["timings"]["steps"] == 10 * per_epoch
    for h in history:
        assert math.isfinite(h["loss"]) and isinstance(h["epoch"], float)
    train_losses = [h["loss"] for h in history if h["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    val = [h for h in history if h["split"] == "validation"]
    assert all(0.0 <= h["accuracy"] <= 1.0 and "f1_macro" in h for h in val)
    assert val[-1]["loss"] < val[0]["loss"]


def test_metrics_jsonl_has_one_line_per_history_record(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == record["metrics"]["history"]


def test_recipe_yaml_is_the_resolved_recipe_and_round_trips(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    path = run_dir / "recipe.yaml"
    assert yaml.safe_load(path.read_text()) == record["recipe"]
    reloaded = graft.load_recipe(path)
    assert reloaded.dump() == record["recipe"]
    assert (reloaded.optim.lr, reloaded.train.epochs, reloaded.output.dir) == (3e-3, 10, run_dir)


def test_saved_model_loads_with_plain_transformers_and_agrees_with_predict(run: tuple[dict[str, Any], Path],
                                                                         tmp_path: Path) -> None:
    _, run_dir = run
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}

    texts = [text for text, _ in make_texts(11, seed=21)]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    rows = graft.predict(run_dir, str(source))
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    expected = torch.softmax(logits.double(), dim=-1).numpy()

    assert [r["text"] for r in rows] == texts
    got = [[r["probabilities"][label] for label in LABELS] for r in rows]
    np.testing.assert_allclose(np.array(got), expected, rtol=0, atol=1e-5)
    assert [r["label"] for r in rows] == [LABELS[i] for i in expected.argmax(axis=1)]


def test_evaluate_without_data_gives_the_run_test_metrics(run: tuple[dict[str, Any], Path]) -> None:
    record, run_dir = run
    test = record["metrics"]["test"]
    again = graft.evaluate(run_dir)
    assert again.keys() == test.keys()
    assert again["n"] == test["n"]
    assert again["per_class"] == test["per_class"]
    assert again["confusion_matrix"] == test["confusion_matrix"]
    scalars = [k for k, v in test.items() if isinstance(v, float)]
    assert {k: again[k] for k in scalars} == pytest.approx({k: test[k] for k in scalars}, rel=1e-6, abs=1e-7)


def test_the_task_is_learnt_well_above_chance(run: tuple[dict[str, Any], Path]) -> None:
    record, _ = run
    test = record["metrics"]["test"]
    assert test["accuracy"] >= 0.7  # chance is 1/3
    assert test["f1_macro"] >= 0.7


def test_early_stopping_stops_after_the_second_evaluation(tiny_bert: Path, small_data: Path, tmp_path: Path) -> None:
    # min_delta 10 on f1_macro: only the first evaluation can count as an improvement.
    record = graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "run", train={"epochs": 10},
                                     eval={"patience": 1, "min_delta": 10}))
    per_epoch = steps_per_epoch(record)
    assert record["status"] == "completed"
    assert record["stopped"] == "early_stopping"
    assert steps_of(record, "validation") == [per_epoch, 2 * per_epoch]
    assert record["timings"]["steps"] == 2 * per_epoch
    assert record["best"]["step"] == per_epoch
    assert record["metrics"]["validation"]["step"] == per_epoch


def test_eval_every_steps_evaluates_at_multiples_and_at_the_end(tiny_bert: Path, small_data: Path,
                                                                 tmp_path: Path) -> None:
    record = graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "run", train={"epochs": 2},
                                     eval={"every_steps": 3}))
    total, per_epoch = record["timings"]["steps"], steps_per_epoch(record)
    assert (total, per_epoch) == (14, 7)  # the layout this test relies on: epoch ends are not multiples of 3
    assert steps_of(record, "validation") == [3, 6, 9, 12, 14]


def test_bf16_trains_on_cpu_with_finite_losses(tiny_bert: Path, small_data: Path, tmp_path: Path) -> None:
    record = graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "run", train={"epochs": 1,
                                                                                      "precision": "bf16"}))
    assert record["status"] == "completed"
    assert record["environment"]["mixed_precision"] == "bf16"
    losses = [h["loss"] for h in record["metrics"]["history"]]
    assert steps_of(record, "train") and steps_of(record, "validation")
    assert all(math.isfinite(loss) for loss in [*losses, record["metrics"]["test"]["loss"]])


def test_precision_can_change_between_runs_in_one_process(tiny_bert: Path, small_data: Path, tmp_path: Path) -> None:
    graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "fp32", train={"epochs": 1}))
    record = graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "bf16", train={"epochs": 1,
                                                                                       "precision": "bf16"}))
    assert record["environment"]["mixed_precision"] == "bf16"


def test_divergence_stops_with_a_loadable_checkpoint(tiny_bert: Path, small_data: Path, tmp_path: Path) -> None:
    # SGD at lr 1e4 with no clipping blows up within a few steps (step 5 on this data); a checkpoint every step
    # means a finite one exists when it does.
    recipe = tiny_recipe(tiny_bert, small_data, tmp_path / "run", optim={"name": "sgd", "lr": 1e4,
                                                                         "weight_decay": 0.01},
                         train={"max_grad_norm": None}, checkpoint={"every_steps": 1})
    with pytest.raises(NonFiniteError) as caught:
        graft.train(recipe)
    assert isinstance(caught.value, GraftError)
    message = str(caught.value)
    assert "\n" not in message
    assert "diverged" in message and "optim.lr" in message and "train.max_grad_norm" in message
    found = re.search(r"^step (\d+): .* the last good checkpoint is (.+?)\. Lower", message)
    assert found, message
    failed_step, checkpoint = int(found[1]), Path(found[2])
    assert checkpoint.parent == tmp_path / "run" / "checkpoints"
    assert json.loads((checkpoint / "loop_state.json").read_text())["step"] == failed_step - 1
    with safe_open(checkpoint / "model.safetensors", framework="pt") as f:
        assert any(key.startswith("classifier.") for key in f.keys())  # noqa: SIM118 (safe_open is no dict)
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["error"] == message
    assert record["progress"]["step"] == failed_step - 1


@pytest.mark.parametrize(("flags", "expected"), [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                                ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(flags, expected, monkeypatch):
    from graft.training import precision

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    precision.auto_precision.cache_clear()
    try:
        assert precision.resolve_precision("auto") == expected
        assert precision.resolve_precision("fp32") == "fp32"
        choice = precision.precision_choice("auto")
        assert choice["used"] == expected and "auto" in choice["why"]
    finally:
        precision.auto_precision.cache_clear()


def test_the_run_says_which_precision_and_why(tiny_bert: Path, small_data: Path, tmp_path: Path, capsys) -> None:
    from graft.training.precision import auto_precision

    record = graft.train(tiny_recipe(tiny_bert, small_data, tmp_path / "run", train={"epochs": 1,
                                                                                      "precision": "auto"}))
    used, why = auto_precision()
    assert record["precision"] == {"used": used, "why": f"train.precision: auto, and {why}"}
    assert record["environment"]["mixed_precision"] == {"fp32": "no"}.get(used, used)
    assert f"precision: {used} (train.precision: auto, and {why})" in capsys.readouterr().err
