"""The embedded default: the packaged MiniLM fine-tuned on a small support-intent dataset shipped with graft."""

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
        "train": {"epochs": 4, "batch_size": 16, "seed": 0},
        "output": {"dir": str(output)},
    }


def run_demo(output: Path) -> dict[str, Any]:
    """Train the demo into `output` (replacing an earlier demo run there) and return its record."""
    from graft.pipeline import train

    return train(load_recipe(demo_recipe(output)), overwrite=True)
