"""The partial feature cache: the layer groups frozen at the bottom of the model run once, the rest trains on their
outputs.

When the first k backbone groups do not train for a stretch of epochs (`freeze_groups`, `freeze`, the frozen
epochs of `two_phase` and `gradual_unfreeze`), and run in eval mode as frozen modules do (`strategy.plan`), their
output for an example never changes. The cache holds it per example: for text the hidden states at the real
(unmasked) tokens, for images the feature maps. A training batch carries its examples' indices; for that forward
call the first group is replaced by a module that returns the cached output and the other cached groups are taken
out (blocks sliced off their list, other modules passed through), then put back. The model, its parameter names,
checkpoints and every other forward (test, extra evaluations) are untouched.

Before it is used, the cache proves itself on a validation batch (the model with and without it must give the same
logits) else graft trains uncached and says why. Examples then see the same computation in the same order, and
the RNG the same draws, so a cached run matches an uncached one within float tolerance (`tests/test_prefix_cache`).

Written here rather than taken from a library: none offers a frozen-prefix cache for a model it does not own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from graft.models.groups import Group
from graft.strategy.plan import Plan
from graft.training.feature_cache import in_order

INDEX = "graft_index"
"""The batch key holding each example's index in its split: batches that carry it are served from the cache."""
MAX_BYTES = 4 * 2**30
"""Beyond this the cache is not built: memory matters more than the time it would save."""


def frozen_prefix(plan: Plan, epoch: int) -> list[Group]:
    """The leading backbone groups none of whose parameters train at `epoch`."""
    prefix = []
    for group in plan.groups:
        if group.is_head or any(plan.trains_at(p, epoch) for p in group.params):
            break
        prefix.append(group)
    return prefix


class Indexed(Dataset):
    """A split whose items also carry an index: their place in the split plus `start` (splits do not overlap)."""

    def __init__(self, data: Any, start: int) -> None:
        self.data, self.start = data, start

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.data[i], INDEX: self.start + i}


class WithIndex:
    """A collate_fn: the loader's own, with the items' indices added as a tensor."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        index = torch.tensor([item[INDEX] for item in items], dtype=torch.int64)
        batch = self.collate([{k: v for k, v in item.items() if k != INDEX} for item in items])
        batch[INDEX] = index
        return batch


def indexed(loader: DataLoader, start: int) -> DataLoader:
    """The same batches in the same order (the same sampler), each with its examples' indices from `start`."""
    return DataLoader(Indexed(loader.dataset, start), batch_size=loader.batch_size, sampler=loader.sampler,
                      collate_fn=WithIndex(loader.collate_fn), num_workers=loader.num_workers,
                      generator=torch.Generator().manual_seed(0))


class Replay(nn.Module):
    """Stands in for the first cached group: returns what the last one would have."""

    def __init__(self) -> None:
        super().__init__()
        self.output: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.output is not None
        return self.output


