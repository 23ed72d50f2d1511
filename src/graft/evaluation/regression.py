"""Regression metrics in the targets' own units, per target and averaged, and the mean predictor's beside them."""

from __future__ import annotations

from typing import Any

import numpy as np

PER_TARGET = ("mse", "rmse", "mae", "r2", "pearson", "spearman")


def regression_metrics(predicted: np.ndarray, truth: np.ndarray, names: list[str],
                       loss: float | None = None) -> dict[str, Any]:
    """MSE, RMSE, MAE, R², Pearson and Spearman of (n, t) predictions against (n, t) targets: each target's under
    `per_target`, and their mean over the targets at the top level (None where a target's is undefined: a constant
    column has no correlation). `loss`: the MSE of the standardised targets, what training minimises."""
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    per_target = {name: _scores(predicted[:, j], truth[:, j]) for j, name in enumerate(names)}
    out: dict[str, Any] = {"n": len(truth)}
    if loss is not None:
        out["loss"] = float(loss)
    for metric in PER_TARGET:
        values = [scores[metric] for scores in per_target.values()]
        out[metric] = None if any(v is None for v in values) else float(np.mean(values))
    out["per_target"] = per_target
    return out


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    from scipy.stats import pearsonr, spearmanr

    error = p - y
    mse = float(np.mean(error ** 2)) if len(y) else None
    spread = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    varied = len(y) > 1 and np.ptp(p) > 0 and np.ptp(y) > 0
    return {"mse": mse, "rmse": None if mse is None else mse ** 0.5,
            "mae": float(np.mean(np.abs(error))) if len(y) else None,
            "r2": 1.0 - float(np.sum(error ** 2)) / spread if spread > 0 else None,
            "pearson": float(pearsonr(p, y)[0]) if varied else None,
            "spearman": float(spearmanr(p, y)[0]) if varied else None}


def mean_baseline(truth: np.ndarray, train_mean: list[float], names: list[str]) -> dict[str, Any]:
    """What answering the training mean of each target for every example scores (`baseline_<metric>`): the
    regression's no-information model; its correlations are undefined, so only the errors and R² are given."""
    truth = np.asarray(truth, np.float64)
    constant = np.broadcast_to(np.asarray(train_mean, np.float64), truth.shape)
    scores = regression_metrics(constant, truth, names)
    return {f"baseline_{m}": scores[m] for m in ("mse", "rmse", "mae", "r2")}


def beats_baseline(test: dict[str, Any]) -> bool | None:
    """Whether the model's RMSE is below the mean predictor's (None: no baseline in `test`)."""
    if test.get("rmse") is None or test.get("baseline_rmse") is None:
        return None
    return test["rmse"] < test["baseline_rmse"]


def largest_errors(predicted: np.ndarray, truth: np.ndarray, names: list[str], inputs: list[str],
                   limit: int = 10) -> list[dict[str, Any]]:
    """The test examples the model is furthest off on (by the error in standard deviations of the targets, summed
    over the targets when there are several), largest first."""
    if len(inputs) != len(truth) or not len(truth):
        return []
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    scale = truth.std(axis=0)
    scale[scale == 0] = 1.0
    size = np.abs((predicted - truth) / scale).sum(axis=1)
    order = np.argsort(-size, kind="stable")[:limit]
    return [{"input": inputs[i], "target": dict(zip(names, map(float, truth[i]), strict=True)),
             "predicted": dict(zip(names, map(float, predicted[i]), strict=True))} for i in order]
