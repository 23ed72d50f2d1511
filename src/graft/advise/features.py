"""Frozen features of every layer group at once: one forward pass over a sample of the data, a hook on each group's
module keeping its output, reduced to one vector per example (the first token's state and the masked mean of the
token states for a transformer, the spatial average for a feature map). The head's own input is kept too: what
head_only would train on.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from graft.models.groups import Group

HEAD_INPUT = "head input"


@dataclass
class Source:
    """One way of reading frozen features: a group's output, pooled one way."""

    group: str
    depth: int
    """The group's place from the input (0: the first)."""
    pooling: str
    """`cls` or `mean` (token states), `avg` (a feature map), `` (already a vector)."""
    train: torch.Tensor
    validation: torch.Tensor
    reads_head: bool = False
    """What the head receives: the features head_only trains on."""

    @property
    def name(self) -> str:
        return f"{self.group} ({self.pooling})" if self.pooling else self.group

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


@dataclass
class Features:
    sources: list[Source]
    train_labels: torch.Tensor
    validation_labels: torch.Tensor
    seconds: float


def sample_loader(loader: DataLoader, n: int, seed: int, batch_size: int) -> DataLoader:
    """Up to `n` examples of `loader`'s dataset drawn at random (seeded), in batches of similar length (less
    padding), without augmentation or shuffling."""
    dataset = loader.dataset
    chosen = sorted(random.Random(seed).sample(range(len(dataset)), min(n, len(dataset))))
    first = dataset[chosen[0]] if chosen else {}
    if isinstance(first, dict) and "input_ids" in first:
        chosen.sort(key=lambda i: len(dataset[i]["input_ids"]))
    return DataLoader(Subset(dataset, chosen), batch_size=batch_size, collate_fn=loader.collate_fn, shuffle=False)


def collect(model: nn.Module, root: nn.Module, groups: list[Group], head: str, loaders: dict[str, DataLoader],
            device: torch.device, autocast: torch.dtype | None) -> Features:
    """Every backbone group's pooled output, and the head's input, for the `train` and `validation` loaders."""
    started = time.perf_counter()
    modules = {g.name: module for g in groups if not g.is_head and (module := group_module(root, g)) is not None}
    model.to(device).eval()
    passes = {split: _forward(model, root, modules, head, loader, device, autocast)
              for split, loader in loaders.items()}
    (train, train_labels), (validation, validation_labels) = passes["train"], passes["validation"]
    depth = {name: i for i, name in enumerate(modules)}
    sources = [Source(group, depth.get(group, len(modules)), pooling, train[(group, pooling)],
                      validation[(group, pooling)])
               for group, pooling in train if (group, pooling) in validation]
    return Features(_mark_head(sources), train_labels, validation_labels, time.perf_counter() - started)


def group_module(root: nn.Module, group: Group) -> nn.Module | None:
    """The module whose output is the group's: the one it is named after, else (a group by regex) the deepest
    module holding all its parameters."""
    try:
        return root.get_submodule(group.name)
    except AttributeError:
        pass
    parts = [p.split(".")[:-1] for p in group.params]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return root.get_submodule(".".join(common)) if common else None


@torch.no_grad()
def _forward(model: nn.Module, root: nn.Module, modules: dict[str, nn.Module], head: str, loader: DataLoader,
             device: torch.device, autocast: torch.dtype | None) -> tuple[dict[tuple[str, str], torch.Tensor],
                                                                          torch.Tensor]:
    captured: dict[str, Any] = {}
    handles = [m.register_forward_hook(_keep(captured, name)) for name, m in modules.items()]
    handles.append(root.get_submodule(head).register_forward_pre_hook(
        lambda _m, args: captured.__setitem__(HEAD_INPUT, args[0])))
    outputs: defaultdict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    labels = []
    try:
        for batch in loader:
            labels.append(batch.pop("labels"))
            batch = {k: v.to(device) for k, v in batch.items()}
            captured.clear()
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                model(**batch)
            for name, output in captured.items():
                for pooling, vectors in pooled(output, batch.get("attention_mask")):
                    outputs[(name, pooling)].append(vectors.float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(parts) for key, parts in outputs.items()}, torch.cat(labels)


def _keep(captured: dict[str, Any], name: str) -> Callable[..., None]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        captured[name] = output

    return hook


def pooled(output: Any, mask: torch.Tensor | None) -> list[tuple[str, torch.Tensor]]:
    """A module's output as one vector per example, each way that makes sense for its shape: token states
    [B, T, D] by their first token and by their (masked) mean, a feature map [B, C, H, W] by its spatial average,
    a vector as it is. Anything else (no tensor, other ranks) gives nothing."""
    x = _first_tensor(output)
    if x is None or not x.is_floating_point():
        return []
    if x.dim() == 2:
        return [("", x)]
    if x.dim() == 4:
        return [("avg", x.mean(dim=(2, 3)))]
    if x.dim() != 3:
        return []
    if mask is not None and mask.shape == x.shape[:2]:
        weights = mask.to(x.dtype).unsqueeze(-1)
        mean = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    else:
        mean = x.mean(dim=1)
    return [("cls", x[:, 0]), ("mean", mean)]


def _first_tensor(output: Any) -> torch.Tensor | None:
    """A module's output tensor: itself, or the first tensor of a tuple or a ModelOutput (BERT's layers)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, tuple | list) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _mark_head(sources: list[Source]) -> list[Source]:
    """The head's input is usually a group's output already (BERT's pooler, a CNN's pooled last stage): that source
    is marked as what the head reads, and the copy dropped; otherwise the head's input stays a source of its own."""
    head = [s for s in sources if s.group == HEAD_INPUT]
    others = [s for s in sources if s.group != HEAD_INPUT]
    for h in head:
        same = next((s for s in reversed(others) if s.train.shape == h.train.shape
                     and torch.allclose(s.train, h.train, rtol=1e-4, atol=1e-5)), None)
        if same is not None:
            same.reads_head = True
        else:
            h.reads_head = True
            others.append(h)
    return others
