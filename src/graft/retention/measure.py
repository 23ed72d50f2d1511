"""Retention, measured: the source head's accuracy on the source data before training, at every evaluation and on
the final (best) weights; retention = after / before. An extra evaluation (`graft.training.loop.Evaluation`), so the
loop runs and logs it beside validation, and run.json keeps its summary under `metrics.retention`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from graft.retention.source import Source, SourceHead
from graft.training.loop import Evaluation

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.setup import Setup

NAME = "retention"
"""The split name of its rows in the history, and its key in run.json's metrics."""
KEPT = ("n", "accuracy", "f1_macro", "loss")
"""The metrics of the source head each evaluation logs."""


def retention_evaluation(run: Setup, head: SourceHead, source: Source, guards: list[str]) -> Evaluation:
    """The evaluation of `head` on `source`, summarised with `guards` for the run record."""
    loader = run.task.eval_loader(run.recipe, source.split, run.loaded, None, NAME)

    def score(accelerator: Accelerator, model: nn.Module, batches: DataLoader) -> dict[str, Any]:
        return score_source(accelerator, accelerator.unwrap_model(model), batches, head)

    def summarise(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        return summary(final, rows) | {"labels": head.labels, "guards": guards}

    return Evaluation(NAME, loader, score, summarise)


@torch.no_grad()
def score_source(accelerator: Accelerator, model: nn.Module, loader: DataLoader, head: SourceHead) -> dict[str, Any]:
    """The source head's metrics on `loader`'s batches (gathered from every process) through `model`'s features."""
    from graft.evaluation.predictions import score

    model.eval()
    logits, labels = [], []
    for batch in loader:
        out = head(model, {k: v for k, v in batch.items() if k != "labels"})
        out, y = accelerator.gather_for_metrics((out, batch["labels"]))
        logits.append(out.cpu())
        labels.append(y.cpu())
    metrics = score(torch.cat(logits).numpy(), torch.cat(labels).numpy(), head.labels)
    return {k: metrics[k] for k in KEPT}


def summary(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`before` (the evaluation before training), `after` (the final weights), their `ratio`, and each evaluation's
    accuracy and ratio (`history`)."""
    after = final["accuracy"]
    # No row at step 0 only when the loop never ran: an exact probe, whose backbone (all the source head reads)
    # never changed, so the final weights' score is the score before.
    before = rows[0]["accuracy"] if rows and rows[0]["step"] == 0 else after
    history = [{"step": r["step"], "epoch": r["epoch"], "accuracy": r["accuracy"],
                "ratio": ratio(r["accuracy"], before)} for r in rows]
    return {"metric": "accuracy", "before": before, "after": after, "ratio": ratio(after, before), "history": history,
            **{k: final[k] for k in KEPT if k != "accuracy"}}


def ratio(after: float, before: float) -> float | None:
    return after / before if before else None
