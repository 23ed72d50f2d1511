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
    """retention.data as the task reads a split, in two parts; labels are ids into `labels`."""

    labels: list[str]
    """The classes of the source head's rows; with a probe, the data's own."""
    measured: Any
    """The share held out to measure retention on: no guard sees it."""
    guarded: Any
    """The rest: what replay draws from, and what EWC's Fisher information and a probe are computed on."""
    probe: bool
    """Nothing names the pretrained head's classes: a probe fitted on the original features stands in for it."""

    def __len__(self) -> int:
        return len(self.measured) + len(self.guarded)


def read_source(recipe: Recipe, task: Task) -> Source:
    """retention.data, every label one the source head knows, split into a measured and a guarded part; read before
    the model loads, so a wrong file costs nothing."""
    if task.input_kind is None:  # a language model: conversations, no classes
        from graft.retention.language import read_retain

        return Source([], *read_retain(recipe, task), probe=False)
    known = known_labels(recipe)
    labels = known if known is not None else own_labels(recipe, task)
    path = recipe.retention.data
    try:
        split = task.read_labelled(recipe, path, labels)
    except GraftError as e:
        raise GraftError(f"retention.data: {e} (the source head's classes: model.source_labels, or a Hugging Face "
                         f"model's id2label)") from None
    if not len(split):
        raise GraftError(f"retention.data {path}: no examples; give source-task examples labelled in the source "
                         f"head's classes")
    measured, guarded = hold_out(task, split, recipe.retention.measure_share, recipe.train.seed)
    return Source(labels, measured, guarded, known is None)


def known_labels(recipe: Recipe) -> list[str] | None:
    """The classes of the pretrained head's rows: model.source_labels, else a Hugging Face config's id2label; None
    when nothing names them (a bare encoder, a plain module's checkpoint without model.source_labels)."""
    if recipe.model.source_labels:
        return list(recipe.model.source_labels)
    if recipe.model.is_factory:
        return None
    from graft.models.hf import config_labels

    return config_labels(recipe.model.name, recipe.model.revision)


def own_labels(recipe: Recipe, task: Task) -> list[str]:
    """The classes retention.data itself holds, in graft's class order (what a probe is fitted to)."""
    from graft.data.splits import class_order

    data = recipe.data.model_copy(update={"train": recipe.retention.data, "validation": None, "test": None})
    try:
        rows = task.read_examples(recipe.model_copy(update={"data": data}))
    except GraftError as e:
        raise GraftError(f"retention.data: {e}") from None
    return class_order([label for _, label in rows])


def hold_out(task: Task, split: Any, share: float, seed: int) -> tuple[Any, Any]:
    """`share` of every class of `split` (stratified, seeded), and the rest."""
    from graft.data.splits import stratified_split

    if share == 1:
        return split, split.select([])
    picked = stratified_split([str(i) for i in task.label_ids(split)], {"measured": share}, seed)
    return split.select(picked["measured"]), split.select(picked["train"])


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
