"""Metrics checked against small cases worked out by hand."""

import json

import numpy as np
import pytest

from graft.evaluation.metrics import (
    ENTITY_ONLY_METRICS,
    LM_METRICS,
    MULTILABEL_ONLY_METRICS,
    REGRESSION_ONLY_METRICS,
    SCALAR_METRICS,
    classification_metrics,
    metric_mode,
    softmax,
)


def one_hot_logits(preds: list[int], k: int) -> np.ndarray:
    """Logits whose argmax is `preds`."""
    return np.eye(k)[preds] * 5.0


def test_three_class_values_by_hand() -> None:
    # true 0,0,0,1,1,2 vs predicted 0,0,1,1,2,2:
    # precision 1, 1/2, 1/2; recall 2/3, 1/2, 1; f1 4/5, 1/2, 2/3; support 3, 2, 1
    labels = np.array([0, 0, 0, 1, 1, 2])
    m = classification_metrics(one_hot_logits([0, 0, 1, 1, 2, 2], 3), labels, ["a", "b", "c"], loss=0.25)
    assert m["n"] == 6
    assert m["loss"] == 0.25
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_macro"] == pytest.approx(2 / 3)
    assert m["recall_macro"] == pytest.approx(13 / 18)
    assert m["f1_macro"] == pytest.approx(59 / 90)
    assert m["precision_weighted"] == pytest.approx(3 / 4)
    assert m["recall_weighted"] == pytest.approx(4 / 6)
    assert m["f1_weighted"] == pytest.approx(61 / 90)
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_binary_auc_uses_class_one_probability() -> None:
    # class-1 scores 0.1, 0.4 (negatives) and 0.35, 0.8 (positives): 3 of 4 pairs ranked right
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    logits = np.stack([np.zeros(4), scores], axis=1)
    m = classification_metrics(logits, np.array([0, 0, 1, 1]), ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(0.75)
    assert "loss" not in m


def test_multiclass_auc_is_one_vs_rest_macro() -> None:
    # rows are probabilities (log + a row shift gives them back); distinct values so no ties.
    # One-vs-rest by pair counting: class 0: 0.22 < 0.30, so 7/8; class 1: 8/8; class 2: 0.45 < 0.50, so 7/8
    probs = np.array(
        [
            [0.70, 0.20, 0.10],
            [0.22, 0.28, 0.50],
            [0.15, 0.60, 0.25],
            [0.30, 0.50, 0.20],
            [0.10, 0.30, 0.60],
            [0.20, 0.35, 0.45],
        ]
    )
    m = classification_metrics(np.log(probs) + 7.0, np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"])
    assert m["roc_auc"] == pytest.approx((7 / 8 + 1 + 7 / 8) / 3)


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 1])),  # binary, one class present
        (np.eye(3)[[0, 1, 0, 1]], np.array([0, 1, 1, 0])),  # multiclass, class 2 absent
    ],
)
def test_auc_is_none_when_undefined(logits: np.ndarray, labels: np.ndarray) -> None:
    names = [str(i) for i in range(logits.shape[1])]
    assert classification_metrics(logits, labels, names)["roc_auc"] is None


def test_absent_classes_keep_their_row_and_column() -> None:
    m = classification_metrics(one_hot_logits([0, 1, 3], 4), np.array([0, 1, 1]), ["w", "x", "y", "z"])
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def plain_types_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_types_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_types_only(v) for v in value)
    return value is None or type(value) in (int, float, str)


def test_result_is_json_serialisable() -> None:
    rng = np.random.default_rng(0)
    m = classification_metrics(rng.normal(size=(20, 3)), rng.integers(0, 3, 20), ["a", "b", "c"], loss=np.float32(1.5))
    assert plain_types_only(m)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    # every classification metric (LM, multi-label, regression and entity ones are separate)
    others = {*LM_METRICS, *MULTILABEL_ONLY_METRICS, *REGRESSION_ONLY_METRICS, *ENTITY_ONLY_METRICS}
    assert set(SCALAR_METRICS) - others <= set(m)


def test_softmax_is_stable_on_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 1000.0, 0.0], [-1000.0, -1000.0, -1000.0], [1e4, -1e4, 0.0]]))
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[:2], [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    m = classification_metrics(np.array([[1e4, 0.0], [0.0, 1e4]]), np.array([0, 1]), ["a", "b"])
    assert m["roc_auc"] == 1.0


def test_metric_mode() -> None:
    lower = ("loss", "perplexity", "ece", "nll", "brier", "hamming_loss", "mse", "rmse", "mae")
    assert all(metric_mode(name) == "min" for name in lower)
    assert all(metric_mode(name) == "max" for name in SCALAR_METRICS if name not in lower)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="logits must be"):
        classification_metrics(np.zeros((3, 2)), np.array([0, 1, 0]), ["a", "b", "c"])
