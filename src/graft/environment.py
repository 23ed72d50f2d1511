"""Where a run happened: versions, machine, devices; recorded in run.json so results can be compared honestly."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from accelerate import Accelerator

PACKAGES = ("graft", "torch", "transformers", "accelerate", "datasets", "peft", "tokenizers")


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(accelerator: Accelerator) -> dict[str, Any]:
    """Versions, machine and the distributed setup of this process group."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "mixed_precision": accelerator.mixed_precision,
        "packages": versions,
    }


PROC = Path("/proc/self")


def reset_peak_memory() -> None:
    """Count this run's peak memory afresh, so that several runs in one process (a comparison, a cross-validation)
    each report their own: Linux resets the peak RSS on `5` written to clear_refs."""
    import torch

    with contextlib.suppress(OSError):  # not Linux: the peak is the process's since it started (ru_maxrss)
        (PROC / "clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float:
    """Peak resident memory since `reset_peak_memory` (Linux VmHWM; elsewhere ru_maxrss), or on a GPU the peak
    of allocated GPU memory when larger."""
    import resource

    import torch

    try:
        line = next(x for x in (PROC / "status").read_text().splitlines() if x.startswith("VmHWM:"))
        peak = int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return round(peak, 1)
