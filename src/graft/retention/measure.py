"""Retention, measured: the source head's accuracy on the held-out source examples before training, at every
evaluation and on the final (best) weights; retention = after / before. An extra evaluation
(`graft.training.loop.Evaluation`), so the loop runs and logs it beside validation, and run.json keeps its summary
under `metrics.retention`.

Two more readings tell how the old skill was lost. `refit_accuracy`: a linear probe fitted afresh on the current
features of the guarded examples, scored on the held-out ones; when it stays high while the source head's accuracy
falls, the features still hold the skill, turned where the old head no longer reads it; when it falls too, the
features lost it. `feature_cosine`: the mean cosine between each held-out example's features now and before
training (1: unmoved).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graft.retention.source import Source, SourceHead, Tap
from graft.training.loop import Evaluation

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from graft.setup import Setup

NAME = "retention"
"""The split name of its rows in the history, and its key in run.json's metrics."""
KEPT = ("n", "accuracy", "f1_macro", "loss", "refit_accuracy", "feature_cosine")
"""What each evaluation logs."""


@dataclass
class Reading:
    """Features (flattened, fp32, on the CPU) and labels of examples, in loader order."""

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor | None = None


@torch.no_grad()
def read(model: nn.Module, tap: Tap, loader: DataLoader, head: SourceHead | None = None,
         gather: Callable[[Any], Any] | None = None) -> Reading:
    """What the new head receives for each example of `loader` (the source head's logits too, given `head`), in
    eval mode; `gather` collects every process's share."""
    model.eval()
    device = next(model.parameters()).device
    features, labels, logits = [], [], []
    for batch in loader:
        model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
        taken = tap.take()
        part = [taken.flatten(1).float(), batch["labels"].to(device)]
        if head is not None:
            part.append(head.logits(taken))
        part = gather(part) if gather is not None else part
        features.append(part[0].cpu())
        labels.append(part[1].cpu())
        if head is not None:
            logits.append(part[2].cpu())
    return Reading(torch.cat(features), torch.cat(labels), torch.cat(logits) if logits else None)


def fit_linear(reading: Reading, classes: int, seed: int) -> nn.Linear | None:
    """A linear probe on `reading`: a logistic regression (graft.training.probe), its L2 strength picked on a seeded,
    stratified 30% of the examples and fitted on the rest; None with fewer than two classes to tell apart."""
    from graft.data.splits import stratified_split
    from graft.training.probe import fit_probe

    labels = reading.labels.tolist()
    if len(set(labels)) < 2:
        return None
    picked = stratified_split([str(y) for y in labels], {"val": 0.3}, seed)
    fit = picked["train"]
    seen = {labels[i] for i in fit}
    val = [i for i in picked["val"] if labels[i] in seen] or fit  # a class never fitted cannot be scored
    layer = nn.Linear(reading.features.shape[1], classes)
    fit_probe(layer, (reading.features[fit], reading.labels[fit]), (reading.features[val], reading.labels[val]))
    return layer


@torch.no_grad()
def accuracy(layer: nn.Module, reading: Reading) -> float:
    return (layer(reading.features).argmax(1) == reading.labels).float().mean().item()


def retention_evaluation(run: Setup, head: SourceHead, source: Source, guards: list[str]) -> Evaluation:
    """The evaluation of `head` on the held-out source examples, with the re-fitted probe and the features' drift,
    summarised with `guards` for the run record. Reads the original model's features now (before training)."""
    task, recipe = run.task, run.recipe
    measured = task.eval_loader(recipe, source.measured, run.loaded, None, NAME)
    guarded = task.eval_loader(recipe, source.guarded, run.loaded, None, NAME) if len(source.guarded) else None
    original = read(run.model, head.tap, measured).features
    seed, classes = recipe.train.seed, len(source.labels)

    def score(accelerator: Accelerator, model: nn.Module, batches: DataLoader) -> dict[str, Any]:
        from graft.evaluation.predictions import score as classification

        unwrapped = accelerator.unwrap_model(model)
        now = read(unwrapped, head.tap, batches, head, accelerator.gather_for_metrics)
        assert now.logits is not None
        metrics = classification(now.logits.numpy(), now.labels.numpy(), head.labels)
        metrics["feature_cosine"] = nn.functional.cosine_similarity(now.features, original, dim=1).mean().item()
        probe = fit_linear(read(unwrapped, head.tap, guarded), classes, seed) if guarded is not None else None
        metrics["refit_accuracy"] = accuracy(probe, now) if probe is not None else None
        return {k: metrics[k] for k in KEPT}

    def summarise(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        return summary(final, rows) | {"labels": head.labels, "guards": guards, "probe": source.probe,
                                       "guarded_n": len(source.guarded)}

    return Evaluation(NAME, measured, score, summarise)


def summary(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`before` (the evaluation before training), `after` (the final weights), their `ratio`, the re-fitted probe's
    accuracy before and after, and each evaluation's readings (`history`)."""
    after = final["accuracy"]
    # No row at step 0 only when the loop never ran: an exact probe, whose backbone (all the source head reads)
    # never changed, so the final weights' readings are those before.
    first = rows[0] if rows and rows[0]["step"] == 0 else final
    before = first["accuracy"]
    history = [{"step": r["step"], "epoch": r["epoch"], "accuracy": r["accuracy"],
                "ratio": ratio(r["accuracy"], before), "refit_accuracy": r.get("refit_accuracy"),
                "feature_cosine": r.get("feature_cosine")} for r in rows]
    return {"metric": "accuracy", "before": before, "after": after, "ratio": ratio(after, before),
            "refit": {"before": first.get("refit_accuracy"), "after": final.get("refit_accuracy")},
            "history": history, **{k: final[k] for k in KEPT if k not in ("accuracy", "refit_accuracy")}}


def ratio(after: float, before: float) -> float | None:
    return after / before if before else None
