"""Run a model over a loader: logits gathered from every process, then metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from graft.evaluation.metrics import classification_metrics


@torch.no_grad()
def collect_logits(accelerator: Accelerator, model: nn.Module,
                   loader: DataLoader) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (fp32) and labels (None for unlabelled data) in loader order, duplicates from uneven shards dropped."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        y = batch.pop("labels", None)
        out = model(**batch).logits.float()
        if y is None:
            logits.append(accelerator.gather_for_metrics(out).cpu())
        else:
            out, y = accelerator.gather_for_metrics((out, y))
            logits.append(out.cpu())
            labels.append(y.cpu())
    all_logits = torch.cat(logits).numpy() if logits else np.zeros((0, 0), dtype=np.float32)
    return all_logits, (torch.cat(labels).numpy() if labels else None)


def evaluate(accelerator: Accelerator, model: nn.Module, loader: DataLoader, label_names: list[str],
             temperature: float = 1.0) -> dict[str, Any]:
    """Loss (mean cross-entropy over all examples) and the classification metrics, of the logits divided by
    `temperature` (a calibrated run's; 1: the model's own)."""
    return score(*collect_logits(accelerator, model, loader), label_names, temperature)


def score(logits: np.ndarray, labels: np.ndarray | None, label_names: list[str],
          temperature: float = 1.0) -> dict[str, Any]:
    """The metrics of collected logits (divided by `temperature`) against their labels."""
    if labels is None:
        raise ValueError("evaluate() needs labelled data")
    logits = logits / np.float32(temperature) if temperature != 1.0 else logits
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long()).item()
    return classification_metrics(logits, labels, label_names, loss=loss)


@torch.no_grad()
def loader_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Logits (fp32) of `model` over a loader's batches on one device, in order: prediction in the caller's
    process, without accelerate's gathering."""
    model.eval()
    out = [model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu() for batch in loader]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
