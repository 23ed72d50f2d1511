"""The run directory: refuse what cannot be used as asked, claim it without losing a completed run, write the
record atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from graft.errors import GraftError
from graft.files import read_json, write_json, write_text
from graft.recipe import Recipe, validate_recipe

if TYPE_CHECKING:
    from accelerate import Accelerator

RECIPE_FILE = "recipe.yaml"
RECORD_FILE = "run.json"
MODEL_DIR = "model"
CKPT_DIR = "checkpoints"

# What a resumed run can change and have it take effect: the budget, how often it evaluates, logs and saves, when
# it stops early, and evaluation batch size. Anything else (the optimiser's and schedule's values come back from the
# checkpoint; data, model and strategy define what is trained) is refused, so no record claims a value never used.
RESUME_ALLOWED = ("train.epochs", "train.max_steps", "train.log_every", "train.eval_batch_size", "train.num_workers",
                  "eval.every_steps", "eval.patience", "eval.min_delta", "checkpoint.every_steps",
                  "checkpoint.keep_last", "output.tensorboard", "output.trackers",
                  "output.progress_every_s")


def check_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse early, before anything slow is loaded, a run directory that cannot be used as asked. Only a graft
    run (a folder with its run.json) is ever replaced: any other folder with files in it is refused, --overwrite
    or not."""
    from graft.training.checkpoint import list_checkpoints

    run_dir = recipe.output.dir
    if run_dir.exists() and not run_dir.is_dir():
        raise GraftError(f"output.dir {run_dir} is a file, not a folder; choose a folder for the run")
    taken, record = occupied(run_dir), read_record(run_dir)
    if taken and "status" not in record:
        raise GraftError(f"output.dir {run_dir} holds files and is not a graft run (no {RECORD_FILE}); graft never "
                         f"deletes them, --overwrite or not: choose an empty or new folder")
    saved = bool(list_checkpoints(run_dir / CKPT_DIR))
    if resume:
        if not saved:
            start = "start it again with --overwrite" if taken else "start it without --resume"
            raise GraftError(f"--resume: {run_dir} has no complete checkpoint to resume from (the run stopped before "
                             f"its first one); {start}")
        _check_resumable(recipe, run_recipe(run_dir))
    elif taken and not overwrite:
        # A run stopped before its first checkpoint has nothing to resume: --resume would only send the user back.
        choices = ("pass --resume to continue it, --overwrite to replace it" if saved else
                   "it stopped before its first checkpoint, so there is nothing to resume: pass --overwrite to start "
                   "it again")
        raise GraftError(f"output.dir {run_dir} already holds a run ({record['status']}); {choices}, or choose another "
                         f"output.dir")
    replaced = run_dir.with_name(f"{run_dir.name}.replaced")
    if overwrite and occupied(replaced) and not is_run_dir(replaced):
        raise GraftError(f"--overwrite: the old run would move to {replaced}, which holds files that are not a graft "
                         f"run; move them away or choose another output.dir")


def claim_run_dir(accelerator: Accelerator, recipe: Recipe, overwrite: bool, resume: bool = False) -> Path | None:
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
        if not resume:  # what marks the folder as a graft run from its first moment
            write_json(run_dir / RECORD_FILE, {"status": "starting", "recipe": recipe.dump()})
    accelerator.wait_for_everyone()
    return previous


def occupied(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a graft run: a folder whose run.json is a record with a status."""
    return "status" in read_record(path)


class RunLock:
    """An exclusive lock on a run directory while a process trains into it: an OS file lock on
    `<parent>/.<name>.lock`, released by the kernel when the process ends, however it ends (the file is removed
    when the run ends; one left by a killed process is simply locked again). The file sits beside the run, not in
    it, so that the lock holds while an --overwrite moves the old run aside."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        while self.fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise GraftError(f"output.dir {self.run_dir}: cannot write beside it ({e.strerror}); choose a "
                                 f"folder you can write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise GraftError(f"output.dir {self.run_dir}: another graft process (pid {holder}) is training into "
                                 f"it; wait for it to end or choose another output.dir") from None
            if _same_file(fd, self.path):  # else its holder removed it as we opened it: take the new one
                self.fd = fd
            else:
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # removed while still held, so no one can lock the old file after us
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def status(run_dir: Path) -> str | None:
    return read_record(run_dir).get("status")


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run's run.json; empty when there is none (or it cannot be read)."""
    return read_json(run_dir / RECORD_FILE)


def _check_resumable(new: Recipe, old: Recipe) -> None:
    a, b = _flatten(old.dump()), _flatten(new.dump())
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    fixed = [k for k in changed if k not in RESUME_ALLOWED]
    if fixed:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in fixed[:3])
        more = f" and {len(fixed) - 3} more" if len(fixed) > 3 else ""
        raise GraftError(f"--resume: the recipe changed where a resumed run cannot follow ({shown}{more}); a resume "
                         f"may change only {', '.join(RESUME_ALLOWED)}; resume with the run's own recipe "
                         f"({new.output.dir / RECIPE_FILE}) or start a new run")


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


def record_failure(accelerator: Accelerator, run_dir: Path, record: dict[str, Any], error: BaseException) -> None:
    """Write the record of a run that stopped with `error`, after removing the half-built files it left (which
    frees the space a full disk needs for the record). A full disk, then or now, becomes one line that says so."""
    if accelerator.is_main_process:
        for leftover in sorted(run_dir.rglob(".tmp-*"), reverse=True):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    try:
        write_record(accelerator, run_dir, record)
    except OSError as unwritten:
        if not (disk_full(error) or disk_full(unwritten)):
            raise
        raise DiskFull(run_dir, error if disk_full(error) else unwritten, recorded=False) from error
    if disk_full(error):
        raise DiskFull(run_dir, error, recorded=True) from error


def disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFull(GraftError):
    """The disk under the run directory filled up: what was lost, and what to do."""

    def __init__(self, run_dir: Path, error: OSError, recorded: bool) -> None:
        free = shutil.disk_usage(run_dir).free if run_dir.exists() else 0
        now = read_record(run_dir).get("status", "running")
        kept = f"{RECORD_FILE} says 'failed'" if recorded else f"{RECORD_FILE} could not be updated: it says {now!r}"
        super().__init__(f"disk full under output.dir {run_dir} ({error.strerror or error}; {free / 2**20:.0f} MiB "
                         f"free now); half-written files were removed and {kept}; free space (checkpoint.keep_last "
                         f"1 keeps fewer checkpoints) and run again: --resume continues from the last checkpoint")


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
