"""The training loop, on Hugging Face Accelerate.

One pass over the batches per epoch; after every optimiser step, `_after_step` decides what else happens at that
step (log, evaluate, keep the best model, checkpoint, stop). Hooks observe events; they never steer the loop
(one may end the run, by raising `StopRun`).

Two seams let other parts of graft change training without editing this file:
- loss terms: `Parts.loss_terms` maps a name to a callable of (batch, model output) that returns a scalar; it is
  added to the task's loss and logged on its own as `loss_<name>` (the task's own part as `loss_task`);
- extra evaluations: `Parts.evaluations` run beside validation, before training and at every evaluation, each
  logged in the history under its own split name.
A batch may carry a second source's examples under `MIXED` (see `graft.training.mixing`): the model never sees
them, loss terms do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from graft.errors import GraftError
from graft.evaluation.metrics import scalars
from graft.evaluation.predictions import evaluate
from graft.recipe import CheckpointSpec, EvalSpec, TrainSpec
from graft.training import checkpoint

MIXED = "mixed"
"""The batch key of examples drawn from a second source (replay): for loss terms, not for the model."""
RESERVED = ("train", "validation", "test", "history")
"""Split names an extra evaluation may not take."""

LossTerm = Callable[[dict[str, Any], Any], torch.Tensor]
"""(batch, model output) -> a scalar added to the loss; it closes over what it needs (a teacher, start weights)."""


@dataclass
class Evaluation:
    """An extra evaluation set with its own metrics: `score(accelerator, model, loader)` -> metrics (scalars are
    logged). The run prepares `loader` once, with the rest."""

    name: str
    loader: DataLoader
    score: Callable[[Accelerator, nn.Module, DataLoader], dict[str, Any]]
    summarise: Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]] | None = None
    """(the final metrics, this evaluation's rows of the history) -> what run.json keeps under metrics.<name>;
    None: the final metrics."""

    def run(self, accelerator: Accelerator, model: nn.Module) -> dict[str, Any]:
        return self.score(accelerator, model, self.loader)

    def final(self, accelerator: Accelerator, model: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The run record's entry: the metrics of `model` (the best weights), summarised with the history."""
        metrics = self.run(accelerator, model)
        rows = [h for h in history if h["split"] == self.name]
        return self.summarise(metrics, rows) if self.summarise else metrics

    def __post_init__(self) -> None:
        if self.name in RESERVED:
            raise ValueError(f"an extra evaluation cannot be named {self.name!r} ({', '.join(RESERVED)} are taken)")


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint, so a resumed run continues from the exact batch."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of `epoch` already consumed."""
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: str | None = None
    """Why training ended before its budget: `early_stopping`."""
    history: list[dict[str, Any]] = field(default_factory=list)
    window_loss: float = 0.0
    window_count: int = 0
    """The training loss summed since the last log line, so a resumed run logs the very same values."""
    window_terms: dict[str, float] = field(default_factory=dict)
    """Each loss term summed since the last log line, likewise."""
    window_tokens: tuple[int, int] = (0, 0)
    """Real tokens and positions since the last log line (the real-token share goes on from them too)."""
    train_s: float = 0.0
    eval_s: float = 0.0
    plateau: dict[str, Any] | None = None
    """ReduceLROnPlateau's state, when that is the schedule: saved as JSON here rather than pickled by accelerate,
    so loading a checkpoint never runs code."""


@dataclass
class Event:
    """What hooks see: `step` after every optimiser step, `train` every log_every steps, `eval`, `checkpoint`."""

    kind: str
    state: LoopState
    values: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[Event], None]


class StopRun(Exception):
    """Raised by a hook to end a run on purpose (a sweep pruning a trial that does worse than the others at the same
    point): the run is recorded with this `status` and the reason, not as failed."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Parts:
    """What `fit` trains, all already passed through `accelerator.prepare` (but the plateau scheduler)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader
    label_names: list[str]
    begin_epoch: Callable[[int], None] | None = None
    """Puts the model in training mode for an epoch: which parameters train, which modules run in eval mode.
    None: `model.train()`."""
    evaluator: Callable[..., dict[str, Any]] = evaluate
    """(accelerator, model, loader, label_names) -> metrics: the task's."""
    task_loss: LossTerm | None = None
    """The task's loss from the batch and output when it is not the model's own `output.loss` (class weights)."""
    loss_terms: dict[str, LossTerm] = field(default_factory=dict)
    evaluations: list[Evaluation] = field(default_factory=list)
    whole_model: nn.Module | None = None
    """What extra evaluations run on when `model` is not the whole model (a cached head); None: `model`."""
    left_out: checkpoint.LeftOut | None = None
    """The weights not trained yet, which the best model's checkpoint leaves out (None: it saves them all)."""
    loss_units: Callable[[dict[str, Any]], int] | None = None
    """The task's count of what a batch's loss averages over, where it varies (tokens); None: examples."""

    def train_mode(self, epoch: int) -> None:
        if self.begin_epoch is None:
            self.model.train()
        else:
            self.begin_epoch(epoch)


