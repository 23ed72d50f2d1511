"""The embedded default: the packaged MiniLM fine-tuned four ways on a small support-intent dataset shipped with
graft, compared side by side."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from graft.recipe import load_recipe


def demo_recipe(output: Path) -> dict[str, Any]:
    """The demo's recipe tree: small, offline, a couple of minutes on 2 CPU cores."""
    data = resources.files("graft.demo") / "intents.csv"
    return {
        "model": {"name": "minilm", "max_length": 64},
        "data": {"train": str(data)},
        "optim": {"name": "adamw", "lr": 1.0e-4},
        "train": {"epochs": 3, "batch_size": 16, "seed": 0},
        "output": {"dir": str(output)},
    }


DEMO_STRATEGIES = ["scratch", "head_only", "discriminative", "lora"]


def run_demo(output: Path) -> dict[str, Any]:
    """Compare the demo's strategies into `output` (training each again) and return the comparison."""
    import sys

    from graft.compare import compare

    return compare(load_recipe(demo_recipe(output)), DEMO_STRATEGIES, overwrite=True,
                   say=lambda line: print(line, file=sys.stderr))
