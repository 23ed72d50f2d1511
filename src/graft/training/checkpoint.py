"""Checkpoints that are never half-written: build in a hidden folder, then rename.

A checkpoint is `checkpoints/step-00000120/`: accelerate's full training state (model, optimiser, scheduler,
scaler, every process's RNG) plus graft's `loop_state.json`, written last. A rename is atomic, so a folder with
that name is complete; older checkpoints are pruned only after the new one exists. The best model (weights only)
lives apart in `checkpoints/best/` and is replaced the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_model
from torch import nn

from graft.files import old_path, replace, temp_path, write_json

PREFIX = "step-"
STATE_FILE = "loop_state.json"
BEST = "best"


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, loop_state: dict[str, Any],
                    keep_last: int) -> Path:
    """Save the full training state at `step`; keep the newest `keep_last`. Every process must call this."""
    final = root / f"{PREFIX}{step:08d}"
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Every process writes its own RNG file into tmp: none may still be writing when it is renamed.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, loop_state)
        replace(tmp, final)  # the same step saved twice (e.g. an eval and the end): the new one wins
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore the full training state in place; return graft's loop state."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def save_best(accelerator: Accelerator, model: nn.Module, root: Path, meta: dict[str, Any]) -> None:
    """Replace `checkpoints/best/` with the current weights. Every process must call this."""
    final = root / BEST
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_model(model, tmp)
    # save_model creates and lists tmp on every process: none may still be in it when it is renamed.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "best.json", meta)
        replace(tmp, final)
    accelerator.wait_for_everyone()


def load_best(accelerator: Accelerator, model: nn.Module, root: Path) -> dict[str, Any] | None:
    """Load the best weights into `model` if there are any; return their metadata."""
    path = root / BEST
    if not (path / "best.json").is_file():
        path = old_path(root / BEST)  # a crash between save_best's two renames leaves the previous best here
    if not (path / "best.json").is_file():
        return None
    # Read on the CPU; load_state_dict copies into the parameters wherever they live.
    load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"))
    return json.loads((path / "best.json").read_text())
