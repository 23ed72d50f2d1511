"""The learning-rate range test (Smith 2017; fastai's and Lightning's lr_find), on the run's own model, optimiser and
batches, leaving no trace: weights (and BatchNorm statistics), optimiser state, every RNG and the loss scaler are
restored exactly afterwards, and the data order is a pure function of (seed, epoch) anyway.

The sweep multiplies every optimiser group's LR by one factor, so per-group ratios (discriminative LRs, the head's
multiple) hold throughout, and parameters that do not train at epoch 0 stay out. The base LR climbs exponentially
from `start` to `end`; the training loss is smoothed (an exponential moving average, bias-corrected) and the sweep
stops once it diverges. The pick is taken from the smoothed loss against log-LR: the middle of the longest run of
falling loss (fastai's "valley" idea) once its flat start and its bottom are trimmed, which sits well below the
minimum, where the loss falls fast and steadily. The rule was chosen on MiniLM (rt-polarity) and ResNet-20 (CIFAR)
fine-tunes against LR grids; bench/ and the README report it on data it was not chosen on.
Written here because accelerate has no range test and Lightning's needs its Trainer.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from graft.recipe import StrategySpec
    from graft.training.loop import Parts


TRIM = 0.4
"""Share of the fall's drop cut off at each end before its middle is taken: 0.4 keeps the middle fifth, where the
loss has made about half of its fall."""
MIN_DROP = 0.05
"""A fall smaller than this share of the loss is noise, not a fall."""
EDGE = 0.1
"""How far above its minimum the smoothed loss must climb to mark the edge of stable LRs."""


@dataclass
class Sweep:
    """What the range test saw, and its pick."""

    lrs: list[float] = field(default_factory=list)
    """The base LR at each step (group LRs are it times their scale)."""
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    why: str = ""

    def record(self) -> dict[str, Any]:
        return asdict(self)


def starting_point(strategy: StrategySpec) -> str:
    """How a strategy's training starts, which decides the pick where the loss does not clearly fall: `scratch`
    (random weights), `zero` (PEFT methods: updates that start at nothing) or `pretrained`."""
    return "scratch" if strategy.name == "scratch" else "zero" if strategy.is_peft else "pretrained"


def lr_range_test(accelerator: Accelerator, parts: Parts, base_lr: float, max_grad_norm: float | None, *,
                  start: float = 1e-7, end: float = 10.0, steps: int = 100, beta: float = 0.95,
                  diverge: float = 4.0, starts: str = "pretrained", epoch: int = 0) -> Sweep:
    """Sweep the base LR from `start` to `end` over at most `steps` optimiser steps, with what trains at `epoch`
    training; `base_lr` is the LR the optimiser's groups were built with (their scales are their LR over it);
    `starts`: `starting_point`'s word for the strategy. Everything is restored afterwards."""
    saved = _snapshot(accelerator, parts)
    try:
        sweep = _sweep(accelerator, parts, base_lr, max_grad_norm, start, end, steps, beta, diverge, epoch)
        sweep.suggestion, sweep.why = suggest(sweep.lrs, sweep.smoothed, starts=starts)
        return sweep
    finally:
        _restore(accelerator, parts, saved)


def _sweep(accelerator: Accelerator, parts: Parts, base_lr: float, max_grad_norm: float | None, start: float,
           end: float, steps: int, beta: float, diverge: float, epoch: int) -> Sweep:
    from graft.training.loop import compute_loss

    scales = [group["lr"] / base_lr for group in parts.optimizer.param_groups]
    sweep, average, best = Sweep(), 0.0, math.inf
    parts.train_mode(epoch)
    for i, batch in enumerate(_batches(parts.train_loader, steps)):
        lr = start * (end / start) ** (i / max(1, steps - 1))
        for group, scale in zip(parts.optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        loss = compute_loss(parts, parts.model, batch)[0]
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(parts.model.parameters(), max_grad_norm or math.inf)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        value = accelerator.reduce(loss.detach().float(), "mean").item()
        if not math.isfinite(value):
            break
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (i + 1))
        sweep.lrs.append(lr)
        sweep.losses.append(value)
        sweep.smoothed.append(smooth)
        best = min(best, smooth)
        if i > 5 and smooth > diverge * best:
            break
    return sweep


