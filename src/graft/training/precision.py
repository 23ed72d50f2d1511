"""Mixed precision: which one a run uses (`auto`: bf16 where the hardware computes it natively), and what stays in
fp32 when the rest of the model runs under bf16/fp16 autocast."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

BF16_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX-512 BF16"}
"""CPU features that compute bf16 natively (Linux /proc/cpuinfo names); without them bf16 is emulated, slower than
fp32."""


def resolve_precision(asked: str) -> str:
    """The precision a run uses: `asked`, or for `auto` bf16 on hardware with native bf16, else fp32."""
    return asked if asked != "auto" else auto_precision()[0]


def precision_choice(asked: str) -> dict[str, str]:
    """What the run uses and why, for its record and its first lines."""
    if asked != "auto":
        return {"used": asked, "why": "train.precision says so"}
    used, why = auto_precision()
    return {"used": used, "why": f"train.precision: auto, and {why}"}


@functools.cache
def auto_precision() -> tuple[str, str]:
    """(precision, why) for `train.precision: auto` on this machine."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major >= 8:
            return "bf16", f"the GPU computes bf16 natively (compute capability {major}.{minor})"
        return "fp32", f"the GPU has no native bf16 (compute capability {major}.{minor} < 8.0); fp16 is for you to ask"
    found = [name for flag, name in BF16_CPU_FLAGS.items() if flag in _cpu_flags()]
    if found:
        return "bf16", f"the CPU computes bf16 natively ({', '.join(found)})"
    return "fp32", "the CPU has no native bf16 (AMX or AVX-512 BF16), where bf16 would be slower than fp32"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so fp32
        return set()
    line = next((x for x in text.splitlines() if x.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


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
