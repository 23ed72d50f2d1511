"""Checkpoints that are never half-written: build in a hidden folder, then rename.

A checkpoint is `checkpoints/step-00000120/`: accelerate's full training state (model, optimiser, scheduler,
scaler, every process's RNG) plus graft's `manifest.json` (each file's size and SHA-256, checked before a resume
loads it) and `loop_state.json`, written last. A rename is atomic, so a folder with that name is complete; older
checkpoints are pruned only after the new one exists. The best model (weights only)
lives apart in `checkpoints/best/` and is replaced the same way.

Weights the optimiser never updates (a LoRA run's frozen base, a probe's backbone, groups frozen throughout) are
left out of both: a resumed run rebuilds them from the model it started from, and `left_out.json` holds their names
and a SHA-256 of their values, so a base model that changed since is refused rather than trained on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import clean_state_dict_for_safetensors
from safetensors.torch import load_model, save_file
from torch import nn

from graft.errors import GraftError
from graft.files import old_path, replace, temp_path, write_json

PREFIX = "step-"
STATE_FILE = "loop_state.json"
MANIFEST = "manifest.json"
LEFT_OUT = "left_out.json"
BEST = "best"
WEIGHTS = "model.safetensors"


class LeftOut:
    """Which weights checkpoints leave out: every parameter the optimiser does not update (a LoRA run's base, a
    probe's backbone, groups frozen for the whole run). They keep the values they were built with, so a resumed
    run rebuilds them, and the digest saved beside checks that it did."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._digests: dict[tuple[int, tuple[str, ...]], str] = {}

    def names(self, model: nn.Module) -> list[str]:
        """The state-dict keys of `model` that hold parameters never trained (tied aliases included)."""
        return sorted(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in self.trained)

    def record(self, model: nn.Module, names: list[str]) -> dict[str, Any]:
        return {"names": names, "sha256": self.digest(model, names)}

    def digest(self, model: nn.Module, names: list[str]) -> str:
        """`weights_digest`, once per model: values that never train never change."""
        key = (id(model), tuple(names))
        if key not in self._digests:
            self._digests[key] = weights_digest(model, names)
        return self._digests[key]


def weights_digest(model: nn.Module, names: list[str]) -> str:
    """SHA-256 of the named parameters' names and bytes."""
    params = dict(model.named_parameters(remove_duplicate=False))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def check_left_out(digest: str, saved: dict[str, Any], where: Path) -> None:
    """Refuse weights saved beside a base whose values (`digest` of the model now) differ from the saved ones."""
    if digest != saved["sha256"]:
        raise GraftError(f"{where}: the weights it left out (never trained, {len(saved['names'])} tensors) differ "
                         f"from the model's now: model.name or model.checkpoint points at changed files; restore "
                         f"them, or train again with --overwrite")


def leave_out_untrained(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> LeftOut:
    """From now on, `accelerator.save_state` writes only the weights `optimizer` trains (and `load_state` checks
    the rest are what they were); returns the object `save_best` takes to do the same."""
    left_out = LeftOut(optimizer)

    def on_save(models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        if len(models) != len(weights):  # FSDP/DeepSpeed save their own way: leave them whole
            return
        records = []
        for model, state in zip(models, weights, strict=True):
            names = [n for n in left_out.names(model) if n in state]
            for name in names:
                del state[name]
            records.append(left_out.record(model, names))
        if accelerator.is_main_process:
            write_json(Path(output_dir) / LEFT_OUT, records)

    def on_load(models: list[nn.Module], input_dir: str) -> None:
        path = Path(input_dir) / LEFT_OUT
        if path.is_file():
            for model, saved in zip(models, json.loads(path.read_text()), strict=True):
                check_left_out(left_out.digest(model, saved["names"]), saved, Path(input_dir))

    accelerator.register_save_state_pre_hook(on_save)
    accelerator.register_load_state_pre_hook(on_load)
    return left_out


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
    found = list_checkpoints(root)
    for path in reversed(found):
        why = damage(path)
        if not why:
            return path
        say(f"warning: checkpoint {path.name} is damaged ({why}); trying the one before")
    raise GraftError(f"--resume: every checkpoint in {root} is damaged ({len(found)} tried); start the run again "
                     f"with --overwrite")


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore the full training state in place; return graft's loop state. A checkpoint that left untrained
    weights out loads the rest (its `left_out.json` was checked against the model by the load hook)."""
    accelerator.load_state(str(path), strict=not (path / LEFT_OUT).is_file())
    return json.loads((path / STATE_FILE).read_text())


def save_best(accelerator: Accelerator, model: nn.Module, root: Path, meta: dict[str, Any],
              left_out: LeftOut | None = None) -> None:
    """Replace `checkpoints/best/` with the current weights (those that trained, with `left_out`). Every process
    must call this."""
    final = root / BEST
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    if left_out is None:
        accelerator.save_model(model, tmp)
        # save_model creates and lists tmp on every process: none may still be in it when it is renamed.
        accelerator.wait_for_everyone()
    else:
        state = accelerator.get_state_dict(model)  # gathers on every process
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            names = left_out.names(unwrapped)
            kept = clean_state_dict_for_safetensors({k: v for k, v in state.items() if k not in set(names)})
            tmp.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in kept.items()}, tmp / WEIGHTS, metadata={"format": "pt"})
            meta = {**meta, "left_out": left_out.record(unwrapped, names)}
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
    meta = json.loads((path / "best.json").read_text())
    unwrapped = accelerator.unwrap_model(model)
    if "left_out" in meta:
        check_left_out(weights_digest(unwrapped, meta["left_out"]["names"]), meta["left_out"], path)
    # Read on the CPU; load_state_dict copies into the parameters wherever they live.
    missing, unexpected = load_model(unwrapped, str(path / WEIGHTS), strict=False)
    expected = set(meta.get("left_out", {}).get("names", []))
    if unexpected or set(missing) - expected:
        raise GraftError(f"{path}: its weights do not fit the model ({len(unexpected)} unexpected, "
                         f"{len(set(missing) - expected)} missing, e.g. {[*unexpected, *missing][:2]}); train again "
                         f"with --overwrite")
    return meta
