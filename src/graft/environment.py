"""Where a run happened: versions, machine, devices; recorded in run.json so results can be compared honestly."""

from __future__ import annotations

import os
import platform
from importlib import metadata
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
