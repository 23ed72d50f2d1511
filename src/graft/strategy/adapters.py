"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) in each transformer block.

Ours because no maintained library fits transformers 5 (the `adapters` package pins 4.57). An adapter is
down-projection, non-linearity, up-projection and a residual; the up-projection starts at zero, so the model with
its adapters computes exactly what it computed before. Each adapter is a submodule next to the layer it follows
(`attention.output.dense_adapter`) and is applied by a forward hook on that layer: the model's code is untouched.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from graft.errors import GraftError
from graft.recipe import AdapterSpec

ATTENTION_OUTPUT = re.compile(r"\.attention\.output\.dense$")
"""The attention block's output projection (BERT, RoBERTa, ELECTRA, ViT)."""
FEEDFORWARD_OUTPUT = re.compile(r"(?<!attention)\.output\.dense$")
"""The feed-forward block's output projection, before its residual and norm."""
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    def __init__(self, size: int, reduction: int, non_linearity: str) -> None:
        super().__init__()
        self.down = nn.Linear(size, max(1, size // reduction))
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(self.down.out_features, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def add_adapters(root: nn.Module, spec: AdapterSpec) -> set[str]:
    """Insert an adapter after each attention output (houlsby) and feed-forward output; return their parameter
    names in `root`."""
    patterns = [FEEDFORWARD_OUTPUT] if spec.kind == "pfeiffer" else [ATTENTION_OUTPUT, FEEDFORWARD_OUTPUT]
    targets = [(name, m) for name, m in root.named_modules()
               if isinstance(m, nn.Linear) and any(p.search(name) for p in patterns)]
    if not targets:
        raise GraftError("strategy.name = 'adapter': no transformer block outputs found (modules named "
                         "*.attention.output.dense and *.output.dense, as in BERT, RoBERTa, ViT); use lora")
    added = set()
    for name, layer in targets:
        parent_name, _, leaf = name.rpartition(".")
        adapter = Bottleneck(layer.out_features, spec.reduction, spec.non_linearity)
        root.get_submodule(parent_name).add_module(f"{leaf}_adapter", adapter)
        layer.register_forward_hook(lambda _module, _inputs, output, adapter=adapter: adapter(output))
        added |= {f"{parent_name}.{leaf}_adapter.{p}" for p, _ in adapter.named_parameters()}
    return added
