"""`graft train`: recipe → setup → claim the run directory → fit → finish (test, save, record, report).

Each phase is a function; `train` reads top to bottom. What differs between tasks is asked of the task
(`graft.tasks`); what a finished run does (eval, predict, export) is in `graft.trained`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.doctor import check_data
from graft.errors import GraftError
from graft.files import write_json
from graft.recipe import Recipe, load_recipe
from graft.rundir import (
    CKPT_DIR,
    MODEL_DIR,
    RunLock,
    check_run_dir,
    claim_run_dir,
    read_record,
    record_failure,
    write_record,
)
from graft.setup import Setup, format_groups, setup
from graft.trained import evaluate_run, export_run, predict_run

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.training.loop import Hook, LoopState, Parts

__all__ = ["evaluate_run", "export_run", "predict_run", "train"]

PHASED = ("two_phase", "gradual_unfreeze")


def train(recipe: Recipe | str | Path | dict[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
          resume: bool = False, overwrite: bool = False, hooks: list[Hook] | None = None,
          prepare: Callable[[Setup], None] | None = None, test: bool = True) -> dict[str, Any]:
    """Fine-tune as the recipe says, evaluate on test, write the run directory; return the run record.

    `prepare`, when given, sees the setup before anything is written: it may add loss terms, extra evaluations
    or a mixed training loader (the seams that forgetting guards and retention use). `test=False` leaves the test
    split unseen (metrics.test is null): a sweep's trials are chosen between on validation, and only the chosen one
    is tested, later (`graft.trained.test_run`)."""
    from graft.environment import reset_peak_memory
    from graft.training.logging import check_trackers

    started = time.perf_counter()
    reset_peak_memory()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    check_run_dir(recipe, resume, overwrite)  # refused before anything is written; checked again under the lock
    check_trackers(recipe.output.trackers)
    accelerator = make_accelerator(recipe)
    # One process trains into a run directory at a time (the main one holds the lock for all of a run's).
    with RunLock(recipe.output.dir) if accelerator.is_main_process else contextlib.nullcontext():
        return _train(accelerator, recipe, resume, overwrite, hooks, prepare, started, test)


def _train(accelerator: Accelerator, recipe: Recipe, resume: bool, overwrite: bool, hooks: list[Hook] | None,
           prepare: Callable[[Setup], None] | None, started: float, test: bool) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from graft.training.logging import end_trackers
    from graft.training.loop import fit

    check_run_dir(recipe, resume, overwrite)
    say = printer(accelerator)
    set_seed(recipe.train.seed)
    run = setup(recipe, say)
    check_data(recipe, say)
    if prepare is not None:
        prepare(run)
    previous = claim_run_dir(accelerator, recipe, overwrite and not resume, resume)
    try:
        fitted = start_fit(accelerator, run, resume, say, started)
    except BaseException as e:  # before the loop (the LR range test): recorded too; a resumed run's record is kept
        from graft.training.loop import LoopState

        if not resume:
            _record_failure(accelerator, recipe.output.dir, {"recipe": recipe.dump()}, LoopState(), e)
        raise
    try:
        if fitted.probe is not None:
            fit_exact_probe(accelerator, run, fitted, [*fitted.watchers, *(hooks or [])], say)
        else:
            fit(accelerator, fitted.parts, recipe.train, recipe.eval, recipe.checkpoint,
                recipe.output.dir / CKPT_DIR, fitted.state, [*fitted.watchers, *(hooks or [])])
        record = finish(accelerator, run, fitted, started, test)
    except BaseException as e:
        end_trackers(accelerator, e)
        if previous is not None:
            say(f"the run this one was replacing is kept at {previous}")
        _record_failure(accelerator, recipe.output.dir, fitted.record, fitted.state, e)
        raise
    if previous is not None and accelerator.is_main_process:
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.end_training()
    return record


@dataclass
class Fitted:
    """What training works on, and what it leaves for finish."""

    model: nn.Module
    """The whole model, prepared: what is tested and saved."""
    parts: Parts
    test_loader: DataLoader
    state: LoopState
    """Updated in place by the loop."""
    record: dict[str, Any]
    watchers: list[Hook]
    setup_s: float
    cache_s: float
    probe: nn.Linear | None = None
    """The head's one Linear, when it is fitted exactly (strategy.probe: exact) instead of by the loop."""
    prefix: Any = None
    """The frozen bottom groups' cache (graft.training.prefix_cache.PrefixCaching), when used."""