def steps_per_epoch(parts: Parts, train: TrainSpec) -> int:
    return math.ceil(len(parts.train_loader) / train.grad_accum)


def total_steps(parts: Parts, train: TrainSpec) -> int:
    budget = steps_per_epoch(parts, train) * train.epochs
    return min(budget, train.max_steps) if train.max_steps else budget


def fit(accelerator: Accelerator, parts: Parts, train: TrainSpec, evals: EvalSpec, ckpt: CheckpointSpec,
        ckpt_dir: Path, state: LoopState, hooks: list[Hook]) -> LoopState:
    """Train until the epochs or max_steps run out or early stopping fires; the best weights are in `ckpt_dir`."""
    model, optimizer = parts.model, parts.optimizer
    window = _Window(state.window_loss, state.window_count, tuple(state.window_tokens), state.window_terms)
    if state.step == 0 and parts.evaluations:  # where the extra evaluations start from: the model before training
        _run_evaluations(accelerator, parts, state, hooks)
    while state.epoch < train.epochs and not _budget_spent(state, train):
        shares = _loss_shares(accelerator, parts, train, state.epoch)
        loader = parts.train_loader
        if state.batch_in_epoch:
            loader = accelerator.skip_first_batches(loader, state.batch_in_epoch)
        loader.set_epoch(state.epoch)
        parts.train_mode(state.epoch)
        started = time.perf_counter()
        for batch in loader:
            with accelerator.accumulate(model):
                loss, task_loss, terms = compute_loss(parts, model, batch)
                # this batch's mean reweighted to its share of the step's examples or tokens (see _loss_shares)
                share = 1.0 if shares is None else shares[state.batch_in_epoch]
                accelerator.backward(loss if share == 1.0 else loss + task_loss * (share - 1))
                window.add(loss, _examples(batch) * accelerator.num_processes, _real_tokens(batch),
                           {"task": task_loss, **terms} if terms else None)
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm or math.inf)
                    _stop_if_not_finite(accelerator, window, norm, state, train, ckpt_dir)
                optimizer.step()
                if not isinstance(parts.scheduler, ReduceLROnPlateau):
                    parts.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.train_s += time.perf_counter() - started
            _after_step(accelerator, parts, train, evals, ckpt, ckpt_dir, state, hooks, window)
            started = time.perf_counter()
            if _budget_spent(state, train):
                break
    return state


