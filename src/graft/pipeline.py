"""The orchestrator: recipe → data → model → loop → evaluation → run record, for train / eval / predict.

Each public function here is what one CLI command calls, and what the Python API exposes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from graft.errors import GraftError
from graft.recipe import Recipe, load_recipe, validate_recipe

if TYPE_CHECKING:
    from collections.abc import Callable

    import datasets
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from graft.data import TextSplits
    from graft.models.hf import LoadedModel
    from graft.training.loop import LoopState

RECIPE_FILE = "recipe.yaml"
RECORD_FILE = "run.json"
MODEL_DIR = "model"
CKPT_DIR = "checkpoints"

# Changing these between an interrupted run and its resumption would silently train something else.
RESUME_FIXED = ("task", "model", "data", "train.batch_size", "train.grad_accum", "train.seed")


def train(recipe: Recipe | str | Path | dict[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
          resume: bool = False, overwrite: bool = False, hooks: list[Callable] | None = None) -> dict[str, Any]:
    """Fine-tune as the recipe says, evaluate on test, write the run directory; return the run record."""
    from accelerate.utils import set_seed

    from graft.evaluation.predictions import evaluate
    from graft.models.hf import load_text_classifier
    from graft.tasks import text
    from graft.training import checkpoint
    from graft.training.logging import console_hooks
    from graft.training.loop import LoopState, Parts, fit, steps_per_epoch, total_steps
    from graft.training.optim import build_optimizer, build_scheduler, param_groups

    started = time.perf_counter()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    _check_run_dir(recipe, resume, overwrite)
    accelerator = _accelerator(recipe)
    run_dir = recipe.output.dir
    ckpt_dir = run_dir / CKPT_DIR
    say = _printer(accelerator)
    set_seed(recipe.train.seed)

    splits = _load_splits(recipe)
    for warning in splits.warnings:
        say(f"warning: {warning}")
    loaded = load_text_classifier(recipe.model.name, splits.labels, recipe.model.revision)
    model, tokenizer = loaded.model, loaded.tokenizer
    previous = _claim_run_dir(accelerator, recipe, overwrite and not resume)
    tokenized = {name: text.tokenize(getattr(splits, name), tokenizer, recipe.model.max_length)
                 for name in ("train", "validation", "test")}
    eval_batch = recipe.train.eval_batch_size or recipe.train.batch_size
    train_loader = text.train_loader(tokenized["train"], tokenizer, recipe.train.batch_size, recipe.train.seed,
                                     recipe.data.group_by_length, recipe.train.num_workers)
    val_loader = text.eval_loader(tokenized["validation"], tokenizer, eval_batch, recipe.train.num_workers)
    test_loader = text.eval_loader(tokenized["test"], tokenizer, eval_batch, recipe.train.num_workers)

    optimizer = build_optimizer(param_groups(model, recipe.optim.weight_decay), recipe.optim)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader)
    parts = Parts(model, optimizer, None, train_loader, val_loader, splits.labels)
    scheduler = build_scheduler(optimizer, recipe.schedule, total_steps=total_steps(parts, recipe.train),
                                steps_per_epoch=steps_per_epoch(parts, recipe.train),
                                metric_mode=recipe.eval.resolved_mode)
    if recipe.schedule.name == "plateau":
        accelerator.register_for_checkpointing(scheduler)
    else:
        scheduler = accelerator.prepare(scheduler)
    parts.scheduler = scheduler

    state = LoopState()
    if resume:
        last = checkpoint.list_checkpoints(ckpt_dir)[-1]
        state = LoopState(**checkpoint.load_checkpoint(accelerator, last))
        say(f"resuming from {last} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
    params = _param_counts(model)
    record = _new_record(recipe, splits, loaded, params, accelerator)
    _write_record(accelerator, run_dir, record)
    say(f"{len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test examples, "
        f"{len(splits.labels)} classes; {params['trainable']:,} of {params['total']:,} parameters train")

    setup_s = time.perf_counter() - started
    watchers = console_hooks(accelerator, run_dir, total_steps(parts, recipe.train), state, recipe.output.tensorboard)
    hooks = [*watchers, *(hooks or [])]
    try:
        state = fit(accelerator, parts, recipe.train, recipe.eval, recipe.checkpoint, ckpt_dir, state, hooks)
    except BaseException as e:
        _record_failure(accelerator, run_dir, record, state, e)
        if previous is not None:
            say(f"the run this one was replacing is kept at {previous}")
        raise

    best = checkpoint.load_best(accelerator, model, ckpt_dir)
    test_started = time.perf_counter()
    test_metrics = evaluate(accelerator, model, test_loader, splits.labels)
    test_s = time.perf_counter() - test_started
    _save_final_model(accelerator, model, tokenizer, run_dir / MODEL_DIR)

    record.update(status="completed", stopped=state.stopped, best=best)
    record["metrics"] = {"test": test_metrics, "validation": _best_validation(state), "history": state.history}
    record["timings"] = {
        "setup_s": round(setup_s, 3), "train_s": round(state.train_s, 3), "eval_s": round(state.eval_s, 3),
        "test_s": round(test_s, 3), "total_s": round(time.perf_counter() - started, 3), "steps": state.step,
        "steps_per_s": round(state.step / state.train_s, 4) if state.train_s else None,
    }
    record["peak_memory_mb"] = _peak_memory_mb()
    _write_record(accelerator, run_dir, record)
    if previous is not None and accelerator.is_main_process:
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.end_training()
    return record


def evaluate_run(run_dir: Path | str, data: Path | str | None = None) -> dict[str, Any]:
    """Metrics of a trained run on `data` (a labelled file), or on the run's own test split."""
    from graft.data import load_labelled_file
    from graft.evaluation.predictions import evaluate

    run = _open_run(Path(run_dir))
    if data is None:
        ds = _load_splits(run.recipe).test
    else:
        d = run.recipe.data
        ds = load_labelled_file(Path(data), text_column=d.text_column, label_column=d.label_column,
                                labels=run.labels, normalize_labels=d.normalize_labels)
    return evaluate(*_batches(run, ds), run.labels)