def start_fit(accelerator: Accelerator, run: Setup, resume: bool, say: Callable[[str], None],
              started: float) -> Fitted:
    """Prepare model, optimiser, loaders; measure the LR (optim.lr: auto); the schedule; the loop state (from the
    last checkpoint when resuming); write the first record; the console hooks."""
    from graft.training import checkpoint
    from graft.training.logging import console_hooks
    from graft.training.loop import LoopState, steps_per_epoch, total_steps

    recipe, run_dir = run.recipe, run.recipe.output.dir
    prepared = prepare_run(accelerator, run, say)
    parts = prepared.parts
    if prepared.probe is not None:
        optim = {**run.optim.record(), "lr": None, "lr_why": "none: the head is fitted exactly (strategy.probe: exact)"}
    else:
        optim = _learning_rate(accelerator, run, parts, prepared.base_lr, resume, say)
    parts.scheduler = _scheduler(accelerator, parts, recipe)
    state = LoopState()
    if resume:
        last = checkpoint.last_good(run_dir / CKPT_DIR, say)
        state = LoopState(**checkpoint.load_checkpoint(accelerator, last))
        if state.plateau is not None:
            parts.scheduler.load_state_dict(state.plateau)
        say(f"resuming from {last} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
    table = run.plan.table(run.root, optim["lr"] or 0.0)
    record = _start_record(run, table, prepared.cache_note, optim, accelerator)
    write_record(accelerator, run_dir, record)
    say("precision: {used} ({why})".format(**record["precision"]))
    say(f"{len(run.splits.train)} train / {len(run.splits.validation)} validation / {len(run.splits.test)} test "
        f"{run.noun}; strategy {recipe.strategy.name}")
    say(format_groups(table))
    watchers = console_hooks(accelerator, run_dir, state, recipe.output, total_steps(parts, recipe.train),
                             steps_per_epoch(parts, recipe.train), recipe.dump())
    return Fitted(prepared.model, parts, prepared.test_loader, state, record, watchers,
                  time.perf_counter() - started, prepared.cache_s, prepared.probe, prepared.prefix)


@dataclass
class Prepared:
    model: nn.Module
    parts: Parts
    test_loader: DataLoader
    cache_note: str | None
    cache_s: float
    base_lr: float
    """The LR the optimiser's groups were built with (their scales multiply it)."""
    probe: nn.Linear | None = None
    prefix: Any = None
    """The frozen bottom groups' cache (graft.training.prefix_cache.PrefixCaching), when used."""


def prepare_run(accelerator: Accelerator, run: Setup, say: Callable[[str], None]) -> Prepared:
    """Model, optimiser and loaders through `accelerator.prepare`. With the feature cache, what trains is the head
    on cached backbone outputs; the whole model is still what is tested and saved."""
    from graft.strategy.plan import apply_plan
    from graft.training import checkpoint
    from graft.training.feature_cache import head_train_mode
    from graft.training.loop import Parts
    from graft.training.optim import FALLBACK_LR, build_optimizer, param_groups

    recipe = run.recipe
    from graft.training.mixing import MixedData

    head, train_loader, val_loader, cache_note, cache_s = None, run.train_loader, run.val_loader, None, 0.0
    if run.cached and not isinstance(run.train_loader.dataset, MixedData):  # a mixed source is not cached
        cache_started = time.perf_counter()
        head, train_loader, val_loader, cache_note = _feature_cache(run, accelerator.device)
        cache_s = time.perf_counter() - cache_started
        say(f"feature cache: {cache_note} ({cache_s:.1f} s)")
    # Parameters that train at some epoch require grad while being wrapped (DDP registers only those); the plan
    # then sets each epoch's state.
    apply_plan(run.root, run.plan, epoch=10**9)
    base_lr = recipe.optim.lr if recipe.optim.lr != "auto" else FALLBACK_LR[run.optim.name]
    optimizer = build_optimizer(param_groups(run.root, run.plan, base_lr, run.optim.weight_decay), recipe.optim,
                                run.optim.name)
    prefix = None if head is not None else _prefix_cache(accelerator, run, say)
    if prefix is not None:
        train_loader, val_loader = prefix.loaders
    trained, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        head or run.model, optimizer, train_loader, val_loader, run.test_loader)
    model = trained if head is None else accelerator.prepare(run.model)
    for evaluation in run.evaluations:
        evaluation.loader = accelerator.prepare(evaluation.loader)
    if head is None:
        begin_epoch = partial(apply_plan, run.root, run.plan)
        if prefix is not None:
            begin_epoch = prefix.after(begin_epoch)
    else:
        apply_plan(run.root, run.plan, epoch=0)
        begin_epoch = head_train_mode(trained)
    left_out = checkpoint.leave_out_untrained(accelerator, optimizer)  # checkpoints hold what trains, not the base
    parts = Parts(trained, optimizer, None, train_loader, val_loader, run.splits.labels, begin_epoch,
                  run.task.evaluate, run.task_loss, run.loss_terms, run.evaluations, None if head is None else model,
                  left_out, run.task.loss_units)
    probe = None
    if head is not None and recipe.strategy.probe == "exact" and not run.loss_terms and run.task.single_label:
        from graft.training.probe import probe_layer

        probe = probe_layer(list(head.head))
    return Prepared(model, parts, test_loader, cache_note, cache_s, base_lr, probe, prefix)


