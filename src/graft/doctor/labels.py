"""Likely mislabeled examples: confident learning (cleanlab) on probabilities no example was fitted on.

The model's frozen features (`features.py`) feed a fast probe: a logistic regression on standardised features.
Train's probabilities are out-of-fold (K stratified folds, each predicted by a probe fitted on the others);
validation's and test's come from a probe fitted on all of train, so their labels are checked too (a wrong test
label distorts every evaluation). The L2 strength is fixed and strong (STRENGTH): a probe tuned to fit noisy labels
learns some of the noise, and finds less of it. Confident learning then flags the examples whose given label the
probe doubts beyond each class's own typical confidence (`cleanlab.filter.find_label_issues`), ranked by
self-confidence: the probability of the given label.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FOLDS = 5
STRENGTH = 1.0
"""The L2 strength s of the penalty s/2 |W|^2 on the mean cross-entropy (probe.py's scale; C = 1 / (s n)). Measured
with MiniLM features and 10% / 20% of labels flipped: on graft's intents (probe ~94% accurate) s = 1 finds 82% / 87% of
the flips at 90% / 94% precision, where the s = 0.1 that held-out log loss often picks reaches only 79% precision; on
rt-polarity (~75%) its ranking is within a point of the best of 0.01 to 1."""
MIN_EXAMPLES = 10
"""Fewer training examples than this give no probe worth trusting."""


@dataclass
class Probe:
    probs: dict[str, np.ndarray]
    """Split -> probabilities [n, classes]: out-of-fold for train, from the probe on all of train for the others."""
    strength: float
    folds: int
    accuracy: dict[str, float] = field(default_factory=dict)
    """How often the probe agrees with the given labels, per split."""
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"folds": self.folds, "l2": self.strength, "agreement": self.accuracy,
                "seconds": round(self.seconds, 2)}


def probe_probabilities(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], k: int,
                        seed: int = 0) -> Probe:
    """Out-of-fold probabilities for train, a train-fitted probe's for the other splits (see the module's
    docstring). `labels` are class ids in 0..k-1."""
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    x, y = features["train"], labels["train"]
    folds = min(FOLDS, max(2, int(np.bincount(y).max())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer members than folds: still stratified
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
        oof = np.zeros((len(y), k))
        for fit, held in splits:
            oof[held] = _fit(x[fit], y[fit], k)(x[held])
    probs = {"train": oof}
    rest = [key for key in features if key != "train" and len(features[key])]
    if rest:
        predict = _fit(x, y, k)
        probs.update({key: predict(features[key]) for key in rest})
    accuracy = {key: float(np.mean(p.argmax(1) == labels[key])) for key, p in probs.items()}
    return Probe(probs, STRENGTH, folds, accuracy, time.perf_counter() - started)


def _fit(x: np.ndarray, y: np.ndarray, k: int) -> Any:
    """A probe fitted on (x, y): a function from features to probabilities over all k classes (a class the fit
    did not see gets 0)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    classes = np.unique(y)
    if len(classes) == 1:
        return lambda z: np.eye(k)[np.full(len(z), classes[0])]
    model = LogisticRegression(C=1.0 / (STRENGTH * len(y)), max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # near-converged is plenty for ranking
        model.fit((x - mean) / std, y)

    def predict(z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(z), k))
        out[:, model.classes_] = model.predict_proba((z - mean) / std)
        return out

    return predict


@dataclass
class Issues:
    flagged: list[int]
    """Positions confident learning flags, the surest first."""
    quality: np.ndarray
    """The probability of the given label (cleanlab's self-confidence): low means likely wrong."""
    suggested: np.ndarray
    """The most probable label other than the given one."""


def label_issues(labels: np.ndarray, probs: np.ndarray) -> Issues:
    """Confident learning's flags on (given labels, held-out probabilities), ranked by self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    suggested = others.argmax(1)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return Issues([], quality, suggested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes with few examples: the flags still hold
        flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return Issues([int(i) for i in flagged], quality, suggested)
