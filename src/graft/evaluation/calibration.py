"""Whether a classifier's confidence can be trusted: calibration scores, temperature scaling, and what answering only
when confident would give (coverage against accuracy, a suggested confidence threshold). Numpy only, no torch.

The expected calibration error is written here because no dependency of graft computes it (torchmetrics'
MulticlassCalibrationError is the tests' reference); NLL comes from the log-softmax (exact where scikit-learn's
log_loss clips probabilities), the Brier score from scikit-learn, the temperature from scipy's bounded search.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import GraftError
from graft.evaluation.metrics import softmax

N_BINS = 15
"""Equal-width confidence bins of the expected calibration error and the reliability diagram."""
T_BOUNDS = (0.05, 20.0)
"""The temperatures searched: wide enough for any model we have seen (fine-tuned transformers fit 1-3), bounded so
an odd validation set cannot send the probabilities to 0/1 or to uniform."""
MIN_ANSWERED = 0.1
"""A suggested threshold must leave the model answering at least this share of validation: a threshold that
answers a handful of examples reaches any accuracy by luck."""
CURVE_POINTS = 50
"""Points of the coverage-accuracy curve kept in the record (coverage from 2% to 100% in even steps)."""
TEMPERATURE_FILE = "calibration.json"
"""In the final model folder, so the temperature travels with the model (exports copy it)."""


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true labels (natural log)."""
    from scipy.special import log_softmax

    return float(-log_softmax(logits, axis=-1)[np.arange(len(labels)), labels].mean())


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each example's top-class probability, and whether that class is its label."""
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: the mean over examples of sum over classes of (p - one-hot)^2, in [0, 2] (Brier's
    own definition; for two classes it is twice scikit-learn's usual binary score)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(labels, probs, labels=list(range(probs.shape[1])), scale_by_half=False))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """The top-label confidence of probabilities (n, k) against class ids, binned (see `binned`)."""
    return binned(*confidence_and_correct(probs, labels), n_bins)


def binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Confidences in `n_bins` equal-width bins [i/n, (i+1)/n) (confidence 1 in the last): each bin's bounds,
    example count, mean confidence and accuracy (None for an empty bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        inside = index == i
        count = int(inside.sum())
        bins.append({"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return bins


def ece_of_bins(bins: list[dict[str, Any]]) -> float:
    """Expected calibration error (L1): the count-weighted mean gap between each bin's accuracy and confidence."""
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) if total else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    return float(ece_of_bins(reliability_bins(probs, labels, n_bins)))


def calibration_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """ECE, NLL and Brier score of logits (n, k) against class ids (n,); None for no examples."""
    if not len(labels):
        return {"ece": None, "nll": None, "brier": None}
    probs = softmax(logits)
    return {"ece": expected_calibration_error(probs, labels), "nll": nll(logits, labels),
            "brier": brier(probs, labels)}


def fit_temperature(logits: np.ndarray, labels: np.ndarray | None) -> tuple[float, str | None]:
    """The T > 0 that minimises the NLL of softmax(logits / T), searched on log T within T_BOUNDS; and a note when
    it could not be fitted (T = 1 then)."""
    from scipy.optimize import minimize_scalar

    if labels is None or not len(labels):
        return 1.0, "no validation examples to fit a temperature on: T = 1 (the model's own probabilities)"
    if np.all(logits.argmax(axis=1) == labels):
        # NLL then falls without bound as T -> 0: the split says nothing about how sure the model should be.
        return 1.0, ("every validation example is predicted right, so the validation loss keeps falling as the "
                     "probabilities sharpen and no temperature minimises it: T = 1 (the model's own probabilities)")
    logits = np.asarray(logits, dtype=np.float64)
    found = minimize_scalar(lambda log_t: nll(logits / math.exp(log_t), labels), method="bounded",
                            bounds=tuple(math.log(t) for t in T_BOUNDS), options={"xatol": 1e-5})
    t = float(math.exp(found.x))
    if nll(logits / t, labels) > nll(logits, labels):  # cannot happen for a unimodal NLL; kept as a guard
        return 1.0, "the temperature search found nothing better than T = 1"
    low, high = T_BOUNDS
    if t < low * 1.01 or t > high * 0.99:
        return t, f"the fitted temperature sits at the bound of the search ({low:g} to {high:g})"
    return t, None


def scaled_summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """ECE, NLL, Brier score and accuracy: the before/after numbers of the record."""
    accuracy = float(np.mean(logits.argmax(axis=1) == labels)) if len(labels) else None
    return {**calibration_scores(logits, labels), "accuracy": accuracy}


def coverage_curve(probs: np.ndarray, labels: np.ndarray, points: int = CURVE_POINTS) -> list[dict[str, float]]:
    """Accuracy if the model only answers when its confidence >= p, for thresholds p at even steps of coverage (the
    confidence of the k-th surest example): each point's threshold, coverage (share answered) and accuracy, in
    order of rising threshold."""
    n = len(labels)
    if not n:
        return []
    confidence, correct = confidence_and_correct(probs, labels)
    surest_first = np.sort(confidence)[::-1]
    ks = np.unique(np.ceil(np.linspace(1 / points, 1.0, points) * n).astype(int))
    curve = {}
    for k in ks:
        threshold = float(surest_first[k - 1])
        answered = confidence >= threshold
        curve[threshold] = {"threshold": threshold, "coverage": float(answered.mean()),
                            "accuracy": float(correct[answered].mean())}
    return sorted(curve.values(), key=lambda point: point["threshold"])


def answered(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Coverage and accuracy when the model answers only at confidence >= `threshold`."""
    confidence, correct = confidence_and_correct(probs, labels)
    kept = confidence >= threshold
    return {"coverage": float(kept.mean()) if len(labels) else None,
            "accuracy": float(correct[kept].mean()) if kept.any() else None}


def suggest_threshold(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                      test_labels: np.ndarray) -> dict[str, Any]:
    """The confidence threshold that halves the model's mistakes: on validation, the smallest p at which the
    answered examples reach target = accuracy + (1 - accuracy) / 2 while at least MIN_ANSWERED of them are
    answered; then what that threshold gives on test (chosen on one split, measured on another)."""
    rule = ("the smallest confidence threshold at which the answered validation examples reach half the error rate "
            f"of answering everything, answering at least {MIN_ANSWERED:.0%} of them; measured on test")
    out: dict[str, Any] = {"rule": rule, "value": None, "target_accuracy": None, "validation": None, "test": None}
    if not len(val_labels):
        return {**out, "why": "no validation examples"}
    confidence, correct = confidence_and_correct(val_probs, val_labels)
    target = float(correct.mean()) + (1.0 - float(correct.mean())) / 2
    out["target_accuracy"] = target
    order = np.argsort(confidence, kind="stable")
    rising, right_from = confidence[order], np.concatenate([np.cumsum(correct[order][::-1])[::-1], [0]])
    thresholds = np.unique(rising)
    start = np.searchsorted(rising, thresholds, side="left")  # the answered examples at each threshold: start..n
    n_answered = len(rising) - start
    ok = (n_answered >= MIN_ANSWERED * len(rising)) & (right_from[start] / n_answered >= target - 1e-12)
    if ok.any():
        threshold = float(thresholds[np.argmax(ok)])  # the smallest that qualifies: it answers the most
        return {**out, "value": threshold, "validation": answered(val_probs, val_labels, threshold),
                "test": answered(test_probs, test_labels, threshold)}
    return {**out, "why": f"no threshold answering at least {MIN_ANSWERED:.0%} of validation reaches accuracy "
                          f"{target:.3f}"}


def top_half(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Accuracy on the 50% most confident examples against the accuracy on all: what confidence is worth."""
    if not len(labels):
        return {"accuracy": None, "overall": None, "margin": None}
    confidence, correct = confidence_and_correct(probs, labels)
    surest = np.argsort(-confidence, kind="stable")[: max(1, len(labels) // 2)]
    overall, best = float(correct.mean()), float(correct[surest].mean())
    return {"accuracy": best, "overall": overall, "margin": best - overall}


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray | None, test_logits: np.ndarray,
              test_labels: np.ndarray) -> dict[str, Any]:
    """The record's `calibration`: the temperature fitted on validation, ECE/NLL/Brier/accuracy before and after
    scaling on test (and on validation), the reliability bins before and after, and, with the scaled probabilities
    on test, the coverage-accuracy curve, the accuracy of the surest half and a suggested confidence threshold."""
    val_labels = np.zeros(0, dtype=int) if val_labels is None else np.asarray(val_labels).astype(int)
    test_labels = np.asarray(test_labels).astype(int)
    val_logits, test_logits = (np.asarray(x, dtype=np.float64) for x in (val_logits, test_logits))
    t, note = fit_temperature(val_logits, val_labels)
    test_probs = softmax(test_logits / t)
    val_probs = softmax(val_logits / t) if len(val_labels) else np.zeros((0, test_logits.shape[1]))
    return {
        "temperature": t,
        "method": (f"temperature scaling: one T > 0 dividing the logits, fitted by minimising the validation NLL "
                   f"(bounded search over log T, T in [{T_BOUNDS[0]:g}, {T_BOUNDS[1]:g}])"),
        "fitted_on": {"split": "validation", "n": len(val_labels)},
        "note": note,
        "n_bins": N_BINS,
        "before": scaled_summary(test_logits, test_labels),
        "after": scaled_summary(test_logits / t, test_labels),
        "validation": {"before": scaled_summary(val_logits, val_labels),
                       "after": scaled_summary(val_logits / t, val_labels)},
        "reliability": {"before": reliability_bins(softmax(test_logits), test_labels),
                        "after": reliability_bins(test_probs, test_labels)},
        "coverage": coverage_curve(test_probs, test_labels),
        "top_half": top_half(test_probs, test_labels),
        "threshold": suggest_threshold(val_probs, val_labels, test_probs, test_labels),
    }


def write_temperature(folder: Path, calibration: dict[str, Any]) -> Path:
    """The fitted temperature beside the model's weights, where `graft eval`, `graft predict` and exports find it."""
    from graft.files import write_json

    return write_json(folder / TEMPERATURE_FILE, {"temperature": calibration["temperature"],
                                                  "fitted_on": calibration["fitted_on"],
                                                  "how": "probabilities = softmax(logits / temperature)"})


def read_temperature(folder: Path) -> float:
    """The temperature stored with a model; 1 (the model's own probabilities) for a model saved without one."""
    path = folder / TEMPERATURE_FILE
    if not path.is_file():
        return 1.0
    try:
        t = json.loads(path.read_text())["temperature"]
    except (ValueError, KeyError, TypeError):
        t = None
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
        raise GraftError(f"{path}: no valid temperature (a positive number under 'temperature'); restore the file, "
                         f"or delete it to use the model's own probabilities")
    return float(t)
