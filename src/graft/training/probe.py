"""The linear probe done exactly: a head that is one Linear layer on frozen, cached features is a multinomial logistic
regression, a convex problem. scikit-learn's LogisticRegression (L-BFGS) solves it to convergence once for each L2
strength of a grid, strong to weak, each fit warm-starting the next, until the validation loss has risen twice past
its best; the strength with the lowest validation loss (a proper scoring rule, far less noisy on a small validation
split than accuracy or F1) is kept. No guessed epochs, no guessed learning rate.

Features are standardised first, so the penalty weighs every feature alike whatever its scale (a CNN's pooled maps
range widely), and the scaling is folded back into the layer's weights: the model takes raw features as before.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

STRENGTHS = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
"""L2 strengths s of the penalty s/2 * |W|^2 (on standardised features) added to the mean cross-entropy, in the
order they are tried; scikit-learn's C is 1 / (s * n)."""
PASSIVE = (nn.Dropout, nn.Identity, nn.Flatten)
"""Modules a probe's head may hold besides its Linear: they do nothing at evaluation time."""


@dataclass
class ProbeFit:
    strength: float
    """The L2 strength picked on validation."""
    tried: list[dict[str, Any]] = field(default_factory=list)
    """Each strength with its validation loss and accuracy and its L-BFGS iterations."""
    seconds: float = 0.0


def probe_layer(head: list[nn.Module]) -> nn.Linear | None:
    """The head's one Linear layer when everything else in it is passive; None when the head is more than a linear
    map (a hidden layer, BatchNorm), which trains by the loop instead."""
    linears = [m for module in head for m in module.modules() if isinstance(m, nn.Linear)]
    others = [m for module in head for m in module.modules()
              if not isinstance(m, (nn.Linear, nn.Sequential, nn.ModuleList, *PASSIVE))]
    return linears[0] if len(linears) == 1 and not others else None


def fit_probe(layer: nn.Linear, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
              class_weights: list[float] | None = None, strengths: tuple[float, ...] = STRENGTHS) -> ProbeFit:
    """Fit `layer` (k outputs) on train (features, labels), keeping the strength with the lowest validation loss;
    ties go to the stronger penalty. The layer ends with that fit."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    started = time.perf_counter()
    x, y = (t.detach().float().cpu().numpy() for t in train)
    xv, yv = (t.detach().float().cpu().numpy() for t in val)
    y, yv = y.astype(int), yv.astype(int)
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    xs, vs = (x - mean) / std, (xv - mean) / std
    k = layer.out_features
    weights = dict(enumerate(class_weights)) if class_weights else None
    model = LogisticRegression(warm_start=True, max_iter=1000, class_weight=weights)
    fit, best = ProbeFit(strengths[0]), None
    for strength in strengths:
        model.set_params(C=1.0 / (strength * len(y)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a weak penalty on separable data: still the best
            model.fit(xs, y)
        probs = model.predict_proba(vs)
        loss = float(log_loss(yv, probs, labels=model.classes_))
        accuracy = float(np.mean(model.classes_[probs.argmax(1)] == yv))
        fit.tried.append({"l2": strength, "iterations": int(np.max(model.n_iter_)), "loss": loss,
                          "accuracy": accuracy})
        if best is None or loss < best[0]:
            best, fit.strength = (loss, *_as_layer(model, k)), strength
        elif len(fit.tried) >= 3 and fit.tried[-2]["loss"] > best[0]:
            break  # the validation loss rose twice past its best: weaker penalties only overfit more (and cost most)
    assert best is not None
    _, weight, bias = best
    with torch.no_grad():  # fold the standardisation into the layer: W' = W / std, b' = b - W' . mean
        folded = weight / std
        layer.weight.copy_(torch.from_numpy(folded).to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(bias - folded @ mean).to(layer.bias))
    fit.seconds = time.perf_counter() - started
    return fit


def _as_layer(model: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as a k-row linear layer: a binary model's one logit z becomes rows (0, z), the
    same softmax; classes missing from train keep zero rows."""
    weight = np.zeros((k, model.coef_.shape[1]))
    bias = np.zeros(k)
    if len(model.classes_) == 2 and model.coef_.shape[0] == 1:
        weight[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        weight[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    return weight, bias
