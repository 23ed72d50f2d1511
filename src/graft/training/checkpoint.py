"""Checkpoints that are never half-written: build in a hidden folder, then rename.

A checkpoint is `checkpoints/step-00000120/`: accelerate's full training state (model, optimiser, scheduler,
scaler, every process's RNG) plus graft's `manifest.json` (each file's size and SHA-256, checked before a resume
loads it) and `loop_state.json`, written last. A rename is atomic, so a folder with that name is complete; older
checkpoints are pruned only after the new one exists. The best model (weights only)
lives apart in `checkpoints/best/` and is replaced the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_model
from torch import nn

from graft.files import old_path, replace, temp_path, write_json

PREFIX = "step-"
STATE_FILE = "loop_state.json"
MANIFEST = "manifest.json"
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
        write_json(tmp / MANIFEST, manifest(tmp))
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


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file of a checkpoint with its size and SHA-256, so a damaged one is found before it is loaded."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MANIFEST, STATE_FILE)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: Path) -> str:
    """Why the checkpoint at `path` cannot be trusted ("" when its files match its manifest; a checkpoint from
    before manifests is taken as it is)."""
    try:
        listed = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):
        return f"{MANIFEST} unreadable"
    for name, expected in listed.items():
        file = path / name
        if not file.is_file():
            return f"{name} missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} is {file.stat().st_size} bytes, was {expected['bytes']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} changed since it was saved"
    return ""


def last_good(root: Path, say: Callable[[str], None]) -> Path:
    """The newest checkpoint whose files match their manifest; each damaged newer one is named and passed over."""
    from graft.errors import GraftError

    found = list_checkpoints(root)
    for path in reversed(found):
        why = damage(path)
        if not why:
            return path
        say(f"warning: checkpoint {path.name} is damaged ({why}); trying the one before")
    raise GraftError(f"--resume: every checkpoint in {root} is damaged ({len(found)} tried); start the run again "
                     f"with --overwrite")


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
