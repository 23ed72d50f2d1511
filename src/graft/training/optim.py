"""Optimiser, parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from graft.recipe import OptimSpec, ScheduleSpec

if TYPE_CHECKING:
    from graft.strategy.plan import Plan

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


FALLBACK_LR = {"adamw": 5e-5, "adam": 5e-5, "sgd": 1e-2}
"""The LR an `auto` run uses when its range test finds no clear one (a transformer's and a CNN's usual)."""
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "adam": 0.01, "sgd": 5e-4}


@dataclass
class OptimChoice:
    """The optimiser a run uses, resolved from the recipe and the model, and why."""

    name: str
    weight_decay: float
    why: str

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "weight_decay": self.weight_decay, "why": self.why}


def choose_optimizer(spec: OptimSpec, model: nn.Module) -> OptimChoice:
    """`optim.name` and `optim.weight_decay`, with `auto` resolved by the model's family."""
    if spec.name != "auto":
        name, why = spec.name, "optim.name says so"
    elif _is_batchnorm_cnn(model):
        name, why = "sgd", "optim.name: auto, and the model is a BatchNorm CNN (no LayerNorm): SGD with momentum"
    else:
        name, why = "adamw", "optim.name: auto, and the model is a transformer or has LayerNorm: AdamW"
    decay = spec.weight_decay if spec.weight_decay is not None else DEFAULT_WEIGHT_DECAY[name]
    return OptimChoice(name, decay, why)


def _is_batchnorm_cnn(model: nn.Module) -> bool:
    modules = list(model.modules())
    return (any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
            and not any(isinstance(m, nn.LayerNorm | nn.GroupNorm) for m in modules))


def no_decay_names(model: nn.Module) -> set[str]:
    """Biases and the parameters of normalisation layers: weight decay on them only hurts."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False):
            if is_norm or param_name == "bias":
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def param_groups(root: nn.Module, plan: Plan, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """One optimiser group per layer group and decay kind, at the group's LR, holding only parameters that train
    at some point of the run (a parameter that never trains is never given to the optimiser)."""
    skip = no_decay_names(root)
    params = dict(root.named_parameters())
    groups = []
    for group in plan.groups:
        lr = base_lr * plan.lr_scale[group.name]
        for kind, decay in (("decay", weight_decay), ("no_decay", 0.0)):
            chosen = [params[n] for n in group.params
                      if plan.ever_trains(n) and (n in skip) == (kind == "no_decay")]
            if chosen:
                groups.append({"name": f"{group.name}/{kind}", "params": chosen, "weight_decay": decay, "lr": lr})
    return groups


def build_optimizer(groups: list[dict[str, Any]], spec: OptimSpec, name: str | None = None) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD with momentum over the given parameter groups; `name` (default: spec.name) as resolved by
    `choose_optimizer`. Each group carries its own LR."""
    name = name or spec.name
    if name == "auto":
        raise ValueError("resolve optim.name: auto with choose_optimizer first")
    lr = spec.lr if spec.lr != "auto" else 1e-3  # for groups that carry no LR of their own
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    # Adam's weight_decay is L2 in the gradient, AdamW's is decoupled: both honour each group's own value.
    # The fused kernel (one pass over all parameters) is what made the HF Trainer's steps faster than ours in
    # bench/ (loop_overhead); the per-parameter loop stays where a parameter's device or dtype has no fused kernel.
    try:
        return cls(groups, lr=lr, betas=spec.betas, eps=spec.eps, fused=True)
    except (RuntimeError, ValueError):
        return cls(groups, lr=lr, betas=spec.betas, eps=spec.eps)


def lr_multiplier(step: int, *, name: str, total: int, warmup: int, steps_per_epoch: int, step_epochs: int,
                  gamma: float, min_lr_ratio: float) -> float:
    """The LR at optimiser step `step` as a share of the peak: linear warmup, then the named shape."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if name == "step":
        return gamma ** (step // (steps_per_epoch * step_epochs))
    return 1.0  # constant


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, *, total_steps: int, steps_per_epoch: int,
                    metric_mode: str) -> LRScheduler | ReduceLROnPlateau:
    """A per-step LambdaLR (one formula per shape, the same warmup for all; transformers has no step schedule
    with warmup), or ReduceLROnPlateau stepped on the validation metric after each evaluation."""
    if spec.name == "plateau":
        return ReduceLROnPlateau(optimizer, mode=metric_mode, factor=spec.plateau_factor,
                                 patience=spec.plateau_patience)
    warmup = spec.warmup_steps if spec.warmup_steps is not None else int(spec.warmup_ratio * total_steps)
    shape = partial(lr_multiplier, name=spec.name, total=total_steps, warmup=warmup, steps_per_epoch=steps_per_epoch,
                    step_epochs=spec.step_epochs, gamma=spec.gamma, min_lr_ratio=spec.min_lr_ratio)
    return LambdaLR(optimizer, shape)
