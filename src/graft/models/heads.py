"""The new head: find the output layer, replace it to fit the target labels, keep what the old one knew.

The new output layer is Xavier-initialised; rows of target labels that the pretrained head already had (same
class name) are copied from it instead. A declared head (pooling, BatchNorm, dropout, a hidden layer) replaces
the output layer the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from graft.errors import GraftError
from graft.recipe import HeadSpec


class ConcatPool(nn.Module):
    """Adaptive average and/or max pooling of a feature map [B, C, H, W] to [B, C] or [B, 2C]: any input size."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.kind in ("avg", "avgmax"):
            parts.append(x.mean(dim=(-2, -1)))
        if self.kind in ("max", "avgmax"):
            parts.append(x.amax(dim=(-2, -1)))
        return torch.cat(parts, dim=1)


@dataclass
class HeadReport:
    path: str
    """Where the new head sits, e.g. `classifier` or `linear`."""
    copied: list[str] = field(default_factory=list)
    """Target labels whose rows came from the pretrained head."""
    kept: bool = False
    """The pretrained output layer stays (a language model): no new head."""

    def line(self) -> str:
        if self.kept:
            return f"the pretrained output layer ({self.path}) is kept: a language model needs no new head"
        copied = f"; rows copied from the pretrained head for {', '.join(self.copied)}" if self.copied else ""
        return f"new head at {self.path}{copied}"


def find_output_layer(root: nn.Module, configured: str | None, within: Sequence[str] = ()) -> str:
    """The configured attribute path, else the last nn.Linear (among `within` modules when given)."""
    if configured:
        try:
            root.get_submodule(configured)
        except AttributeError:
            linears = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
            raise GraftError(f"model.head.path = {configured!r}: no such module; Linear layers here: "
                             f"{', '.join(linears[-5:]) or 'none'}") from None
        return configured
    linears = [name for name, m in root.named_modules() if isinstance(m, nn.Linear)
               and (not within or any(name == w or name.startswith(w + ".") for w in within))]
    if not linears:
        raise GraftError("model.head.path: the model has no nn.Linear to replace; name its output layer in "
                         "model.head.path")
    return linears[-1]


def build_head(in_shape: Sequence[int], n_labels: int, spec: HeadSpec, bias: bool = True) -> nn.Module:
    """A Linear to `n_labels`, or the declared head, for inputs of shape `in_shape` (without the batch); `bias`
    False for architectures whose output layer has none (Llama's `score`), so a reload by transformers keeps it."""
    spatial = len(in_shape) == 3
    if spatial and spec.pool == "none":
        raise GraftError(f"model.head.pool: the head's input is a feature map {list(in_shape)}; pool it with "
                         f"model.head.pool: avg, max or avgmax")
    if not spatial and spec.pool != "none":
        raise GraftError(f"model.head.pool = {spec.pool!r}: the head's input is already a vector {list(in_shape)}; "
                         f"set pool: none, or model.head.input_from a module that outputs a feature map")
    if len(in_shape) not in (1, 3):
        raise GraftError(f"model.head: cannot build a head on inputs of shape {list(in_shape)}; expected [features] "
                         f"or a feature map [C, H, W]")
    width = in_shape[0] * (2 if spec.pool == "avgmax" else 1)
    layers: list[nn.Module] = [ConcatPool(spec.pool)] if spatial else []
    if spec.batchnorm:
        layers.append(nn.BatchNorm1d(width))
    if spec.dropout:
        layers.append(nn.Dropout(spec.dropout))
    if spec.hidden:
        layers += [_xavier(nn.Linear(width, spec.hidden)), nn.ReLU()]
        width = spec.hidden
    out = _xavier(nn.Linear(width, n_labels, bias=bias or bool(layers)))
    return nn.Sequential(*layers, out) if layers else out


def replace_head(root: nn.Module, path: str, head: nn.Module, labels: list[str],
                 source_labels: Sequence[str] | None) -> HeadReport:
    """Put `head` at `path`; copy the old output rows of labels it shares with `source_labels`."""
    old = root.get_submodule(path)
    report = HeadReport(path)
    new_out = _last_linear(head)
    if source_labels and isinstance(old, nn.Linear) and old.in_features == new_out.in_features:
        where = {name: i for i, name in enumerate(source_labels) if i < old.out_features}
        with torch.no_grad():
            for row, label in enumerate(labels):
                if label in where:
                    new_out.weight[row] = old.weight[where[label]]
                    if new_out.bias is not None and old.bias is not None:
                        new_out.bias[row] = old.bias[where[label]]
                    report.copied.append(label)
    parent_path, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, attr, head)
    return report


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def _xavier(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