def _prefix_cache(accelerator: Accelerator, run: Setup, say: Callable[[str], None]) -> Any:
    """When bottom groups stay frozen for some epochs, the cache of their outputs (graft.training.prefix_cache),
    built at the start of each epoch whose frozen groups differ from the last; else None."""
    from graft.training.mixing import MixedData
    from graft.training.prefix_cache import PrefixCaching, depths

    recipe = run.recipe
    if (not recipe.strategy.feature_cache or recipe.strategy.is_peft or not any(depths(run.plan, recipe.train.epochs))
            or isinstance(run.train_loader.dataset, MixedData)):
        return None
    if getattr(run.train_loader.collate_fn, "augment", None) is not None:  # inputs augmented afresh each epoch
        say("feature cache: off for the frozen bottom groups: the training inputs are augmented afresh each epoch "
            "(turn data.augment off to cache them)")
        return None
    return PrefixCaching(run.model, run.root, run.plan, run.train_loader, run.val_loader, accelerator, say)


def fit_exact_probe(accelerator: Accelerator, run: Setup, fitted: Fitted, hooks: list[Hook],
                    say: Callable[[str], None]) -> None:
    """Fit the head's Linear on the cached features as a logistic regression (graft.training.probe), its L2 strength
    picked by validation loss; each strength a row of the history, the chosen one with every validation metric."""
    from graft.training.loop import Event
    from graft.training.probe import fit_probe

    recipe, state, parts = run.recipe, fitted.state, fitted.parts
    train, val = parts.train_loader.dataset, parts.val_loader.dataset
    device = accelerator.device
    weights = run.loss_record.get("class_weights")
    fit = fit_probe(fitted.probe, (train.features.to(device), train.labels.to(device)),
                    (val.features.to(device), val.labels.to(device)), list(weights.values()) if weights else None)
    state.train_s = fit.seconds
    chosen = run.task.evaluate(accelerator, parts.model, parts.val_loader, run.splits.labels)
    for tried in fit.tried:
        best = tried["l2"] == fit.strength
        row = {"split": "validation", "step": 0, "epoch": 0.0, **tried,
               **({k: v for k, v in chosen.items() if not isinstance(v, dict | list)} if best else {}), "best": best}
        state.history.append(row)
        for hook in hooks:
            hook(Event("eval", state, row))
    state.best, state.best_step = chosen.get(recipe.eval.metric), 0
    fitted.record["strategy"]["probe"] = {"method": "exact", "l2": fit.strength, "tried": len(fit.tried)}
    say(f"probe: fitted exactly (L-BFGS) at {len(fit.tried)} L2 strengths in {fit.seconds:.2f} s; the lowest "
        f"validation loss at l2 = {fit.strength:g}")


