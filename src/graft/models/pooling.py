"""How a text classifier turns token states into the vector its head reads, matched to how the backbone was trained.

BERT's classifier reads its pooler (a dense layer and tanh on the first token, trained by next-sentence
prediction). A sentence-transformers model never trained that pooler: it was trained on the mean of its token
states, and says so in `1_Pooling/config.json`. Reading its untrained pooler makes a linear probe near chance
(measured: 0.51 against 0.79 for the mean, on an unseen sentiment set). `auto` reads that file; `mean` and `cls`
replace the base model's pooler by a parameter-free one; `pooler` keeps it.

The choice is written in the saved model's config (`graft_pooling`), and graft applies it again when it loads the
model. Written here because transformers' sequence classifiers have no pooling switch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.errors import GraftError

CONFIG_KEY = "graft_pooling"


class TokenPooler(nn.Module):
    """The masked mean of the token states, or the first token's state; no parameters. The attention mask arrives
    through a hook on the base model, since the pooler is called with the token states alone."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mask is None or self.mask.shape != hidden.shape[:2]:
            return hidden.mean(dim=1)
        mask = self.mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def choose_pooling(asked: str, model: nn.Module, source: str) -> tuple[str, str]:
    """(mode, why) for `model.pooling`; `source` is the model's folder (where sentence-transformers' config is)."""
    has_pooler = getattr(model.base_model, "pooler", None) is not None
    if asked == "auto":
        kept = getattr(model.config, CONFIG_KEY, None)
        if kept is not None and has_pooler:  # a graft run's model/ folder, fine-tuned again
            return kept, f"auto: the graft run that saved this model pooled by {kept}"
        declared = sentence_transformers_pooling(Path(source))
        if declared is not None and has_pooler:
            return declared, f"auto: the model's sentence-transformers pooling config says {declared}"
        return "pooler", "auto: the model's own"
    if asked != "pooler" and not has_pooler:
        raise GraftError(f"model.pooling = {asked!r}: this model's base has no pooler to replace (BERT-style models "
                         f"have one); use auto")
    return asked, "model.pooling says so"


def apply_pooling(model: nn.Module, mode: str) -> None:
    """Make the base model's pooler `mode` (mean or cls; `pooler` leaves it) and note it in the config."""
    model.config.update({CONFIG_KEY: mode})
    if mode == "pooler":
        return
    base = model.base_model
    pooler = TokenPooler(mode)
    base.pooler = pooler

    def keep_mask(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pooler.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    base.register_forward_pre_hook(keep_mask, with_kwargs=True)


def saved_pooling(model: nn.Module) -> str:
    return getattr(model.config, CONFIG_KEY, None) or "pooler"


def sentence_transformers_pooling(folder: Path) -> str | None:
    """`mean` or `cls` from a sentence-transformers model folder's pooling module config; None when there is none."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        path = next(m["path"] for m in modules if m.get("type", "").endswith("Pooling"))
        config = json.loads((folder / path / "config.json").read_text())
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    return None
