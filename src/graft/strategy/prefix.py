"""Prefix tuning: learned keys and values prepended in every attention layer, the model frozen; for encoders
(BERT) and decoders (Llama, GPT-2) alike.

Ours because peft 0.21 cannot prefix-tune under transformers 5: it looks for a `past_key_values` argument, which
transformers renamed to `cache`. The prefix rides in the model's own key/value cache, so attention is the model's
own code; positions are given explicitly, so the real tokens keep the positions they had in pretraining.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from graft.errors import GraftError

PADDING_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")
"""Models that number positions from their padding index: an explicit 0, 1, 2, ... would shift them."""


class PrefixTuned(nn.Module):
    """`model` with `num_tokens` learned key/value pairs per layer and head; `model(**batch)` as before."""

    def __init__(self, model: nn.Module, num_tokens: int) -> None:
        super().__init__()
        config = model.config
        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        accepts = set(inspect.signature(base.forward).parameters) if isinstance(base, nn.Module) else set()
        kind = getattr(config, "model_type", type(model).__name__)
        if not {"cache", "position_ids"} <= accepts or kind in PADDING_POSITIONS:
            raise GraftError(f"strategy.name = 'prefix': this model ({kind}) takes no key/value cache with explicit "
                             f"positions; use prompt, ptuning or lora")
        self.model = model
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = (config.num_hidden_layers, 2, kv_heads, num_tokens, head_dim)
        self.prefix = nn.Parameter(torch.randn(shape) * config.initializer_range)

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs: Any) -> Any:
        from transformers import DynamicCache

        batch, length = input_ids.shape
        tokens = self.prefix.shape[3]
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.prefix):
            cache.update(keys.unsqueeze(0).expand(batch, -1, -1, -1), values.unsqueeze(0).expand(batch, -1, -1, -1),
                         layer)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = torch.cat([attention_mask.new_ones((batch, tokens)), attention_mask], dim=1)
        positions = torch.arange(length, device=input_ids.device).expand(batch, -1)
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, **inputs)
