"""Skewed classes, handled and never hidden: a warning, class weights in the loss, a majority baseline beside every
evaluation, and a model that answers one class flagged in the run, the report and a comparison's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graft
from graft.compare import judge
from graft.errors import GraftError
from graft.evaluation.metrics import classification_metrics
from graft.pipeline import model_warnings
from graft.report.page import render
from graft.tasks.classification import class_weights, weighted_cross_entropy
from tests.conftest import make_texts, tiny_recipe, write_csv
from tests.test_compare import _row


def test_every_evaluation_carries_the_majority_baseline_and_flags_one_class():
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import f1_score

    labels = np.array([0, 0, 0, 1, 2, 0])
    logits = np.tile([2.0, 0.0, 0.0], (6, 1))  # always class 0
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((6, 1)), labels).predict(np.zeros((6, 1)))
    assert m["baseline_accuracy"] == pytest.approx(4 / 6)
    assert m["baseline_f1_macro"] == pytest.approx(f1_score(labels, dummy, average="macro", labels=[0, 1, 2]))
    assert m["one_class"] == "a"
    logits[3] = [0.0, 3.0, 0.0]
    assert classification_metrics(logits, labels, ["a", "b", "c"])["one_class"] is None
    single = classification_metrics(np.tile([1.0, 0.0], (3, 1)), np.zeros(3, int), ["a", "b"])
    assert single["one_class"] is None  # a set with one class: answering it is right, not degenerate


def test_class_weights_auto_none_and_given():
    weights, why = class_weights("auto", {"ham": 87, "spam": 13})
    assert weights == pytest.approx({"ham": 100 / (2 * 87), "spam": 100 / (2 * 13)}) and "auto" in why
    assert class_weights("auto", {"a": 21, "b": 22, "c": 21})[0] is None  # nearly balanced: no weighting
    assert class_weights("none", {"ham": 87, "spam": 13})[0] is None
    assert class_weights({"spam": 4}, {"ham": 87, "spam": 13})[0] == {"ham": 1.0, "spam": 4.0}
    with pytest.raises(GraftError, match=r"loss.class_weights: unknown label 'spma'; the labels are ham, spam"):
        class_weights({"spma": 4}, {"ham": 87, "spam": 13})


def test_the_weighted_loss_averages_over_examples_so_split_batches_add_up():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    loss = weighted_cross_entropy([0.6, 2.5])
    out = type("Out", (), {"logits": logits})
    whole = loss({"labels": labels}, out)
    expected = (torch.tensor([0.6, 2.5])[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
    assert whole == pytest.approx(expected.item())
    halves = [loss({"labels": labels[i:i + 4]}, type("Out", (), {"logits": logits[i:i + 4]})) for i in (0, 4)]
    assert whole == pytest.approx(((halves[0] + halves[1]) / 2).item())  # what DDP's averaging gives


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> Path:
    rows = make_texts(120, seed=9, labels=("billing", "delivery"))
    kept = [r for r in rows if r[1] == "billing"] + [r for r in rows if r[1] == "delivery"][:12]  # 60 : 12
    return write_csv(tmp_path_factory.mktemp("skewed") / "train.csv", kept)


def test_a_skewed_run_warns_weights_its_loss_and_records_why(tiny_bert, skewed, tmp_path, capsys):
    record = graft.train(tiny_recipe(tiny_bert, skewed, tmp_path / "run", train={"epochs": 1}))
    err = capsys.readouterr().err
    sizes = record["data"]["class_counts"]
    n = sum(sizes.values())
    assert n == record["data"]["sizes"]["train"]
    share, ratio = sizes["billing"] / n, sizes["billing"] / sizes["delivery"]
    assert (f"warning: data.train: the classes are skewed (billing {share:.0%}, delivery {1 - share:.0%}; "
            f"{ratio:.1f}:1 largest to smallest)") in err
    weights = record["loss"]["class_weights"]
    assert weights == pytest.approx({k: n / (2 * c) for k, c in sizes.items()})
    assert "loss: class weights billing" in err
    assert any("skewed" in w for w in record["data"]["warnings"])
    validation = [h for h in record["metrics"]["history"] if h["split"] == "validation"]
    assert all("baseline_accuracy" in h and "baseline_f1_macro" in h for h in validation)
    unweighted = graft.train(tiny_recipe(tiny_bert, skewed, tmp_path / "none", train={"epochs": 1},
                                         loss={"class_weights": "none"}))
    assert unweighted["loss"]["class_weights"] is None
    first = next(h["loss"] for h in record["metrics"]["history"] if h["split"] == "train")
    plain = next(h["loss"] for h in unweighted["metrics"]["history"] if h["split"] == "train")
    assert first != pytest.approx(plain)  # the same batches, another loss


def test_one_class_is_flagged_in_the_record_the_report_and_the_cli(tiny_bert, skewed, tmp_path):
    metrics = {"one_class": "billing", "baseline_accuracy": 0.83}
    [warning] = model_warnings(metrics)
    assert warning.startswith("the model answers 'billing' for every test example")
    record = json.loads(json.dumps({
        "recipe": graft.load_recipe(tiny_recipe(tiny_bert, skewed, tmp_path / "r")).dump(), "status": "completed",
        "data": {"labels": ["billing", "delivery"], "sizes": {"train": 1, "validation": 1, "test": 1}},
        "metrics": {"test": {"accuracy": 0.83, "f1_macro": 0.45, "baseline_accuracy": 0.83,
                             "baseline_f1_macro": 0.45}, "history": []},
        "warnings": [warning]}))
    page = render(record, tmp_path)
    assert "One class only." in page and "majority baseline: accuracy" in page
    assert model_warnings({"one_class": None}) == []


def test_compare_never_ranks_a_one_class_strategy():
    constant = {**_row("probe", "head_only", 0.87), "one_class": "ham"}
    real = _row("full", "full", 0.85)
    result = judge([constant, real, _row("lora", "lora", 0.84)], "accuracy")
    assert result["leader"] == "full" and "probe" not in result["ties"] and result["one_class"] == ["probe"]
    assert any(line.startswith("probe answers 'ham' for every test example: not a model") for line in
               result["verdict"])
    alone = judge([constant, {**real, "one_class": "ham"}], "accuracy")
    assert alone["winner"] is None and alone["verdict"][-1] == "no strategy has a test accuracy from a real model"