def predict_run(run_dir: Path | str, source: str, output: Path | str | None = None) -> list[dict[str, Any]]:
    """Labels and probabilities for each text of `source` (a file, or '-' for stdin lines).

    With `output`, rows are written there (CSV/TSV by suffix, else JSON lines), atomically.
    """
    import datasets

    from graft.data import read_unlabelled_texts
    from graft.evaluation.metrics import softmax
    from graft.evaluation.predictions import collect_logits

    run = _open_run(Path(run_dir))
    texts = read_unlabelled_texts(source, text_column=run.recipe.data.text_column)
    logits, _ = collect_logits(*_batches(run, datasets.Dataset.from_dict({"text": texts})))
    probs = softmax(logits) if len(texts) else np.zeros((0, len(run.labels)))
    rows = [{"text": t, "label": run.labels[int(row.argmax())], "score": float(row.max()),
             "probabilities": {name: float(v) for name, v in zip(run.labels, row, strict=True)}}
            for t, row in zip(texts, probs, strict=True)]
    if output is not None:
        write_predictions(rows, Path(output), run.labels)
    return rows


@dataclass
class _TrainedRun:
    recipe: Recipe
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]


def _open_run(run_dir: Path) -> _TrainedRun:
    """A finished run's recipe, model, tokenizer and class names."""
    from graft.models.hf import load_trained

    recipe = run_recipe(run_dir)
    model, tokenizer = load_trained(run_dir / MODEL_DIR)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return _TrainedRun(recipe, model, tokenizer, labels)


def _batches(run: _TrainedRun, ds: datasets.Dataset) -> tuple[Accelerator, nn.Module, DataLoader]:
    """The run's model and `ds` as padded batches, placed on the device the way training does it."""
    from accelerate import Accelerator

    from graft.tasks import text

    batch = run.recipe.train.eval_batch_size or run.recipe.train.batch_size
    loader = text.eval_loader(text.tokenize(ds, run.tokenizer, run.recipe.model.max_length), run.tokenizer, batch)
    accelerator = Accelerator()
    model, loader = accelerator.prepare(run.model, loader)
    return accelerator, model, loader


def write_predictions(rows: list[dict[str, Any]], path: Path, labels: list[str]) -> None:
    """CSV/TSV (one probability column per label) or JSON lines, chosen by suffix; written atomically."""
    import csv

    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            w = csv.writer(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            w.writerow(["text", "label", "score", *(f"p_{name}" for name in labels)])
            for r in rows:
                w.writerow([r["text"], r["label"], r["score"], *(r["probabilities"][n] for n in labels)])
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise GraftError(f"{run_dir}: not a graft run directory ({RECIPE_FILE} missing)")
    return validate_recipe(yaml.safe_load(path.read_text()), str(path))


def _accelerator(recipe: Recipe) -> Accelerator:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    precision = recipe.train.precision
    on_gpu = torch.cuda.is_available()
    if precision == "fp16" and not on_gpu:
        raise GraftError("train.precision = 'fp16' needs a GPU (loss scaling is a GPU feature); use bf16 on CPU")
    # Each run sets its own precision; the process group (PartialState) survives, so this is safe under torchrun.
    AcceleratorState._reset_state()
    # split_batches: train.batch_size is the global batch whatever the number of processes, so one recipe
    # gives the same optimisation on 1 or N processes. cpu=True is what makes accelerate use gloo under torchrun.
    # (accelerate 1.15 ignores the `split_batches=` argument: only the DataLoaderConfiguration counts.)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True),
                              mixed_precision={"fp32": "no"}.get(precision, precision),
                              gradient_accumulation_steps=recipe.train.grad_accum, cpu=not on_gpu)
    n = accelerator.num_processes
    for field in ("batch_size", "eval_batch_size"):
        value = getattr(recipe.train, field)
        if value is not None and value % n:
            raise GraftError(f"train.{field} = {value}: must be a multiple of the {n} processes (the global batch "
                             f"is split between them)")
    return accelerator