class PassThrough(nn.Module):
    """Stands in for a cached group that is not a block of a list: its input, unchanged."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else next(iter(kwargs.values()))


@dataclass
class Stored:
    """One split's cached outputs: for text the real tokens of every example end to end (`offsets` says where
    each starts), for images one tensor per example."""


    start: int
    """The index of the first example (`Indexed.start`)."""
    values: torch.Tensor
    offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.values) if self.offsets is None else len(self.offsets) - 1

    def gather(self, index: torch.Tensor, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        index = index.cpu() - self.start
        if self.offsets is None:
            return self.values[index].to(device)
        assert mask is not None
        mask = mask.bool().cpu()
        out = self.values.new_zeros((*mask.shape, *self.values.shape[1:]))
        # Each example's tokens, end to end, land on the batch's real positions (row by row, in order).
        starts = self.offsets[index]
        lengths = self.offsets[index + 1] - starts
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        out[mask] = self.values[torch.repeat_interleave(starts, lengths) + within]
        return out.to(device)


class PrefixCache:
    """The cached outputs of a model's frozen bottom groups, and the hooks that serve them."""

    def __init__(self, model: nn.Module, root: nn.Module, autocast: Callable[[], Any]) -> None:
        self.model, self.root, self.autocast = model, root, autocast
        self.depth = 0
        self.modules: list[str] = []
        self.stored: list[Stored] = []
        """The cached splits (train, validation), by their indices' start."""
        self.replay = Replay()
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, always_call=True)
        self._undo: list[Callable[[], None]] = []

    def build(self, prefix: list[Group], loaders: list[DataLoader], device: torch.device) -> str:
        """Cache the output of `prefix` for each `indexed` loader's split (the first one checks it); "" or why
        not."""
        self.clear()
        modules = [g.name for g in prefix]
        reason = _removable(self.root, modules)
        if reason:
            return reason
        self.modules = modules
        check, *rest = loaders
        self.stored = [self._compute(check, device)]
        self.depth = len(prefix)
        reason = self._disagreement(check, device) or self._too_big(loaders)
        if reason:
            self.clear()
            return reason
        self.stored += [self._compute(loader, device) for loader in rest]
        return ""

    def clear(self) -> None:
        self.depth, self.stored = 0, []

    @torch.no_grad()
    def _compute(self, loader: DataLoader, device: torch.device) -> Stored:
        """The last cached group's output for every example of an `indexed` loader's split, in split order."""
        last = self.root.get_submodule(self.modules[-1])
        seen: list[torch.Tensor] = []
        handle = last.register_forward_hook(lambda _m, _a, out: _stop(seen, out))
        was_training = self.model.training
        self.model.eval()
        values, lengths = [], []
        try:
            for batch in in_order(loader):
                inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", INDEX)}
                try:
                    with self.autocast():
                        self.model(**inputs)
                except _Stop:
                    pass
                out = seen.pop().cpu()
                mask = inputs.get("attention_mask")
                if mask is not None and out.dim() >= 3 and out.shape[:2] == mask.shape:  # [B, L, ...]: tokens
                    mask = mask.bool().cpu()
                    values.append(out[mask])
                    lengths += mask.sum(1).tolist()
                else:
                    values.append(out)
        finally:
            handle.remove()
            self.model.train(was_training)
        if lengths:
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            offsets[1:] = torch.tensor(lengths).cumsum(0)
            return Stored(loader.dataset.start, torch.cat(values), offsets)
        return Stored(loader.dataset.start, torch.cat(values))

    @torch.no_grad()
    def _disagreement(self, loader: DataLoader, device: torch.device) -> str:
        was_training = self.model.training
        self.model.eval()
        try:
            batch = {k: v.to(device) for k, v in next(iter(loader)).items() if k != "labels"}
            with self.autocast():
                plain = self.model(**{k: v for k, v in batch.items() if k != INDEX}).logits.float()
                try:
                    cached = self.model(**batch).logits.float()
                except Exception as e:  # any failure of the cut model means: do not cache
                    return f"the model's forward fails with the cached modules cut out ({type(e).__name__}: {e})"
        finally:
            self.model.train(was_training)
        mask = batch.get("attention_mask")
        if mask is not None and plain.dim() == 3 and cached.shape == plain.shape and plain.shape[:2] == mask.shape:
            # A logit per token (a token classifier): those at padding, which the cache leaves at zero, score nothing.
            plain, cached = plain[mask.bool()], cached[mask.bool()]
        if cached.shape != plain.shape or not torch.allclose(cached, plain, rtol=1e-3, atol=1e-4):
            return (f"the model given {self.modules[-1]}'s cached output does not reproduce its own logits (its "
                    f"forward does more between the cached modules)")
        return ""

    def _too_big(self, loaders: list[DataLoader]) -> str:
        first = self.stored[0]
        per_example = first.values.element_size() * first.values.numel() / len(first)
        total = per_example * sum(len(loader.dataset) for loader in loaders)
        if total > MAX_BYTES:
            return f"it would take {total / 2**30:.1f} GiB of memory (at most {MAX_BYTES / 2**30:.0f})"
        return ""

    def _before(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        index = kwargs.pop(INDEX, None)
        if index is None or not self.depth:
            return args, kwargs
        first = int(index[0])
        stored = next(s for s in self.stored if s.start <= first < s.start + len(s))
        self.replay.output = stored.gather(index, kwargs.get("attention_mask"), index.device)
        self._install()
        return args, kwargs

    def _after(self, *_: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self.replay.output = None

    def _install(self) -> None:
        """The first cached module replaced by the replay, the others taken out, until `_after`."""
        first, *others = self.modules
        self._swap(first, self.replay)
        lists: dict[str, int] = {}
        for name in others:
            parent, _, last = name.rpartition(".")
            if last.isdigit() and isinstance(self.root.get_submodule(parent), nn.ModuleList):
                lists[parent] = max(lists.get(parent, 0), int(last) + 1)
            else:
                self._swap(name, PassThrough())
        for parent, cut in lists.items():
            blocks = self.root.get_submodule(parent)
            self._swap(parent, nn.ModuleList(list(blocks)[cut:]))

    def _swap(self, name: str, module: nn.Module) -> None:
        parent_name, _, attr = name.rpartition(".")
        parent = self.root.get_submodule(parent_name) if parent_name else self.root
        original = parent._modules[attr]
        parent._modules[attr] = module
        self._undo.append(lambda: parent._modules.__setitem__(attr, original))


class _Stop(Exception):
    """Ends a forward pass once the cached groups' output is seen."""


def _stop(seen: list[torch.Tensor], out: Any) -> None:
    seen.append(out if isinstance(out, torch.Tensor) else out[0])
    raise _Stop


def _removable(root: nn.Module, modules: list[str]) -> str:
    """Why the groups `modules` cannot be cut out of `root`'s forward; "" when they can."""
    names = dict(root.named_modules())
    missing = [m for m in modules if m not in names]
    if missing:
        return f"layer group {missing[0]!r} is not a module (model.groups patterns)"
    for i, outer in enumerate(modules):
        inside = [m for m in names if m.startswith(outer + ".") and any(m == g or g.startswith(m + ".")
                                                                          for g in modules[i + 1:])]
        if inside:
            return f"layer group {outer!r} holds later groups' modules"
    return ""


class PrefixCaching:
    """Keeps the cache at the depth each epoch allows: built when the frozen bottom groups change (they only ever
    shrink as groups unfreeze), dropped when none is left. What it did is in `builds`, for run.json."""

    def __init__(self, model: nn.Module, root: nn.Module, plan: Plan, train: DataLoader, val: DataLoader,
                 accelerator: Any, say: Callable[[str], None]) -> None:
        self.cache = PrefixCache(model, root, accelerator.autocast)
        self.plan, self.device, self.say = plan, accelerator.device, say
        self.loaders = (indexed(train, 0), indexed(val, len(train.dataset)))
        """The train and validation loaders to prepare in place of the originals: their batches carry indices."""
        self.builds: list[dict[str, Any]] = []
        self.refused: set[int] = set()

    @property
    def seconds(self) -> float:
        return sum(b["seconds"] for b in self.builds)

    def after(self, begin_epoch: Callable[[int], None]) -> Callable[[int], None]:
        """`begin_epoch`, then the cache made right for the epoch."""
        def start(epoch: int) -> None:
            begin_epoch(epoch)
            self.for_epoch(epoch)

        return start

    def for_epoch(self, epoch: int) -> None:
        prefix = frozen_prefix(self.plan, epoch)
        if len(prefix) == self.cache.depth or len(prefix) in self.refused:
            return
        if not prefix:
            self.cache.clear()
            return
        started = time.perf_counter()
        train, val = self.loaders
        reason = self.cache.build(prefix, [val, train], self.device)
        seconds = time.perf_counter() - started
        groups = prefix[0].name if len(prefix) == 1 else f"{prefix[0].name} .. {prefix[-1].name}"
        build = {"epoch": epoch, "groups": len(prefix), "last": prefix[-1].name, "seconds": round(seconds, 3),
                 "used": not reason}
        self.builds.append({**build, "why_not": reason} if reason else build)
        if reason:
            self.refused.add(len(prefix))
            self.say(f"feature cache: off for the frozen groups {groups}: {reason}")
        else:
            self.say(f"feature cache: the frozen groups {groups} ran once; from epoch {epoch} the rest trains on "
                     f"their outputs ({seconds:.1f} s)")


def depths(plan: Plan, epochs: int) -> list[int]:
    """How many bottom groups are frozen at each epoch."""
    return [len(frozen_prefix(plan, epoch)) for epoch in range(epochs)]