def find_lr(recipe: Recipe | str | Path | dict[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
            steps: int = 100, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The LR range test on the recipe's model, strategy and data, as a run would start it, writing nothing:
    the sweep (LRs, losses, smoothed losses), the pick and why, and the optimiser it was measured with."""
    from accelerate.utils import set_seed

    from graft.training.lr_find import lr_range_test, starting_point

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    accelerator = make_accelerator(recipe)
    say = say or printer(accelerator)
    set_seed(recipe.train.seed)
    run = setup(recipe, say)
    prepared = prepare_run(accelerator, run, say)
    sweep = lr_range_test(accelerator, prepared.parts, prepared.base_lr, recipe.train.max_grad_norm, steps=steps,
                          starts=starting_point(recipe.strategy), epoch=run.plan.all_joined)
    return {"optim": run.optim.record(), "strategy": recipe.strategy.name, **sweep.record()}


def _learning_rate(accelerator: Accelerator, run: Setup, parts: Parts, base: float, resume: bool,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """The base LR: the recipe's, or measured by a range test (optim.lr: auto) and set on every group (their
    ratios kept). What run.json's `optim` says: the optimiser, its LR, and why. A resumed run takes its LR from
    the checkpoint, and what was measured from its record."""
    from graft.training.lr_find import lr_range_test, starting_point

    recipe = run.recipe
    optim = run.optim.record()
    if recipe.optim.lr != "auto":
        return {**optim, "lr": recipe.optim.lr, "lr_why": "optim.lr says so"}
    if resume:
        previous = read_record(recipe.output.dir).get("optim") or {}
        return {**optim, **{k: v for k, v in previous.items() if k.startswith("lr")}}
    started = time.perf_counter()
    # 100 steps whatever the run's length: a shorter sweep is a coarser one (a 54-step sweep picked 7x too low).
    # Measured with every group that joins during the run training (two_phase, gradual_unfreeze): a sweep of the
    # head alone picks the head's LR, and the body would then train at it (2.5e-3 for MiniLM's layers).
    sweep = lr_range_test(accelerator, parts, base, recipe.train.max_grad_norm, steps=100,
                          starts=starting_point(recipe.strategy), epoch=run.plan.all_joined)
    sweep_s = time.perf_counter() - started
    lr = sweep.suggestion or base
    joined = f" with epoch {run.plan.all_joined}'s groups training" if run.plan.all_joined else ""
    why = (f"measured by an LR range test over {len(sweep.lrs)} steps{joined}: {sweep.why}" if sweep.suggestion else
           f"the range test over {len(sweep.lrs)} steps{joined} found none ({sweep.why}); {optim['name']}'s usual "
           f"{base:g}")
    for group in parts.optimizer.param_groups:  # as param_groups builds them, so a rerun at this LR is identical
        group["lr"] = lr * run.plan.lr_scale[group["name"].partition("/")[0]]
    say(f"learning rate: {lr:.3g} ({why})")
    return {**optim, "lr": lr, "lr_found": sweep.suggestion, "lr_why": why, "lr_sweep_s": round(sweep_s, 3),
            "lr_sweep": sweep.record()}


def _scheduler(accelerator: Accelerator, parts: Parts, recipe: Recipe) -> Any:
    from graft.training.loop import steps_per_epoch, total_steps
    from graft.training.optim import build_scheduler

    scheduler = build_scheduler(parts.optimizer, recipe.schedule, total_steps=total_steps(parts, recipe.train),
                                steps_per_epoch=steps_per_epoch(parts, recipe.train),
                                metric_mode=recipe.eval.resolved_mode)
    if recipe.schedule.name == "plateau":  # its state travels in loop_state.json (LoopState.plateau), not a pickle
        return scheduler
    return accelerator.prepare(scheduler)


def _feature_cache(run: Setup, device: Any) -> tuple[nn.Module | None, DataLoader, DataLoader, str]:
    """The cached head and its loaders when the cache reproduces the model, else no head and a reason."""
    from graft.training.feature_cache import build_cache

    loaded = run.loaded
    cache, reason = build_cache(loaded.model, loaded.root, loaded.head_modules, run.train_loader, run.val_loader,
                                device)
    if cache is None:
        return None, run.train_loader, run.val_loader, f"off: {reason}"
    return cache.head, cache.train_loader, cache.val_loader, "on: the backbone ran once, the head trains on its outputs"


def finish(accelerator: Accelerator, run: Setup, fitted: Fitted, started: float, test: bool = True) -> dict[str, Any]:
    """The best weights back, the test split (unless not `test`) and the extra evaluations on them (a classifier's
    test also fits its temperature on validation), the final model saved, the record completed, the report
    written."""
    from graft.environment import peak_memory_mb
    from graft.models.save import save_final_model, write_run_card
    from graft.report import write_report
    from graft.training import checkpoint
    from graft.training.logging import event_for_test

    recipe, state, record = run.recipe, fitted.state, fitted.record
    best = checkpoint.load_best(accelerator, fitted.parts.model, recipe.output.dir / CKPT_DIR)
    run.task.finish_model(accelerator, fitted.model, run.splits, run.loaded)
    test_metrics, extras, test_s = None, {}, 0.0
    if test:
        test_started = time.perf_counter()
        test_metrics, extras = run.task.test(accelerator, fitted.model, fitted.test_loader, run.splits, run.loaded,
                                             recipe)
        test_s = time.perf_counter() - test_started
        for hook in fitted.watchers:  # the trackers log the test metrics
            hook(event_for_test(state, test_metrics))
    save_final_model(accelerator, fitted.model, run.loaded, recipe, run.splits.labels, recipe.output.dir / MODEL_DIR,
                     run.attached)
    keep_beside_weights(recipe.output.dir / MODEL_DIR, extras, accelerator.is_main_process)
    record.update(status="completed", stopped=state.stopped, best=best)
    record["metrics"] = {"test": test_metrics, "validation": _best_validation(state), "history": state.history,
                         **{e.name: e.final(accelerator, fitted.model, state.history) for e in run.evaluations}}
    record.update(extras)
    for name, section in run.sections.items() if test else ():  # after the model is saved: may read its files
        record[name] = section(accelerator, fitted.model, record)
    record["warnings"] = model_warnings(test_metrics or {})
    if fitted.prefix is not None:
        record["strategy"]["prefix_cache"] = fitted.prefix.builds
    record["timings"] = _timings(state, fitted, test_s, started)
    record["peak_memory_mb"] = peak_memory_mb()
    write_record(accelerator, recipe.output.dir, record)
    if accelerator.is_main_process:
        write_report(recipe.output.dir)
        write_run_card(recipe.output.dir)
    return record


def keep_beside_weights(folder: Path, extras: dict[str, Any], write: bool = True) -> None:
    """What a task's test keeps beside the final weights, where eval, predict and exports read it: a classifier's
    temperature, and the task's `model_files` (a multi-label run's thresholds), which leave `extras`: they are files,
    not record fields. `write` False (not the main process): only taken out."""
    from graft.evaluation.calibration import write_temperature

    files = extras.pop("model_files", {})
    if not write:
        return
    if "calibration" in extras:
        write_temperature(folder, extras["calibration"])
    for name, content in files.items():
        write_json(folder / name, content)


def model_warnings(test: dict[str, Any]) -> list[str]:
    """What a reader of the run must not miss about the model itself."""
    if test.get("beats_baseline") is False:
        return [f"the model does not beat the mean predictor on test (rmse {test['rmse']:.4g} vs "
                f"{test['baseline_rmse']:.4g} for answering the training mean): it has learnt nothing usable; see the "
                f"learning rate, the number of epochs and the strategy"]
    if not test.get("one_class"):
        return []
    return [f"the model answers {test['one_class']!r} for every test example: it has learnt nothing that the "
            f"majority baseline (accuracy {test['baseline_accuracy']:.3f}) does not; see the loss's class weights, "
            f"the learning rate and the number of epochs"]


def _timings(state: LoopState, fitted: Fitted, test_s: float, started: float) -> dict[str, Any]:
    epochs_run = max(1, state.epoch + (1 if state.batch_in_epoch else 0))
    return {
        "setup_s": round(fitted.setup_s, 3), "train_s": round(state.train_s, 3), "eval_s": round(state.eval_s, 3),
        "test_s": round(test_s, 3), "total_s": round(time.perf_counter() - started, 3), "steps": state.step,
        "steps_per_s": round(state.step / state.train_s, 4) if state.train_s else None,
        "train_s_per_epoch": round(state.train_s / epochs_run, 3),
        "feature_cache_s": round(fitted.cache_s + (fitted.prefix.seconds if fitted.prefix else 0.0), 3),
    }


def make_accelerator(recipe: Recipe) -> Accelerator:
    """An Accelerator for this run's precision, accumulation and process group."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    from graft.training.precision import resolve_precision

    precision = resolve_precision(recipe.train.precision)
    on_gpu = torch.cuda.is_available()
    if precision == "fp16" and not on_gpu:
        raise GraftError("train.precision = 'fp16' needs a GPU (loss scaling is a GPU feature); use bf16 on CPU")
    # Each run sets its own precision; the process group (PartialState) survives, so this is safe under torchrun.
    AcceleratorState._reset_state()
    # split_batches: train.batch_size is the global batch whatever the number of processes, so one recipe
    # gives the same optimisation on 1 or N processes. cpu=True is what makes accelerate use gloo under torchrun.
    # (accelerate 1.15 ignores the `split_batches=` argument: only the DataLoaderConfiguration counts.)
    # Under DDP, parameters that join training mid-run (two_phase, gradual_unfreeze) are registered from the start
    # and reported unused while frozen.
    phased = [DistributedDataParallelKwargs(find_unused_parameters=True)] if recipe.strategy.name in PHASED else []
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True),
                              mixed_precision={"fp32": "no"}.get(precision, precision),
                              gradient_accumulation_steps=recipe.train.grad_accum, cpu=not on_gpu,
                              kwargs_handlers=phased)
    n = accelerator.num_processes
    for field in ("batch_size", "eval_batch_size"):
        value = getattr(recipe.train, field)
        if value is not None and value % n:
            raise GraftError(f"train.{field} = {value}: must be a multiple of the {n} processes (the global batch "
                             f"is split between them)")
    return accelerator