def _check_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse early, before anything slow is loaded, a run directory that cannot be used as asked."""
    from graft.training.checkpoint import list_checkpoints

    run_dir = recipe.output.dir
    if resume:
        if not list_checkpoints(run_dir / CKPT_DIR):
            raise GraftError(f"--resume: {run_dir} has no complete checkpoint to resume from; start without --resume")
        _check_resumable(recipe, run_recipe(run_dir))
    elif _occupied(run_dir) and not overwrite:
        raise GraftError(f"output.dir {run_dir} already holds files; pass --resume to continue that run, "
                         f"--overwrite to replace it, or choose another output.dir")


def _claim_run_dir(accelerator: Accelerator, recipe: Recipe, overwrite: bool) -> Path | None:
    """Create the run directory and save the resolved recipe in it.

    With overwrite, the old run moves to `<dir>.replaced` and is deleted only when the new run completes. If a
    `.replaced` run is already there, the run in `<dir>` is a replacement that failed (unless it completed), so
    it is the one discarded: the last completed run is never lost.
    """
    run_dir = recipe.output.dir
    previous = run_dir.with_name(f"{run_dir.name}.replaced") if overwrite and _occupied(run_dir) else None
    if accelerator.is_main_process:
        if previous is not None:
            if previous.exists() and _status(run_dir) != "completed":
                shutil.rmtree(run_dir)
            else:
                shutil.rmtree(previous, ignore_errors=True)
                os.replace(run_dir, previous)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe.dump(), sort_keys=False))
    accelerator.wait_for_everyone()
    return previous


def _occupied(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RECORD_FILE).read_text()).get("status")
    except (OSError, ValueError):
        return None


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


def _load_splits(recipe: Recipe) -> TextSplits:
    from graft.data import load_text_splits

    d = recipe.data
    return load_text_splits(d.train, d.validation, d.test, text_column=d.text_column, label_column=d.label_column,
                            split=d.split, seed=recipe.train.seed, leakage=d.leakage,
                            normalize_labels=d.normalize_labels)


def _param_counts(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def _new_record(recipe: Recipe, splits: TextSplits, loaded: LoadedModel, params: dict[str, int],
                accelerator: Accelerator) -> dict[str, Any]:
    from graft.environment import environment

    return {
        "status": "running",
        "recipe": recipe.dump(),
        "data": {"labels": splits.labels, "sources": splits.sources, "warnings": splits.warnings,
                 "sizes": {n: len(getattr(splits, n)) for n in ("train", "validation", "test")}},
        "model": {"source": loaded.source, "new_parameters": loaded.new_keys},
        "params": params,
        "environment": environment(accelerator),
    }


def _best_validation(state: LoopState) -> dict[str, Any] | None:
    evals = [h for h in state.history if h["split"] == "validation" and h["step"] == state.best_step]
    return evals[-1] if evals else None


def _record_failure(accelerator: Accelerator, run_dir: Path, record: dict[str, Any], state: LoopState,
                    error: BaseException) -> None:
    interrupted = isinstance(error, KeyboardInterrupt)
    record.update(status="interrupted" if interrupted else "failed", error=str(error) or type(error).__name__)
    record["metrics"] = {"history": state.history}
    record["progress"] = {k: v for k, v in asdict(state).items() if k != "history"}
    _write_record(accelerator, run_dir, record)


def _save_final_model(accelerator: Accelerator, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                      path: Path) -> None:
    """save_pretrained (weights, config with label names) + tokenizer, written beside and renamed into place."""
    tmp = path.with_name(f".tmp-{path.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        old = path.with_name(f".old-{path.name}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_record(accelerator: Accelerator, run_dir: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        tmp = run_dir / f".{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, run_dir / RECORD_FILE)


def _peak_memory_mb() -> float:
    import resource

    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = rss_kb / 1024
    if torch.cuda.is_available():
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return round(peak, 1)


def _printer(accelerator: Accelerator) -> Callable[[str], None]:
    def say(line: str) -> None:
        if accelerator.is_main_process:
            print(line, file=sys.stderr, flush=True)

    return say
