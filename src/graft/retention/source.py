"""The source task: its data (read and checked against the source head's classes before the model loads), and the
source head itself, the pretrained output layer kept beside the new one, reading what the new head reads."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.recipe import Recipe
    from graft.tasks import Task


@dataclass
class Source:
    """retention.data as the task reads a split: labels are ids into `labels`, the source head's classes."""

    labels: list[str]
    split: Any

    def __len__(self) -> int:
        return len(self.split)


def read_source(recipe: Recipe, task: Task) -> Source:
    """retention.data, every label one the source head knows; read before the model loads, so a wrong file costs
    nothing."""
    labels = source_labels(recipe)
    path = recipe.retention.data
    try:
        split = task.read_labelled(recipe, path, labels)
    except GraftError as e:
        raise GraftError(f"retention.data: {e} (the source head's classes: model.source_labels, or a Hugging Face "
                         f"model's id2label)") from None
    if not len(split):
        raise GraftError(f"retention.data {path}: no examples; give source-task examples labelled in the source "
                         f"head's classes")
    return Source(labels, split)


def source_labels(recipe: Recipe) -> list[str]:
    """The classes of the pretrained head's rows: model.source_labels, else a Hugging Face config's id2label."""
    if recipe.model.source_labels:
        return list(recipe.model.source_labels)
    from graft.models.hf import config_labels

    labels = config_labels(recipe.model.name, recipe.model.revision)
    if labels is None:
        raise GraftError(f"retention: {recipe.model.name}'s config names no classes for its output rows (id2label is "
                         f"transformers' LABEL_0, LABEL_1, ...); name them, in row order, in model.source_labels")
    return labels


class Tap:
    """The input of `module` at its latest forward call, for whoever runs the model to read right after (the new
    head's input is what the source head reads)."""

    def __init__(self, module: nn.Module) -> None:
        self.last: torch.Tensor | None = None
        module.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.last = args[0]

    def take(self) -> torch.Tensor:
        features, self.last = self.last, None  # not held past its use: the tensor carries its graph
        if features is None:
            raise RuntimeError("the forward pass did not reach the head")  # a bug in graft, not in the recipe
        return features


class SourceHead:
    """The pretrained output layer, frozen, on what the model's head receives: the source task's logits. It stays
    outside the trained model (never in the optimiser, checkpoints or the saved model) and as it was."""

    def __init__(self, layer: nn.Module, labels: list[str], tap: Tap) -> None:
        self.layer = layer.requires_grad_(False).eval()
        self.labels = labels
        self.tap = tap

    def logits(self, features: torch.Tensor | None = None) -> torch.Tensor:
        """The source logits (fp32) of `features`, by default of the latest forward pass through the model."""
        features = self.tap.take() if features is None else features
        _move(self.layer, features.device)
        return self.layer(features.float())

    def __call__(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The source logits of `model` on a batch's `inputs` (no labels)."""
        model(**inputs)
        return self.logits()


class Teacher:
    """A frozen copy of the original model and the source head on its features: the source task's targets for
    learning without forgetting."""

    def __init__(self, original: nn.Module, reads: str, head: SourceHead) -> None:
        self.model = original
        self.tap = Tap(original.get_submodule(reads))
        self.head = head

    @torch.no_grad()
    def logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        _move(self.model, next(iter(inputs.values())).device)
        self.model(**inputs)
        return self.head.logits(self.tap.take())


def frozen_copy(model: nn.Module) -> nn.Module:
    """`model` as it is now, frozen and in eval mode. Copy before any tap is put on `model`: the copy would carry it."""
    return copy.deepcopy(model).requires_grad_(False).eval()


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The name of `module` inside `model`."""
    return next(name for name, m in model.named_modules() if m is module)


def _move(module: nn.Module, device: torch.device) -> None:
    """Put a module kept outside the trained model where the model runs, once (Module.to inside a torch.func
    transform, even as a no-op, breaks it)."""
    if next(module.parameters()).device != device:
        module.to(device)