def _loss_shares(accelerator: Accelerator, parts: Parts, train: TrainSpec, epoch: int) -> list[float] | None:
    """Each batch's factor for the epoch, so that a step's gradient is that of the mean over all its units (examples,
    or a token-level loss's tokens) in every accumulated batch and process. The model's loss is each batch's own
    mean; accelerate divides it by grad_accum and DDP averages over processes, which weighs the units of a small
    batch more (the Hugging Face Trainer's accumulation bug for tokens, mended in 4.46), and gives an epoch's last,
    shorter step only part of a step's strength. Factor for batch b of step s: units_b x processes x grad_accum /
    (units of s over every process). None where every factor is 1 (whole steps of full batches of examples, or one
    batch a step on one process).

    Examples are counted from the batch sampler (indices only); tokens by one pass over the epoch's batches (their
    order is a function of the seed and the epoch). Either leaves the random state as it found it, so a resumed run
    still matches an uninterrupted one.
    """
    k, processes = train.grad_accum, accelerator.num_processes
    sampler = getattr(parts.train_loader, "batch_sampler", None)
    if (k == 1 and processes == 1) or (parts.loss_units is None and sampler is None):
        return None
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        parts.train_loader.set_epoch(epoch)
        counted = ((parts.loss_units(batch) for batch in parts.train_loader) if parts.loss_units is not None else
                   (len(indices) for indices in sampler))
        units = torch.tensor([float(n) for n in counted], dtype=torch.float64)
    finally:
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    if len(units) != len(parts.train_loader):  # a sampler that does not say the batches as the loader makes them
        return None
    steps = torch.stack([units[i:i + k].sum() for i in range(0, len(units), k)])
    totals = accelerator.reduce(steps.to(accelerator.device), "sum").cpu()
    shares = [float(units[b] * processes * k / totals[b // k]) if totals[b // k] > 0 else 1.0
              for b in range(len(units))]
    return None if all(share == 1.0 for share in shares) else shares


def compute_loss(parts: Parts, model: nn.Module, batch: dict[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to minimise (the task's plus every loss term), the task's alone, and each term."""
    output = model(**{k: v for k, v in batch.items() if k != MIXED})
    task_loss = parts.task_loss(batch, output) if parts.task_loss else output.loss
    terms = {name: term(batch, output) for name, term in parts.loss_terms.items()}
    return (task_loss + sum(terms.values()) if terms else task_loss), task_loss, terms


def _after_step(accelerator: Accelerator, parts: Parts, train: TrainSpec, evals: EvalSpec, ckpt: CheckpointSpec,
                ckpt_dir: Path, state: LoopState, hooks: list[Hook], window: _Window) -> None:
    epoch_done = state.batch_in_epoch == len(parts.train_loader)
    if epoch_done:
        state.epoch += 1
        state.batch_in_epoch = 0
    last = _budget_spent(state, train) or state.epoch >= train.epochs
    _emit(hooks, Event("step", state))
    if state.step % train.log_every == 0 or last:
        record = {"split": "train", "step": state.step, "epoch": _epoch_float(parts, state),
                  **window.flush(accelerator), "lr": _group_lrs(parts.optimizer)}
        state.history.append(record)
        _emit(hooks, Event("train", state, record))
    evaluated = ((state.step % evals.every_steps == 0) if evals.every_steps else epoch_done) or last
    if evaluated:
        _evaluate_and_keep_best(accelerator, parts, evals, ckpt_dir, state, hooks)
    save = (state.step % ckpt.every_steps == 0) if ckpt.every_steps else evaluated
    if save or last or state.stopped:
        state.window_loss, state.window_count, state.window_terms = window.snapshot(accelerator)
        state.window_tokens = (int(window.real_tokens), window.positions)
        if isinstance(parts.scheduler, ReduceLROnPlateau):
            state.plateau = parts.scheduler.state_dict()
        path = checkpoint.save_checkpoint(accelerator, ckpt_dir, state.step, asdict(state), ckpt.keep_last)
        _emit(hooks, Event("checkpoint", state, {"path": str(path)}))


def _evaluate_and_keep_best(accelerator: Accelerator, parts: Parts, evals: EvalSpec, ckpt_dir: Path,
                            state: LoopState, hooks: list[Hook]) -> None:
    started = time.perf_counter()
    metrics = parts.evaluator(accelerator, parts.model, parts.val_loader, parts.label_names)
    value = metrics.get(evals.metric)
    if value is None:
        raise GraftError(f"eval.metric = '{evals.metric}' is undefined on this validation set "
                         f"(e.g. roc_auc with a class missing); choose another metric")
    if isinstance(parts.scheduler, ReduceLROnPlateau):
        parts.scheduler.step(value)
    improved = state.best is None or (
        value < state.best - evals.min_delta if evals.resolved_mode == "min" else value > state.best + evals.min_delta
    )
    if improved:
        state.best, state.best_step, state.bad_evals = value, state.step, 0
        checkpoint.save_best(accelerator, parts.model, ckpt_dir, {"step": state.step, evals.metric: value},
                             parts.left_out)
    else:
        state.bad_evals += 1
        if evals.patience and state.bad_evals >= evals.patience:
            state.stopped = "early_stopping"
    record = {"split": "validation", "step": state.step, "epoch": _epoch_float(parts, state),
              **scalars(metrics), "best": improved}
    state.history.append(record)
    _emit(hooks, Event("eval", state, record))
    _run_evaluations(accelerator, parts, state, hooks)
    parts.train_mode(state.epoch)
    state.eval_s += time.perf_counter() - started


def _run_evaluations(accelerator: Accelerator, parts: Parts, state: LoopState, hooks: list[Hook]) -> None:
    for evaluation in parts.evaluations:
        metrics = evaluation.run(accelerator, parts.whole_model or parts.model)
        record = {"split": evaluation.name, "step": state.step, "epoch": _epoch_float(parts, state),
                  **scalars(metrics)}
        state.history.append(record)
        _emit(hooks, Event("eval", state, record))


def _stop_if_not_finite(accelerator: Accelerator, window: _Window, norm: torch.Tensor, state: LoopState,
                        train: TrainSpec, ckpt_dir: Path) -> None:
    """Stop before the update that would poison the weights (fp16 overflows are the scaler's job)."""
    fp16 = train.precision == "fp16"  # `auto` never resolves to fp16
    bad = ~torch.isfinite(window.micro_loss) | (~torch.isfinite(norm) if not fp16 else False)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.float(), "sum") > 0
    if not bool(bad):
        return
    saved = checkpoint.list_checkpoints(ckpt_dir)
    where = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved yet"
    raise NonFiniteError(
        f"step {state.step + 1}: loss {window.micro_loss.item():.4g}, gradient norm {float(norm):.4g}: training "
        f"diverged and stopped before the update; {where}. Lower optim.lr, set train.max_grad_norm, or use "
        f"train.precision: fp32, then rerun (or --resume)"
    )


class NonFiniteError(GraftError):
    """The loss or a gradient became NaN/inf."""


class _Window:
    """Loss and throughput since the last log line; the loss is reduced over processes only when logged."""

    def __init__(self, loss_sum: float = 0.0, count: int = 0, tokens: tuple[int, int] = (0, 0),
                 terms: dict[str, float] | None = None) -> None:
        self.micro_loss = torch.zeros(())
        self._reset(loss_sum, count, tokens, terms)

    def _reset(self, loss_sum: float = 0.0, count: int = 0, tokens: tuple[int, int] = (0, 0),
               terms: dict[str, float] | None = None) -> None:
        self.loss_sum = torch.tensor(loss_sum)
        self.term_sums = {name: torch.tensor(value) for name, value in (terms or {}).items()}
        self.count = count
        self.samples = 0
        self.real_tokens, self.positions = tokens
        self.since = time.perf_counter()

    def snapshot(self, accelerator: Accelerator) -> tuple[float, int, dict[str, float]]:
        """The loss sums averaged over processes: later per-process additions average out to the same mean."""
        terms = {name: accelerator.reduce(value.clone(), "mean").item() for name, value in self.term_sums.items()}
        return accelerator.reduce(self.loss_sum.clone(), "mean").item(), self.count, terms

    def add(self, loss: torch.Tensor, samples: int, tokens: tuple[torch.Tensor | int, int] = (0, 0),
            terms: dict[str, torch.Tensor] | None = None) -> None:
        self.micro_loss = loss.detach().float()
        self.loss_sum = self.loss_sum.to(self.micro_loss.device) + self.micro_loss
        for name, value in (terms or {}).items():
            previous = self.term_sums.get(name, torch.zeros(()))
            self.term_sums[name] = previous.to(self.micro_loss.device) + value.detach().float()
        self.count += 1
        self.samples += samples
        self.real_tokens += tokens[0]
        self.positions += tokens[1]

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        loss = accelerator.reduce(self.loss_sum / max(1, self.count), "mean").item()
        elapsed = time.perf_counter() - self.since
        out = {"loss": loss, "samples_per_s": self.samples / elapsed if elapsed > 0 else 0.0}
        for name, value in self.term_sums.items():
            out[f"loss_{name}"] = accelerator.reduce(value / max(1, self.count), "mean").item()
        if self.positions:  # this process's share of real (not padding) tokens: padding is compute spent on nothing
            out["real_token_share"] = int(self.real_tokens) / self.positions
        self._reset()
        return out


def _examples(batch: dict[str, Any]) -> int:
    """Examples in a batch; a packed row holds several, each starting at position 0."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return int((batch["position_ids"] == 0).sum())
    return int(batch["labels"].shape[0])


def _real_tokens(batch: dict[str, Any]) -> tuple[torch.Tensor | int, int]:
    """(real tokens, positions) of a text batch; a packed batch (no attention mask) has no padding. The count stays
    a tensor until it is logged: no device sync in the step."""
    ids = batch.get("input_ids")
    if ids is None:
        return 0, 0
    mask = batch.get("attention_mask")
    return (mask.sum() if mask is not None else ids.numel()), ids.numel()


def _group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The LR of each layer group (its decay and no-decay halves share one)."""
    return {g.get("name", str(i)).partition("/")[0]: g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _budget_spent(state: LoopState, train: TrainSpec) -> bool:
    return state.stopped is not None or (train.max_steps is not None and state.step >= train.max_steps)


def _epoch_float(parts: Parts, state: LoopState) -> float:
    return round(state.epoch + state.batch_in_epoch / max(1, len(parts.train_loader)), 4)


def _emit(hooks: list[Hook], event: Event) -> None:
    for hook in hooks:
        hook(event)
