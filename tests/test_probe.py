"""The exact linear probe: the convex problem solved to convergence, its L2 strength picked on validation, as good
as scikit-learn's LogisticRegression on the same features; only for heads that are one linear map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.evaluation.metrics import classification_metrics
from graft.training.probe import fit_probe, probe_layer


def synthetic(seed: int, n: int = 1200, d: int = 32, k: int = 3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k))
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)  # badly scaled, as raw features are
    y = (x / np.abs(x).mean(0) @ w + rng.normal(scale=2.0, size=(n, k))).argmax(1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return classification_metrics(logits.numpy(), labels.numpy(), ["a", "b", "c"], loss=loss)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_probe_matches_scikit_learn_on_held_out_data(seed):
    from sklearn.linear_model import LogisticRegression

    x, y = synthetic(seed)
    train, val, test = slice(0, 700), slice(700, 900), slice(900, None)
    layer = nn.Linear(32, 3)
    fit = fit_probe(layer, (x[train], y[train]), (x[val], y[val]), score, "accuracy", "max")
    with torch.no_grad():
        ours = (layer(x[test]).argmax(1) == y[test]).float().mean().item()
    theirs = LogisticRegression(max_iter=5000).fit(x[train].numpy(), y[train].numpy()).score(x[test].numpy(),
                                                                                              y[test].numpy())
    assert ours >= theirs - 0.01, (ours, theirs)  # 300 test examples: one point is 3 of them
    assert len(fit.tried) == 7 and fit.strength in [t["l2"] for t in fit.tried]
    best = max(fit.tried, key=lambda t: (t["accuracy"], t["l2"]))
    assert fit.strength == best["l2"]


def test_the_folded_layer_takes_raw_features():
    x, y = synthetic(3)
    layer = nn.Linear(32, 3)
    fit_probe(layer, (x[:600], y[:600]), (x[600:800], y[600:800]), score, "loss", "min", strengths=(1e-3,))
    mean, std = x[:600].mean(0), x[:600].std(0)
    # The same fit on standardised inputs, by hand: the layer must equal it applied to raw ones.
    standardised = nn.Linear(32, 3)
    fit_probe(standardised, (((x[:600] - mean) / std), y[:600]), (((x[600:800] - mean) / std), y[600:800]), score,
              "loss", "min", strengths=(1e-3,))
    with torch.no_grad():
        torch.testing.assert_close(layer(x[800:]), standardised((x[800:] - mean) / std), atol=1e-2, rtol=1e-2)


def test_only_a_linear_map_is_probed_exactly():
    assert isinstance(probe_layer([nn.Dropout(0.1), nn.Linear(8, 2)]), nn.Linear)
    assert isinstance(probe_layer([nn.Sequential(nn.Flatten(), nn.Linear(8, 2))]), nn.Linear)
    assert probe_layer([nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))]) is None
    assert probe_layer([nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 2))]) is None
