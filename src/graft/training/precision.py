"""Mixed precision: what stays in fp32 when the rest of the model runs under bf16/fp16 autocast."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def keep_fp32(layer: nn.Module) -> None:
    """Run `layer` in fp32 under autocast: the output layer makes the logits and the loss, where the rounding of a
    16-bit matmul over a large vocabulary or many classes costs the most. Its parameters stay as they are (fp32)."""
    forward = layer.forward

    def fp32_forward(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return forward(*(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                             for a in args), **kwargs)

    layer.forward = fp32_forward  # type: ignore[method-assign]