def suggest(lrs: list[float], smoothed: list[float], trim: float = TRIM,
            starts: str = "pretrained") -> tuple[float | None, str]:
    """The pick from the smoothed loss against log-LR (lrs rising).

    The first tenth of the sweep is left out (the moving average is still warming up). Where the loss clearly
    falls before its minimum: the middle, in log-LR, of that fall (a longest decreasing
    run ending at the minimum, so a few noisy points do not cut it short) once its first and last `trim` of the
    drop are cut off. Where it does not, for methods that start from zero updates (`starts: zero`: LoRA and the
    other PEFT methods barely move the loss in a short sweep), and for a model trained from scratch (random weights
    fall slowly and noisily, and take the large steps Smith's rule gives them): a tenth of the LR at which the loss
    climbs clearly above its minimum. A pretrained model whose loss does not fall gets no pick (None: the caller's
    usual LR): its new head learns in a few steps on any learnable labels, so a flat loss says the labels are noisy
    or hard, and the edge of a flat, noisy curve lies late (1e-2 on rt-polarity with 20% of its labels flipped,
    whose tenth made MiniLM answer one class)."""
    n = len(smoothed)
    skip = max(5, n // 10)  # the moving average has seen too few losses yet: its first values are noise
    if n <= skip + 3:
        return None, f"the sweep stopped after {n} steps (the loss diverged at once)"
    low = min(range(skip, n), key=lambda i: smoothed[i])
    chain = [skip + i for i in _longest_fall(smoothed[skip: low + 1])]
    top, bottom = smoothed[chain[0]], smoothed[low]
    falls = len(chain) >= 4 and top - bottom >= MIN_DROP * abs(top)
    if starts != "scratch" and falls:
        first = next(i for i in chain if smoothed[i] <= top - trim * (top - bottom))
        last = next(i for i in chain if smoothed[i] <= bottom + trim * (top - bottom))
        return math.sqrt(lrs[first] * lrs[last]), (
            f"the middle of the smoothed loss's fall before its minimum ({lrs[first]:.2g} to {lrs[last]:.2g}: "
            f"{smoothed[first]:.3f} to {smoothed[last]:.3f})")
    if starts == "pretrained":
        return None, (f"the loss fell less than {MIN_DROP:.0%} before it climbed: noisy or hard labels? (graft "
                      f"inspect finds likely mislabelled rows)")
    edge = next((i for i in range(low, n) if smoothed[i] > (1 + EDGE) * smoothed[low]), None)
    if edge is None:
        return None, "the loss neither clearly fell nor climbed in the sweep"
    before = "random weights" if starts == "scratch" else f"it fell less than {MIN_DROP:.0%} before"
    return lrs[edge] / 10, f"a tenth of where the loss climbs {EDGE:.0%} above its minimum ({lrs[edge]:.2g}); {before}"


def _longest_fall(values: list[float]) -> list[int]:
    """Indices of a longest strictly decreasing subsequence that ends at the last value."""
    n = len(values)
    length, before = [1] * n, [-1] * n
    for i in range(n):
        for j in range(i):
            if values[j] > values[i] and length[j] + 1 > length[i]:
                length[i], before[i] = length[j] + 1, j
    chain = [n - 1]
    while before[chain[-1]] >= 0:
        chain.append(before[chain[-1]])
    return chain[::-1]


def _batches(loader: Any, steps: int) -> Any:
    """`steps` batches, going through the loader's epochs in order as often as it takes."""
    taken, epoch = 0, 0
    while taken < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            taken += 1
            if taken == steps:
                return
        epoch += 1


@dataclass
class _Saved:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lrs: list[float]
    rng: dict[str, Any]
    scaler: dict[str, Any] | None
    requires_grad: dict[str, bool]


def _snapshot(accelerator: Accelerator, parts: Parts) -> _Saved:
    model = parts.model
    scaler = getattr(accelerator, "scaler", None)
    return _Saved({k: v.detach().clone() for k, v in model.state_dict().items()},
                  copy.deepcopy(parts.optimizer.state_dict()),
                  [group["lr"] for group in parts.optimizer.param_groups],
                  {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                  copy.deepcopy(scaler.state_dict()) if scaler is not None else None,
                  {n: p.requires_grad for n, p in model.named_parameters()})


def _restore(accelerator: Accelerator, parts: Parts, saved: _Saved) -> None:
    model = parts.model
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved.model[key])
    parts.optimizer.load_state_dict(saved.optimizer)
    for group, lr in zip(parts.optimizer.param_groups, saved.lrs, strict=True):
        group["lr"] = lr
    parts.optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(saved.requires_grad[name])
    torch.set_rng_state(saved.rng["torch"])
    np.random.set_state(saved.rng["numpy"])
    random.setstate(saved.rng["python"])
    if saved.rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved.rng["cuda"])
    if saved.scaler is not None:
        accelerator.scaler.load_state_dict(saved.scaler)