def _start_record(run: Setup, table: list[dict[str, Any]], cache_note: str | None, optim: dict[str, Any],
                  accelerator: Accelerator) -> dict[str, Any]:
    from graft.environment import environment
    from graft.training.precision import precision_choice

    recipe, splits, loaded = run.recipe, run.splits, run.loaded
    return {
        "status": "running",
        "recipe": recipe.dump(),
        "data": {"labels": splits.labels, "sources": splits.sources, "warnings": splits.warnings,
                 "sizes": {n: len(getattr(splits, n)) for n in ("train", "validation", "test")}, **run.data_record},
        "model": {"source": loaded.source, "new_parameters": loaded.new_keys, "load_report": loaded.notes,
                  "head": {"path": loaded.head.path, "rows_copied": loaded.head.copied}, "input": loaded.input},
        "params": {"total": sum(r["params"] for r in table), "trainable": sum(r["trainable"] for r in table)},
        "groups": table,
        "strategy": {"name": recipe.strategy.name, "feature_cache": cache_note},
        "precision": precision_choice(recipe.train.precision),
        "loss": run.loss_record,
        "optim": optim,
        "environment": environment(accelerator),
    }


def _best_validation(state: LoopState) -> dict[str, Any] | None:
    evals = [h for h in state.history if h["split"] == "validation" and h["step"] == state.best_step]
    return evals[-1] if evals else None


def _record_failure(accelerator: Accelerator, run_dir: Path, record: dict[str, Any], state: LoopState,
                    error: BaseException) -> None:
    from graft.training.loop import StopRun

    if isinstance(error, StopRun):  # ended on purpose: why, not an error
        record.update(status=error.status, reason=str(error))
    else:
        interrupted = isinstance(error, KeyboardInterrupt)
        record.update(status="interrupted" if interrupted else "failed", error=str(error) or type(error).__name__)
    record["metrics"] = {"history": state.history}
    record["progress"] = {k: v for k, v in asdict(state).items() if k != "history"}
    record_failure(accelerator, run_dir, record, error)  # a full disk becomes one line (GraftError) here


def printer(accelerator: Accelerator) -> Callable[[str], None]:
    """Print to stderr on the main process only."""
    def say(line: str) -> None:
        if accelerator.is_main_process:
            print(line, file=sys.stderr, flush=True)

    return say
