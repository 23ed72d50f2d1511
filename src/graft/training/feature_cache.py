"""The frozen-backbone feature cache: run the backbone once, then train the head on its outputs.

When no backbone parameter trains, the backbone runs in eval mode (see `strategy.plan.apply_plan`) and no random
augmentation is applied, its output for an example never changes; computing it every epoch is waste. The head
modules are shared with the full model, so training the cached head trains the full model's head. Before it is
used, the cache proves itself: on a validation batch the head fed cached features must give the full model's
logits, else graft trains uncached and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from transformers.modeling_outputs import SequenceClassifierOutput

from graft.models.plain import PlainClassifier, run_until

Batch = dict[str, Any]


class CachedHead(nn.Module):
    """The head alone, fed precomputed features; its modules are the full model's own."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.head = nn.ModuleList(modules)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        x = features
        for module in self.head:
            x = module(x)
        # Class ids: cross-entropy; float targets (a regression) are scored by the task's own loss.
        loss = F.cross_entropy(x.float(), labels) if labels is not None and not labels.is_floating_point() else None
        return SequenceClassifierOutput(loss=loss, logits=x)


class Features(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Batch:
        return {"features": self.features[i], "labels": self.labels[i]}


@dataclass
class Cache:
    head: CachedHead
    train_loader: DataLoader
    val_loader: DataLoader


def feature_fn(model: nn.Module, root: nn.Module, head_modules: list[str]) -> Callable[[Batch], torch.Tensor]:
    """What the head receives for a batch: the input of its first module (HF: BERT's dropout, ResNet's classifier),
    or for a plain module fed from `input_from`, that module's output."""
    if isinstance(model, PlainClassifier) and model.input_from:
        return lambda batch: run_until(root, model.input_from, "output", batch["pixel_values"])
    if isinstance(model, PlainClassifier):
        return lambda batch: run_until(root, model.head_path, "input", batch["pixel_values"])
    return lambda batch: run_until(model, head_modules[0], "input", **batch)


def build_cache(model: nn.Module, root: nn.Module, head_modules: list[str], train_loader: DataLoader,
                val_loader: DataLoader, device: torch.device) -> tuple[Cache | None, str]:
    """The cached head and loaders that yield the same batches as the originals, or None and the reason."""
    head = CachedHead([root.get_submodule(m) for m in head_modules])
    features = feature_fn(model, root, head_modules)
    model.to(device).eval()
    reason = _disagreement(model, head, features, val_loader, device)
    if reason:
        return None, reason
    train = compute_features(features, in_order(train_loader), device)
    val = compute_features(features, val_loader, device)
    return Cache(head, _like(train_loader, train, shuffled=True), _like(val_loader, val, shuffled=False)), ""


@torch.no_grad()
def _disagreement(model: nn.Module, head: CachedHead, features: Callable[[Batch], torch.Tensor], loader: DataLoader,
                  device: torch.device) -> str:
    batch = {k: v.to(device) for k, v in next(iter(loader)).items() if k != "labels"}
    full = model(**batch).logits.float()
    cached = head(features(batch)).logits.float()
    if cached.shape != full.shape or not torch.allclose(cached, full, rtol=1e-4, atol=1e-5):
        return ("the head's modules, applied in order to what the first one receives, do not reproduce the model's "
                "logits (its forward does more between them)")
    return ""


@torch.no_grad()
def compute_features(features: Callable[[Batch], torch.Tensor], loader: DataLoader, device: torch.device) -> Features:
    outs, labels = [], []
    for batch in loader:
        y = batch.pop("labels")
        outs.append(features({k: v.to(device) for k, v in batch.items()}).float().cpu())
        labels.append(y)
    return Features(torch.cat(outs), torch.cat(labels))


def in_order(loader: DataLoader) -> DataLoader:
    """The training examples in dataset order (features are looked up by index). A private generator: iterating
    must not draw from the global RNG, or the head's dropout would differ from the uncached run."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                      generator=torch.Generator().manual_seed(0))


def _like(loader: DataLoader, data: Features, shuffled: bool) -> DataLoader:
    """Batches of `data` in exactly the order `loader` draws them (the same sampler)."""
    return DataLoader(data, batch_size=loader.batch_size, sampler=loader.sampler if shuffled else None,
                      collate_fn=default_collate, generator=torch.Generator().manual_seed(0))


def head_train_mode(head: CachedHead) -> Callable[[int], None]:
    def begin_epoch(_: int) -> None:
        head.train()

    return begin_epoch
