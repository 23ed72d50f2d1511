"""The run directory: refuse what cannot be used as asked, claim it without losing a completed run, write the
record atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from graft.errors import GraftError
from graft.files import write_json, write_text
from graft.recipe import Recipe, validate_recipe

if TYPE_CHECKING:
    from accelerate import Accelerator

RECIPE_FILE = "recipe.yaml"
RECORD_FILE = "run.json"
MODEL_DIR = "model"
CKPT_DIR = "checkpoints"

# Changing these between an interrupted run and its resumption would silently train something else.
RESUME_FIXED = ("task", "model", "data", "strategy", "train.batch_size", "train.grad_accum", "train.seed")


def check_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse early, before anything slow is loaded, a run directory that cannot be used as asked."""
    from graft.training.checkpoint import list_checkpoints

    run_dir = recipe.output.dir
    if resume:
        if not list_checkpoints(run_dir / CKPT_DIR):
            raise GraftError(f"--resume: {run_dir} has no complete checkpoint to resume from; start without --resume")
        _check_resumable(recipe, run_recipe(run_dir))
    elif occupied(run_dir) and not overwrite:
        raise GraftError(f"output.dir {run_dir} already holds files; pass --resume to continue that run, "
                         f"--overwrite to replace it, or choose another output.dir")


def claim_run_dir(accelerator: Accelerator, recipe: Recipe, overwrite: bool) -> Path | None:
    """Create the run directory and save the resolved recipe in it.

    With overwrite, the old run moves to `<dir>.replaced` and is deleted only when the new run completes. If a
    `.replaced` run is already there, the run in `<dir>` is a replacement that failed (unless it completed), so
    it is the one discarded: the last completed run is never lost.
    """
    run_dir = recipe.output.dir
    previous = run_dir.with_name(f"{run_dir.name}.replaced") if overwrite and occupied(run_dir) else None
    if accelerator.is_main_process:
        if previous is not None:
            if previous.exists() and status(run_dir) != "completed":
                shutil.rmtree(run_dir)
            else:
                shutil.rmtree(previous, ignore_errors=True)
                os.replace(run_dir, previous)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / RECIPE_FILE, yaml.safe_dump(recipe.dump(), sort_keys=False))
    accelerator.wait_for_everyone()
    return previous


def occupied(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def status(run_dir: Path) -> str | None:
    return read_record(run_dir).get("status")


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run's run.json; empty when there is none (or it cannot be read)."""
    try:
        return json.loads((run_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _check_resumable(new: Recipe, old: Recipe) -> None:
    a, b = _flatten(old.dump()), _flatten(new.dump())
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    fixed = [k for k in changed if any(k == f or k.startswith(f + ".") for f in RESUME_FIXED)]
    if fixed:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in fixed[:3])
        raise GraftError(f"--resume: the recipe changed where a resumed run cannot follow ({shown}); "
                         f"resume with the run's own recipe ({new.output.dir / RECIPE_FILE}) or start a new run")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_record(accelerator: Accelerator, run_dir: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        write_json(run_dir / RECORD_FILE, record)


def run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise GraftError(f"{run_dir}: not a graft run directory ({RECIPE_FILE} missing)")
    return validate_recipe(yaml.safe_load(path.read_text()), str(path))


def reuse_completed(recipe: Recipe) -> dict[str, Any] | None:
    """The record of a run that already completed in recipe.output.dir with this very recipe (what lets a
    comparison or a cross-validation resume); None when there is none. A completed run with another recipe is
    never overwritten unasked."""
    run_dir = recipe.output.dir
    if status(run_dir) != "completed":
        return None
    if run_recipe(run_dir).dump() != recipe.dump():
        raise GraftError(f"{run_dir}: a completed run with another recipe; pass --overwrite to train it again, or "
                         f"choose another output.dir")
    return json.loads((run_dir / RECORD_FILE).read_text())
