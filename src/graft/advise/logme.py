"""LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"): how well
frozen features explain the labels, scored as the evidence of a Bayesian linear model, with no training.

For each class c, the targets y = 1[label = c] are modelled as y = F w + noise, with w ~ N(0, I / alpha) and noise
~ N(0, 1 / beta). The log marginal likelihood (the evidence) of y given the features F (n x d) is

    d/2 log alpha + n/2 log beta - 1/2 log|A| - beta/2 |F m - y|^2 - alpha/2 |m|^2 - n/2 log 2 pi,

with A = alpha I + beta F^T F and m = beta A^-1 F^T y. alpha and beta are set to maximise it by MacKay's fixed point
(gamma = sum sigma_i / (sigma_i + alpha / beta) over the eigenvalues sigma_i of F^T F; alpha = gamma / |m|^2;
beta = (n - gamma) / |F m - y|^2), iterated to convergence in the eigenbasis of F^T F, decomposed once for all
classes. LogME is that maximum divided by n, averaged over the classes: higher is better; it compares feature
sources on the same labels, and its scale has no meaning on its own.

Written here (numpy) because the authors' package pins numba and stops the iteration early; log|A| also counts the
zero eigenvalues (log alpha each) when d exceeds the rank of F, which the authors' code leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-12
"""The fixed point stops when alpha / beta moves by less than this, relatively."""
MAX_STEPS = 1_000
LIMIT = 1e100
"""alpha / beta beyond [1 / LIMIT, LIMIT]: the evidence has reached its limit (the features explain nothing of the
class, or interpolate it) to float precision; the iteration stops there."""
RANK_CUTOFF = 1e-12
"""Eigenvalues of the Gram matrix below this share of the largest are rounding noise: counted as zero."""


@dataclass
class LogME:
    score: float
    """The evidence per example, averaged over the classes."""
    evidence: list[float]
    """Each class's maximised evidence per example."""
    alpha: list[float]
    beta: list[float]
    steps: list[int]
    """Fixed-point iterations each class took."""


def logme(features: np.ndarray, labels: np.ndarray) -> LogME:
    """LogME of `features` (n x d) for class ids `labels` (n); classes absent from `labels` are not scored."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    sigma, project = _eigen(f)
    result = LogME(0.0, [], [], [], [])
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        x = project(target)  # the target's coordinates on the left singular vectors of F
        outside = max(float(target @ target - x @ x), 0.0)  # its part outside F's column space
        evidence, alpha, beta, steps = _maximise(sigma, x * x, outside, n, d)
        result.evidence.append(evidence / n)
        result.alpha.append(alpha)
        result.beta.append(beta)
        result.steps.append(steps)
    result.score = float(np.mean(result.evidence))
    return result


def _eigen(f: np.ndarray) -> tuple[np.ndarray, object]:
    """The non-zero eigenvalues of F^T F and a map from a target y to U^T y (U: F's left singular vectors), from the
    smaller of the two Gram matrices (d x d or n x n): one decomposition for every class."""
    n, d = f.shape
    if n >= d:
        sigma, v = np.linalg.eigh(f.T @ f)
        keep = sigma > RANK_CUTOFF * max(sigma.max(), 0.0)
        sigma, v = sigma[keep], v[:, keep]
        scale = np.sqrt(sigma)

        def project(y: np.ndarray) -> np.ndarray:
            return (v.T @ (f.T @ y)) / scale  # U = F V / sqrt(sigma)
    else:
        sigma, u = np.linalg.eigh(f @ f.T)
        keep = sigma > RANK_CUTOFF * max(sigma.max(), 0.0)
        sigma, u = sigma[keep], u[:, keep]

        def project(y: np.ndarray) -> np.ndarray:
            return u.T @ y
    return sigma, project


def _maximise(sigma: np.ndarray, x2: np.ndarray, outside: float, n: int, d: int) -> tuple[float, float, float, int]:
    """The maximum evidence of one class over alpha and beta, and where it is reached, by MacKay's fixed point."""
    tiny = np.finfo(np.float64).tiny
    alpha, beta = 1.0, 1.0
    steps = 0
    for steps in range(1, MAX_STEPS + 1):  # noqa: B007 (the count is reported)
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))  # |m|^2
        res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + outside  # |F m - y|^2
        alpha, beta = gamma / max(m2, tiny), (n - gamma) / max(res2, tiny)
        if abs(alpha / beta - t) <= TOLERANCE * t or not 1 / LIMIT < alpha / beta < LIMIT:
            break
    t = alpha / beta
    m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
    res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + outside
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2 - beta / 2 * res2 - alpha / 2 * m2
                - n / 2 * math.log(2 * math.pi))
    return evidence, alpha, beta, steps
