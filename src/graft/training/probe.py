"""The linear probe done exactly: a head that is one Linear layer on frozen, cached features is a multinomial logistic
regression, a convex problem. It is solved to convergence by L-BFGS, once for each L2 strength of a grid, and the
strength is picked on the validation split: no guessed epochs, no guessed learning rate.

Features are standardised for the solver (the penalty then weighs every feature alike) and the scaling is folded
back into the layer's weights, so the model takes raw features as before. Written here because scikit-learn's
LogisticRegression would need the features on the host as float64 and cannot warm-start one strength from the
last on the training device, nor weigh classes and score by graft's metrics in one pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STRENGTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""L2 strengths s of the penalty s/2 * |W|^2 added to the mean cross-entropy (scikit-learn's C=1 is s = 1/n)."""
PASSIVE = (nn.Dropout, nn.Identity, nn.Flatten)
"""Modules a probe's head may hold besides its Linear: they do nothing at evaluation time."""


@dataclass
class ProbeFit:
    strength: float
    """The L2 strength picked on validation."""
    tried: list[dict[str, Any]] = field(default_factory=list)
    """Each strength with its validation metrics and L-BFGS iterations."""
    seconds: float = 0.0


def probe_layer(head: list[nn.Module]) -> nn.Linear | None:
    """The head's one Linear layer when everything else in it is passive; None when the head is more than a linear
    map (a hidden layer, BatchNorm), which trains by the loop instead."""
    linears = [m for module in head for m in module.modules() if isinstance(m, nn.Linear)]
    others = [m for module in head for m in module.modules()
              if not isinstance(m, (nn.Linear, nn.Sequential, nn.ModuleList, *PASSIVE))]
    return linears[0] if len(linears) == 1 and not others else None


def fit_probe(layer: nn.Linear, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
              score: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]], metric: str, mode: str,
              class_weights: list[float] | None = None, strengths: tuple[float, ...] = STRENGTHS) -> ProbeFit:
    """Fit `layer` on train (features, labels) for each strength, keep the one whose validation `metric` (from
    `score(logits, labels)`) is best; ties go to the stronger penalty. The layer ends with that fit."""
    started = time.perf_counter()
    x, y = train
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs, vs = (x - mean) / std, (val[0] - mean) / std
    weight = torch.zeros_like(layer.weight, dtype=torch.float32, requires_grad=True)
    bias = torch.zeros(layer.out_features, dtype=torch.float32, device=x.device, requires_grad=True)
    table = torch.tensor(class_weights, device=x.device) if class_weights else None
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    fit = ProbeFit(strengths[0])
    for strength in sorted(strengths, reverse=True):  # strong to weak: each warm-starts the next
        iterations = _solve(weight, bias, xs, y, strength, table)
        with torch.no_grad():
            metrics = score(vs @ weight.T + bias, val[1])
        value = metrics[metric]
        fit.tried.append({"l2": strength, "iterations": iterations, **metrics})
        better = best is None or (value < best[0] if mode == "min" else value > best[0])
        if better:
            best, fit.strength = (value, {"weight": weight.detach().clone(), "bias": bias.detach().clone()}), strength
    assert best is not None
    with torch.no_grad():  # fold the standardisation into the layer: W' = W / std, b' = b - W' . mean
        folded = best[1]["weight"] / std
        layer.weight.copy_(folded.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_((best[1]["bias"] - folded @ mean).to(layer.bias.dtype))
    fit.seconds = time.perf_counter() - started
    return fit


def _solve(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, strength: float,
           table: torch.Tensor | None) -> int:
    """Minimise mean (weighted) cross-entropy + strength/2 |W|^2 by L-BFGS with a strong-Wolfe line search."""
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, tolerance_grad=1e-5, tolerance_change=1e-9,
                               history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        solver.zero_grad()
        losses = F.cross_entropy(x @ weight.T + bias, y, reduction="none")
        if table is not None:
            losses = losses * table[y]
        loss = losses.mean() + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    solver.step(objective)
    return int(solver.state[solver._params[0]].get("n_iter", 0))
