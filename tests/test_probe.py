"""The exact linear probe: the convex problem solved to convergence, its L2 strength picked on validation, as good
as scikit-learn's LogisticRegression on the same features; only for heads that are one linear map."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from graft.training.probe import fit_probe, probe_layer


def synthetic(seed: int, n: int = 1200, d: int = 32, k: int = 3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k))
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)  # badly scaled, as raw features are
    y = (x / np.abs(x).mean(0) @ w + rng.normal(scale=2.0, size=(n, k))).argmax(1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_the_probe_matches_scikit_learn_on_held_out_data():
    from sklearn.linear_model import LogisticRegression

    ours, theirs = [], []
    for seed in (0, 1, 2):
        x, y = synthetic(seed)
        train, val, test = slice(0, 700), slice(700, 900), slice(900, None)
        layer = nn.Linear(32, 3)
        fit = fit_probe(layer, (x[train], y[train]), (x[val], y[val]))
        assert 3 <= len(fit.tried) <= 7 and fit.strength == min(fit.tried, key=lambda t: t["loss"])["l2"]
        after = [t["loss"] for t in fit.tried][[t["l2"] for t in fit.tried].index(fit.strength):]
        assert len(fit.tried) == 7 or (len(after) == 3 and after[1] > after[0] and after[2] > after[0])
        with torch.no_grad():
            ours.append((layer(x[test]).argmax(1) == y[test]).float().mean().item())
        sklearn = LogisticRegression(max_iter=5000).fit(x[train].numpy(), y[train].numpy())
        theirs.append(sklearn.score(x[test].numpy(), y[test].numpy()))
    # 3 x 300 test examples: a point is 9 of them; seed by seed the two differ by a few examples either way.
    assert np.mean(ours) >= np.mean(theirs) - 0.01, (ours, theirs)


def test_the_probe_is_the_penalised_logistic_regression_optimum():
    """At the optimum the gradient of mean cross-entropy + s/2 |W|^2 vanishes: converged, not early-stopped."""
    x, y = synthetic(3, n=400)
    layer = nn.Linear(32, 3)
    fit_probe(layer, (x[:300], y[:300]), (x[300:], y[300:]), strengths=(1e-2,))
    mean, std = x[:300].mean(0), x[:300].std(0)
    # The layer holds the fit on standardised features folded back: unfold it, W_s = W * std, b_s = b + W . mean.
    weight = (layer.weight * std).detach().clone().requires_grad_()
    bias = (layer.bias + layer.weight @ mean).detach().clone().requires_grad_()
    loss = (torch.nn.functional.cross_entropy(((x[:300] - mean) / std) @ weight.T + bias, y[:300])
            + 0.5e-2 * weight.pow(2).sum())
    loss.backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3


def test_only_a_linear_map_is_probed_exactly():
    assert isinstance(probe_layer([nn.Dropout(0.1), nn.Linear(8, 2)]), nn.Linear)
    assert isinstance(probe_layer([nn.Sequential(nn.Flatten(), nn.Linear(8, 2))]), nn.Linear)
    assert probe_layer([nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))]) is None
    assert probe_layer([nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 2))]) is None
