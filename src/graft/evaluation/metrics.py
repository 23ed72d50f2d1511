"""Classification metrics from logits, as a JSON-ready dict; the arithmetic is scikit-learn's."""

from __future__ import annotations

from typing import Any

import numpy as np

SCALAR_METRICS: tuple[str, ...] = (
    "loss",
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "perplexity",
    "token_accuracy",
    "ece",
    "nll",
    "brier",
    "f1_micro",
    "precision_micro",
    "recall_micro",
    "subset_accuracy",
    "hamming_loss",
    "average_precision",
    "mse",
    "rmse",
    "mae",
    "r2",
    "pearson",
    "spearman",
    "precision",
    "recall",
    "f1",
)
LM_METRICS = ("loss", "perplexity", "token_accuracy")
"""What a causal language model is scored on (on response tokens)."""
LM_ONLY_METRICS = ("perplexity", "token_accuracy")
MULTILABEL_METRICS = ("loss", "f1_micro", "f1_macro", "f1_weighted", "precision_micro", "recall_micro",
                      "precision_macro", "recall_macro", "precision_weighted", "recall_weighted", "subset_accuracy",
                      "hamming_loss", "roc_auc", "average_precision")
"""What a multi-label classifier is scored on (graft.evaluation.multilabel)."""
MULTILABEL_ONLY_METRICS = ("f1_micro", "precision_micro", "recall_micro", "subset_accuracy", "hamming_loss",
                           "average_precision")
REGRESSION_METRICS = ("loss", "mse", "rmse", "mae", "r2", "pearson", "spearman")
"""What a regression is scored on (averaged over the targets when there are several; `loss` is the MSE of the
standardised targets, what training minimises)."""
REGRESSION_ONLY_METRICS = REGRESSION_METRICS[1:]
LOWER_IS_BETTER = ("loss", "perplexity", "ece", "nll", "brier", "hamming_loss", "mse", "rmse", "mae")
"""Metrics where a smaller value is better (metric_mode)."""
ENTITY_METRICS = ("loss", "precision", "recall", "f1", "token_accuracy")
"""What a token classifier is scored on: entity-level micro precision, recall and F1, and the share of words whose
tag is right (graft.evaluation.entities)."""
ENTITY_ONLY_METRICS = ("precision", "recall", "f1")


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that are single numbers (or text): no per-class tables, curves or confusion matrices."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


def metric_mode(name: str) -> str:
    """Whether a smaller ("min") or larger ("max") value of the metric `name` is better."""
    return "min" if name in LOWER_IS_BETTER else "max"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities; the row max is subtracted first so large logits cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary AUC of class 1, or one-vs-rest macro AUC; None when some class never occurs in `labels`."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    if k < 2 or len(np.unique(labels)) < k:
        return None
    if k == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(k))))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, label_names: list[str], loss: float | None = None
) -> dict:
    """Accuracy, macro/weighted precision-recall-F1, ROC-AUC, calibration (ECE over 15 bins, NLL, Brier), per-class
    scores and the confusion matrix.

    `logits` is (n, k) raw scores, `labels` (n,) class ids, and `label_names` names the k classes in id order.
    Every value is a plain Python number, list or dict, so the result goes straight into `json.dumps`.
    """
    # Imported here: the recipe reads SCALAR_METRICS and metric_mode from this module, and must load fast.
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from graft.evaluation.calibration import calibration_scores

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    k = len(label_names)
    if logits.ndim != 2 or logits.shape != (len(labels), k):
        raise ValueError(f"logits must be (n={len(labels)}, k={k}), got {logits.shape}")
    ids = list(range(k))
    preds = logits.argmax(axis=1)

    out: dict = {"n": len(labels)}
    if loss is not None:
        out["loss"] = float(loss)
    out["accuracy"] = float(accuracy_score(labels, preds))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=ids, average=average, zero_division=0)
        out |= {f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)}
    out["roc_auc"] = _roc_auc(labels, softmax(logits))
    out |= calibration_scores(logits, labels)
    out |= _majority_baseline(labels, ids)
    predicted = np.unique(preds)
    # A model that answers one class for everything is no model, however its accuracy looks on skewed data.
    out["one_class"] = label_names[int(predicted[0])] if len(predicted) == 1 and len(np.unique(labels)) > 1 else None

    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_names)
    }
    out["confusion_matrix"] = confusion_matrix(labels, preds, labels=ids).tolist()
    return out


def _majority_baseline(labels: np.ndarray, ids: list[int]) -> dict:
    """What answering the most frequent class of this set for every example scores: the accuracy and macro-F1 a
    model must beat to have learnt anything (the no-information rate)."""
    from sklearn.metrics import f1_score

    if not len(labels):
        return {"baseline_accuracy": None, "baseline_f1_macro": None}
    majority = np.bincount(labels, minlength=len(ids)).argmax()
    constant = np.full_like(labels, majority)
    return {"baseline_accuracy": float(np.mean(labels == majority)),
            "baseline_f1_macro": float(f1_score(labels, constant, labels=ids, average="macro", zero_division=0))}


def confident_mistakes(logits: np.ndarray, labels: np.ndarray, names: list[str], inputs: list[str],
                       per_class: int = 3) -> list[dict]:
    """The most confident wrong predictions, up to `per_class` for each true class, surest first: what the model
    is most sure about and wrong on is where label noise and real confusions show."""
    if len(inputs) != len(labels):
        return []  # inputs were dropped on the way (unreadable images skipped): rows would not line up
    probs = softmax(logits) if len(labels) else np.zeros((0, len(names)))
    predicted = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    wrong = [i for i in range(len(labels)) if predicted[i] != labels[i]]
    wrong.sort(key=lambda i: -probs[i, predicted[i]])
    shown: dict[int, int] = {}
    out = []
    for i in wrong:
        true = int(labels[i])
        if shown.get(true, 0) < per_class:
            shown[true] = shown.get(true, 0) + 1
            out.append({"input": inputs[i], "label": names[true], "predicted": names[int(predicted[i])],
                        "confidence": float(probs[i, predicted[i]]), "p_label": float(probs[i, true])})
    return out
