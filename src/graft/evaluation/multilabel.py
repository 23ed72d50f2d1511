"""Multi-label metrics from logits (each label its own sigmoid), per-label decision thresholds tuned on validation,
and the thresholds file kept beside a model's weights. The arithmetic is scikit-learn's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import GraftError

THRESHOLDS_FILE = "thresholds.json"
"""Beside a multi-label model's weights: each label's decision threshold, which eval and predict use."""
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))


def bce(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary cross-entropy over every (example, label) pair, computed stably from the logits."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))) if x.size else 0.0


def cutoffs(names: list[str], thresholds: dict[str, float] | None) -> np.ndarray:
    """Each label's threshold in label order (0.5 where none is given)."""
    given = thresholds or {}
    return np.array([given.get(name, DEFAULT_THRESHOLD) for name in names], dtype=np.float64)


def multilabel_metrics(logits: np.ndarray, truth: np.ndarray, names: list[str],
                       thresholds: dict[str, float] | None = None, loss: float | None = None) -> dict[str, Any]:
    """Micro/macro/weighted precision-recall-F1, subset accuracy (every label of an example right), Hamming loss (the
    share of wrong (example, label) decisions), macro ROC-AUC and average precision over the labels both classes of
    which occur, and a per-label table; a label is predicted when its probability reaches its threshold."""
    from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(truth).astype(int)
    k = len(names)
    if logits.ndim != 2 or logits.shape != truth.shape or logits.shape[1] != k:
        raise ValueError(f"logits and labels must both be (n, k={k}), got {logits.shape} and {truth.shape}")
    probs = sigmoid(logits)
    predicted = (probs >= cutoffs(names, thresholds)).astype(int)
    out: dict[str, Any] = {"n": len(truth)}
    out["loss"] = float(loss) if loss is not None else bce(logits, truth)
    out["subset_accuracy"] = float(accuracy_score(truth, predicted)) if len(truth) else 0.0
    out["hamming_loss"] = float(hamming_loss(truth, predicted)) if len(truth) else 0.0
    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        out |= {f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)}
    ranked = [_ranking(truth[:, j], probs[:, j]) for j in range(k)]
    aucs = [auc for auc, _ in ranked if auc is not None]
    precisions = [ap for _, ap in ranked if ap is not None]
    out["roc_auc"] = float(np.mean(aucs)) if aucs else None
    out["average_precision"] = float(np.mean(precisions)) if precisions else None
    out["mean_labels"] = {"true": float(truth.sum(1).mean()) if len(truth) else 0.0,
                          "predicted": float(predicted.sum(1).mean()) if len(truth) else 0.0}
    p, r, f, s = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0,
                                                 labels=list(range(k)))
    out["per_label"] = {name: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                               "support": int(s[j]), "roc_auc": ranked[j][0], "average_precision": ranked[j][1],
                               "threshold": float(cutoffs(names, thresholds)[j])}
                        for j, name in enumerate(names)}
    return out


def _ranking(truth: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """One label's ROC-AUC (None unless both classes occur) and average precision (None without positives)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    positives = int(truth.sum())
    if positives == 0:
        return None, None
    auc = float(roc_auc_score(truth, scores)) if positives < len(truth) else None
    return auc, float(average_precision_score(truth, scores))


MIN_TUNING_EXAMPLES = 10
"""A label with fewer positives (or negatives) than this on validation keeps 0.5: on rt-polarity's multi-label set
(examples/multilabel_rt.py) thresholds tuned on three positives lowered the label's test F1 in every run."""


def tune_thresholds(logits: np.ndarray, truth: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each label's threshold maximising its F1 on these (validation) examples: halfway between the lowest score
    predicted positive and the next score below it, so a test score between the two is decided as on validation. A
    label with fewer than MIN_TUNING_EXAMPLES positives or negatives here keeps 0.5 (too little to tune it on)."""
    from sklearn.metrics import precision_recall_curve

    probs = sigmoid(np.asarray(logits, dtype=np.float64))
    truth = np.asarray(truth).astype(int)
    tuned = {}
    for j, name in enumerate(names):
        positives = int(truth[:, j].sum())
        if min(positives, len(truth) - positives) < MIN_TUNING_EXAMPLES:
            tuned[name] = DEFAULT_THRESHOLD
            continue
        precision, recall, cuts = precision_recall_curve(truth[:, j], probs[:, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))  # cuts ascend: the first best is the lowest threshold with the best F1
        below = probs[:, j][probs[:, j] < cuts[best]]
        tuned[name] = float((cuts[best] + below.max()) / 2 if len(below) else cuts[best] / 2)
    return tuned


def thresholds_content(thresholds: dict[str, float]) -> dict[str, Any]:
    """What THRESHOLDS_FILE holds (the run writes it beside the weights when it saves them)."""
    return {"thresholds": thresholds, "tuned_on": "validation", "how": "label predicted when sigmoid(logit) >= its "
            "threshold (each label's F1 maximised on the validation split)"}


def read_thresholds(folder: Path) -> dict[str, float] | None:
    """The thresholds stored with a multi-label model; None when the folder has none (any other model)."""
    path = folder / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())["thresholds"]
        ok = isinstance(values, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                              and math.isfinite(v) and 0 <= v <= 1 for v in values.values())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise GraftError(f"{path}: no valid thresholds (a label -> number in [0, 1] map under 'thresholds'); restore "
                         f"the file, or delete it to decide every label at 0.5")
    return {str(k): float(v) for k, v in values.items()}
