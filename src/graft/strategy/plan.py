"""Strategies: from layer groups to a plan of what trains from which epoch, at which learning rate.

A strategy is a plain function in `STRATEGIES` that gives each backbone group (input to output) the epoch it
starts training at, or None for never; the head always trains from epoch 0. Freeze selectors then keep chosen
parameters frozen for the whole run. The plan is a pure function of the recipe, so a resumed run re-applies the
very same state for its epoch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from graft.errors import GraftError
from graft.models.groups import Group, backbone_children
from graft.recipe import StrategySpec

Starts = list[int | None]


def _everything(n: int, spec: StrategySpec, epochs: int) -> Starts:
    return [0] * n


def _head_only(n: int, spec: StrategySpec, epochs: int) -> Starts:
    return [None] * n


def _two_phase(n: int, spec: StrategySpec, epochs: int) -> Starts:
    joining = n if spec.unfreeze_groups is None else min(n, spec.unfreeze_groups)
    return [None] * (n - joining) + [spec.phase_epochs] * joining


def _gradual_unfreeze(n: int, spec: StrategySpec, epochs: int) -> Starts:
    # ULMFiT: the top backbone group joins after unfreeze_every epochs, the one below after twice that, ...
    every = spec.unfreeze_every if spec.unfreeze_every != "auto" else unfreeze_pace(n, epochs)
    return [math.ceil((n - i) * every - 1e-9) for i in range(n)]


def unfreeze_pace(n: int, epochs: int) -> float:
    """`unfreeze_every: auto`: ULMFiT's one group per epoch when the run is long enough for every group to join
    before its last epoch (and whole multiples of that when it is longer); in a shorter run the groups join in
    even batches, so that all of them train in the last epoch. One group per epoch over MiniLM's 7 in a 3-epoch
    run left the bottom 5 frozen."""
    if epochs - 1 >= n:
        return float((epochs - 1) // n)
    return (epochs - 1) / n


STRATEGIES: dict[str, Callable[[int, StrategySpec, int], Starts]] = {
    "full": _everything,
    "discriminative": _everything,
    "scratch": _everything,
    "freeze": _everything,
    "distill": _everything,
    "head_only": _head_only,
    "two_phase": _two_phase,
    "gradual_unfreeze": _gradual_unfreeze,
}


@dataclass
class Plan:
    groups: list[Group]
    start: dict[str, int | None]
    """Parameter name -> the first epoch it trains; None: never."""
    lr_scale: dict[str, float]
    """Group name -> its LR as a multiple of optim.lr."""

    def trains_at(self, name: str, epoch: int) -> bool:
        start = self.start[name]
        return start is not None and start <= epoch

    def ever_trains(self, name: str) -> bool:
        return self.start[name] is not None

    @property
    def all_joined(self) -> int:
        """The first epoch at which everything that ever trains is training."""
        return max((s for s in self.start.values() if s is not None), default=0)

    @property
    def backbone_frozen_throughout(self) -> bool:
        return not any(self.ever_trains(p) for g in self.groups if not g.is_head for p in g.params)

    def group_start(self, group: Group) -> int | None:
        starts = [s for s in (self.start[p] for p in group.params) if s is not None]
        return min(starts) if starts else None

    def table(self, root: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """One row per group: name, parameters, how many ever train, the epoch it starts, its LR."""
        sizes = {n: p.numel() for n, p in root.named_parameters()}
        return [{"name": g.name, "params": sum(sizes[p] for p in g.params),
                 "trainable": sum(sizes[p] for p in g.params if self.ever_trains(p)),
                 "from_epoch": self.group_start(g), "lr": base_lr * self.lr_scale[g.name]}
                for g in self.groups]


def make_plan(root: nn.Module, groups: list[Group], head: list[str], spec: StrategySpec, epochs: int,
              trains: set[str] | None = None) -> Plan:
    """The plan for `spec` over `groups` (the last one being the head) in a run of `epochs` epochs; a group whose
    turn would come after the last epoch never trains. PEFT strategies pass `trains`, the parameters their method
    trains (added ones, the head's trained copy): those train from the start, nothing else ever does."""
    backbone = [g for g in groups if not g.is_head]
    start: dict[str, int | None] = {}
    if spec.is_peft:
        assert trains is not None, "a PEFT strategy says which parameters it trains"
        start = {p: 0 if p in trains else None for g in groups for p in g.params}
    else:
        starts = [s if s is not None and s < epochs else None
                  for s in STRATEGIES[spec.name](len(backbone), spec, epochs)]
        for group, first in zip(backbone, starts, strict=True):
            start.update(dict.fromkeys(group.params, first))
        start.update(dict.fromkeys((p for g in groups if g.is_head for p in g.params), 0))
    for name in _frozen_by_selectors(root, backbone, head, spec):
        start[name] = None
    if not any(s is not None for s in start.values()):
        raise GraftError("strategy: nothing would train; freeze fewer parameters")
    n = len(backbone)
    decay = spec.lr_decay if spec.lr_decay is not None else bottom_at_a_tenth(n)
    scale = {g.name: 1.0 / decay ** (n - 1 - i) for i, g in enumerate(backbone)}
    scale.update({g.name: float(spec.head_lr_mult) for g in groups if g.is_head})  # type: ignore[arg-type]
    return Plan(groups, start, scale)


def bottom_at_a_tenth(n: int) -> float:
    """The per-group LR decay that trains the lowest of `n` backbone groups at a tenth of the top one's."""
    return 10 ** (1 / (n - 1)) if n > 1 else 1.0


def _frozen_by_selectors(root: nn.Module, backbone: list[Group], head: list[str], spec: StrategySpec) -> set[str]:
    names = [n for n, _ in root.named_parameters()]
    frozen: set[str] = set()
    modules = dict(root.named_modules())
    for module in spec.freeze_modules:
        if module not in modules:
            close = [m for m in modules if m.endswith(module) or module in m][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else "; see the names in model.named_modules()"
            raise GraftError(f"strategy.freeze_modules: no module {module!r}{hint}")
        frozen |= {n for n in names if n.startswith(module + ".")}
    if spec.freeze_pattern:
        try:
            rx = re.compile(spec.freeze_pattern)
        except re.error as e:
            raise GraftError(f"strategy.freeze_pattern = {spec.freeze_pattern!r}: not a valid regex ({e})") from None
        hits = {n for n in names if rx.search(n)}
        if not hits:
            raise GraftError(f"strategy.freeze_pattern = {spec.freeze_pattern!r} matches no parameter name "
                             f"(e.g. {', '.join(names[:3])})")
        frozen |= hits
    if spec.freeze_children:
        children = backbone_children(root, head)
        _check_count("freeze_children", spec.freeze_children, len(children), "backbone children")
        frozen |= {n for n in names if any(n.startswith(c + ".") for c in children[: spec.freeze_children])}
    if spec.freeze_groups:
        _check_count("freeze_groups", spec.freeze_groups, len(backbone), "backbone groups")
        frozen |= {p for g in backbone[: spec.freeze_groups] for p in g.params}
    return frozen


def _check_count(field: str, n: int, available: int, what: str) -> None:
    if n > available:
        raise GraftError(f"strategy.{field} = {n}: the model has {available} {what}; at most {available}")


def apply_plan(root: nn.Module, plan: Plan, epoch: int) -> None:
    """Set requires_grad for `epoch` and the train/eval mode: every module whose parameters are all frozen runs
    in eval mode (BatchNorm statistics fixed, dropout off), as a fixed feature extractor should."""
    for name, p in root.named_parameters():
        p.requires_grad_(plan.trains_at(name, epoch))
    root.train()
    for module in _frozen_modules(root):
        module.eval()


def _frozen_modules(root: nn.Module) -> list[nn.Module]:
    """The largest modules whose parameters are all frozen (and that have some)."""
    found: list[str] = []
    for name, module in root.named_modules():
        if any(f == "" or name.startswith(f + ".") for f in found):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(name)
    return [root.get_submodule(n) if n else root for n in found]
