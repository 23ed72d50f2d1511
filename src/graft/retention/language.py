"""Retention of a causal language model, which keeps its own output layer: its perplexity on retain conversations
(retention.data, read as the task reads its data) before training, at every evaluation and on the final weights;
retention = perplexity before / after (1: unchanged; 0.5: twice as perplexed). The guards that apply to it: replay
(retain conversations in every batch, their loss added), distill (the original model's next-token distribution on
the new task's response tokens), l2sp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft.errors import GraftError
from graft.retention.guards import add_l2sp, distillation_loss, model_inputs
from graft.retention.measure import NAME, ratio
from graft.retention.source import frozen_copy
from graft.training.loop import MIXED, Evaluation

if TYPE_CHECKING:
    from torch import nn

    from graft.recipe import Recipe
    from graft.setup import Setup
    from graft.tasks import Task

KEPT = ("n", "tokens", "loss", "perplexity", "token_accuracy")


def read_retain(recipe: Recipe, task: Task) -> tuple[list[Any], list[Any]]:
    """retention.data's conversations: a seeded share held out to measure on, and the rest (what replay draws)."""
    try:
        conversations = task.read_labelled(recipe, recipe.retention.data, [])
    except GraftError as e:
        raise GraftError(f"retention.data: {e}") from None
    order = np.random.default_rng(recipe.train.seed).permutation(len(conversations))
    n = max(1, round(recipe.retention.measure_share * len(conversations)))
    return [conversations[i] for i in sorted(order[:n])], [conversations[i] for i in sorted(order[n:])]


def attach_lm_retention(run: Setup, measured: list[Any], guarded: list[Any], say: Callable[[str], None]) -> None:
    """Score the model's perplexity on `measured` as an extra evaluation; add the recipe's guards."""
    spec = run.recipe.retention
    lines = []
    if "distill" in spec.guard:
        lines.append(_distill(run, frozen_copy(run.loaded.model)))
    if "replay" in spec.guard:
        lines.append(_replay(run, guarded))
    if "l2sp" in spec.guard:
        lines.append(add_l2sp(run))
    run.evaluations.append(_evaluation(run, measured, list(spec.guard)))
    say(f"retention: perplexity on {len(measured)} held-out conversations of {spec.data}")
    for line in lines:
        say(f"retention: {line}")


def _evaluation(run: Setup, measured: list[Any], guards: list[str]) -> Evaluation:
    loader = run.task.eval_loader(run.recipe, measured, run.loaded, None, NAME)

    def score(accelerator: Any, model: nn.Module, batches: Any) -> dict[str, Any]:
        metrics = run.task.evaluate(accelerator, model, batches, [])
        return {k: metrics[k] for k in KEPT}

    def summarise(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        return lm_summary(final, rows) | {"guards": guards}

    return Evaluation(NAME, loader, score, summarise)


def lm_summary(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`before` and `after` perplexity, `ratio` = before / after, and each evaluation's perplexity and ratio."""
    before = (rows[0] if rows and rows[0]["step"] == 0 else final)["perplexity"]
    history = [{"step": r["step"], "epoch": r["epoch"], "perplexity": r["perplexity"],
                "ratio": ratio(before, r["perplexity"])} for r in rows]
    return {"metric": "perplexity", "before": before, "after": final["perplexity"],
            "ratio": ratio(before, final["perplexity"]), "history": history,
            **{k: final[k] for k in KEPT if k != "perplexity"}}


def next_token_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits that predict the response tokens (labels shifted by one), as rows; virtual tokens that
    prompt-learning methods put before the input are cut off the front."""
    target = labels[:, 1:]
    aligned = logits[:, -target.shape[1] - 1: -1]
    return aligned[target != -100]


def _distill(run: Setup, teacher: nn.Module) -> str:
    spec = run.recipe.retention.distill

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        inputs = model_inputs(batch)
        device = next(iter(inputs.values())).device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        with torch.no_grad():
            target = next_token_logits(teacher(**inputs).logits.float(), batch["labels"])
        student = next_token_logits(output.logits.float(), batch["labels"])
        return spec.weight * distillation_loss(student, target, spec.temperature)

    run.loss_terms["distill"] = term
    return (f"distill: the original model teaches its next-token distribution on each batch's response tokens (KL "
            f"at T = {spec.temperature:g}, weight {spec.weight:g})")


def _replay(run: Setup, guarded: list[Any]) -> str:
    from accelerate import PartialState

    from graft.training.mixing import mix

    spec = run.recipe.retention.replay
    source = run.task.train_loader(run.recipe, guarded, run.loaded, False, [])
    run.train_loader = mix(run.train_loader, source.dataset, source.collate_fn, spec.share, run.recipe.train.seed,
                           PartialState().num_processes)
    model = run.model

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        return spec.weight * model(**batch[MIXED]).loss

    run.loss_terms["replay"] = term
    k = run.train_loader.batch_sampler.k  # type: ignore[union-attr]
    return (f"replay: {k} of every {run.recipe.train.batch_size} training examples are retain conversations, their "
            f"loss added (weight {spec.weight:g})")
