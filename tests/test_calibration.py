"""Calibration arithmetic: ECE, NLL and Brier against torchmetrics and scikit-learn, the temperature fit (recovers a
known temperature, refuses to fit what cannot be fitted), reliability bins, the coverage curve and the suggested
threshold worked out by hand, and the stored temperature's file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.classification import MulticlassCalibrationError

from graft.evaluation.calibration import (
    N_BINS,
    T_BOUNDS,
    TEMPERATURE_FILE,
    brier,
    calibrate,
    calibration_scores,
    coverage_curve,
    ece_of_bins,
    expected_calibration_error,
    fit_temperature,
    nll,
    read_temperature,
    reliability_bins,
    suggest_threshold,
    top_half,
    write_temperature,
)
from graft.evaluation.metrics import classification_metrics, softmax
from tests.conftest import error_of


def over_confident(n: int, k: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_t): calibrated at T = true_t, over-confident at 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3.0, (n, k))
    probs = softmax(logits / true_t)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return logits, labels


def torchmetrics_ece(probs: np.ndarray, labels: np.ndarray) -> float:
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=15, norm="l1")
    return float(metric(torch.from_numpy(probs).float(), torch.from_numpy(labels).long()))


@pytest.mark.parametrize(("k", "scale", "seed"), [(2, 1.0, 0), (3, 3.0, 1), (5, 0.5, 2), (10, 6.0, 3)])
def test_ece_matches_torchmetrics(k: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits, labels = rng.normal(0, scale, (500, k)), rng.integers(0, k, 500)
    logits[np.arange(250), labels[:250]] += 2.0  # half of them mostly right: bins with real accuracy
    probs = softmax(logits)
    ours = expected_calibration_error(probs, labels)
    assert ours == pytest.approx(torchmetrics_ece(probs, labels), abs=1e-5)
    assert classification_metrics(logits, labels, [str(i) for i in range(k)])["ece"] == pytest.approx(ours)


def test_nll_and_brier_match_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    for k in (2, 4):
        logits, labels = rng.normal(0, 2.0, (300, k)), rng.integers(0, k, 300)
        probs = softmax(logits)
        assert nll(logits, labels) == pytest.approx(log_loss(labels, probs, labels=list(range(k))), rel=1e-9)
        onehot = np.eye(k)[labels]
        by_hand = float(np.mean(((probs - onehot) ** 2).sum(axis=1)))  # sum over classes, mean over examples
        assert brier(probs, labels) == pytest.approx(by_hand, rel=1e-9)
        scores = calibration_scores(logits, labels)
        assert scores == pytest.approx({"ece": expected_calibration_error(probs, labels), "nll": nll(logits, labels),
                                        "brier": by_hand})
    # two classes: Brier's sum over both classes is twice the usual positive-class score
    assert brier(probs[:, :2] / probs[:, :2].sum(1, keepdims=True), labels % 2) == pytest.approx(
        2 * brier_score_loss(labels % 2, (probs[:, :2] / probs[:, :2].sum(1, keepdims=True))[:, 1]))


def test_nll_stays_exact_where_probabilities_round_to_zero() -> None:
    logits = np.array([[0.0, 800.0], [5.0, 0.0]])  # the first is confidently wrong: p(true) = e^-800
    assert nll(logits, np.array([0, 0])) == pytest.approx((800.0 + np.log1p(np.exp(-5.0))) / 2)


def test_reliability_bins_by_hand() -> None:
    # confidences 0.95 (right), 0.9 (wrong), 0.55 (right), 1.0 (right): 0.95 and 1.0 share the last bin
    probs = np.array([[0.95, 0.05], [0.1, 0.9], [0.55, 0.45], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 0])
    bins = reliability_bins(probs, labels)
    assert len(bins) == N_BINS and bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    assert sum(b["count"] for b in bins) == 4
    last, ninety, fifty_five = bins[14], bins[13], bins[8]  # [14/15, 1], [13/15, 14/15), [8/15, 9/15)
    assert last["count"] == 2 and last["accuracy"] == 1.0 and last["confidence"] == pytest.approx(0.975)
    assert ninety["count"] == 1 and ninety["accuracy"] == 0.0 and ninety["confidence"] == pytest.approx(0.9)
    assert fifty_five["count"] == 1 and fifty_five["accuracy"] == 1.0
    assert all(b["accuracy"] is None for i, b in enumerate(bins) if i not in (8, 13, 14))
    ece = (2 * 0.025 + 0.9 + 0.45) / 4
    assert ece_of_bins(bins) == pytest.approx(ece)
    assert expected_calibration_error(probs, labels) == pytest.approx(ece)


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at() -> None:
    logits, labels = over_confident(20000, 4, true_t=2.0, seed=5)
    t, note = fit_temperature(logits, labels)
    assert note is None
    assert t == pytest.approx(2.0, rel=0.05)
    assert nll(logits / t, labels) < min(nll(logits / (t * 1.05), labels), nll(logits / (t / 1.05), labels))


def test_under_confidence_gives_a_temperature_below_one() -> None:
    logits, labels = over_confident(5000, 3, true_t=0.5, seed=6)
    t, _ = fit_temperature(logits, labels)
    assert t == pytest.approx(0.5, rel=0.08)


def test_scaling_halves_the_ece_of_an_over_confident_model_on_held_out_data() -> None:
    val_logits, val_labels = over_confident(2000, 3, true_t=2.5, seed=7)
    test_logits, test_labels = over_confident(2000, 3, true_t=2.5, seed=8)
    c = calibrate(val_logits, val_labels, test_logits, test_labels)
    assert c["before"]["ece"] > 0.1
    assert c["after"]["ece"] <= c["before"]["ece"] / 2
    assert c["after"]["nll"] < c["before"]["nll"] and c["after"]["brier"] < c["before"]["brier"]
    assert c["after"]["accuracy"] == c["before"]["accuracy"]
    assert c["validation"]["after"]["nll"] <= c["validation"]["before"]["nll"]
    assert c["reliability"]["after"] == reliability_bins(softmax(test_logits / c["temperature"]), test_labels)
    assert json.loads(json.dumps(c, allow_nan=False)) == c


def test_nothing_is_fitted_where_nothing_can_be() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    t, note = fit_temperature(logits, np.array([0, 1, 0]))  # every one right: the NLL falls forever as T -> 0
    assert t == 1.0 and "every validation example is predicted right" in note
    t, note = fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))
    assert t == 1.0 and "no validation examples" in note
    t, note = fit_temperature(logits, None)
    assert t == 1.0 and note
    # One mistake among many sure answers: fitted, but within the bounds
    sure = np.array([[9.0, 0.0]] * 50 + [[0.0, 0.1]])
    t, _ = fit_temperature(sure, np.zeros(51, dtype=int))
    assert T_BOUNDS[0] <= t <= T_BOUNDS[1]


def test_coverage_curve_by_hand() -> None:
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 0])
    curve = coverage_curve(probs, labels)
    assert [p["threshold"] for p in curve] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert [p["coverage"] for p in curve] == [1.0, 0.75, 0.5, 0.25]
    assert [p["accuracy"] for p in curve] == pytest.approx([0.75, 2 / 3, 0.5, 1.0])
    assert top_half(probs, labels) == pytest.approx({"accuracy": 0.5, "overall": 0.75, "margin": -0.25})


def test_the_suggested_threshold_halves_the_mistakes_on_validation() -> None:
    # validation: accuracy 6/10, so the target is 0.8. From the top: 0.95 r, 0.9 r, 0.85 w, 0.8 r, 0.75 r, 0.7 r,
    # 0.65 w, 0.6 w, 0.55 w, 0.52 r. Answering from 0.7: 5 of 6 right (0.833): the smallest threshold that reaches 0.8
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.52])
    right = np.array([1, 1, 0, 1, 1, 1, 0, 0, 0, 1], dtype=bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    chosen = suggest_threshold(probs, labels, probs[:4], labels[:4])
    assert chosen["target_accuracy"] == pytest.approx(0.8)
    assert chosen["value"] == pytest.approx(0.7)
    assert chosen["validation"] == pytest.approx({"coverage": 0.6, "accuracy": 5 / 6})
    assert chosen["test"] == pytest.approx({"coverage": 1.0, "accuracy": 0.75})
    assert "half the error rate" in chosen["rule"]
    # Never right when sure: no threshold
    none = suggest_threshold(probs, np.where(right, 1, 0), probs, labels)
    assert none["value"] is None and "no threshold" in none["why"]


def test_the_temperature_file(tmp_path: Path) -> None:
    assert read_temperature(tmp_path) == 1.0  # a model saved before calibration existed
    write_temperature(tmp_path, {"temperature": 1.7, "fitted_on": {"split": "validation", "n": 10}})
    assert read_temperature(tmp_path) == 1.7
    for bad in ('{"temperature": -1}', '{"temperature": "hot"}', "{}", "not json", '{"temperature": true}'):
        (tmp_path / TEMPERATURE_FILE).write_text(bad)
        message = error_of(read_temperature, tmp_path)
        assert TEMPERATURE_FILE in message and "delete it" in message
