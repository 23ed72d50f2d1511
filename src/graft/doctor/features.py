"""The model's frozen features for every example: what the new head of a `head_only` run reads (the feature cache's
`feature_fn`), computed once in evaluation mode. Texts go through shortest first, so a batch pads little and can be
large."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from graft.doctor.examples import Examples
from graft.recipe import Recipe
from graft.tasks import get_task

TEXT_BATCH = 128
"""At least this many texts a batch: sorted by length they pad little, and on 2 CPU cores MiniLM took 0.6 of the CPU
time over rt-polarity's sentences that batches of 32 took (256 gained nothing more)."""


def frozen_features(recipe: Recipe, examples: Examples) -> tuple[np.ndarray, dict[str, Any]]:
    """Features [n, d] in the examples' flat order, and what was run (model, device, seconds)."""
    import torch

    from graft.training.feature_cache import compute_features, feature_fn
    from graft.training.precision import resolve_precision

    started = time.perf_counter()
    task = get_task(recipe.task)
    if examples.kind == "text":
        batch = max(TEXT_BATCH, recipe.train.eval_batch)
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"eval_batch_size": batch})})
    loaded = task.load_model(recipe.model, examples.classes, recipe.data, False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded.model.to(device).eval()
    ids = {label: i for i, label in enumerate(examples.classes)}
    labels = [ids[label] for label in examples.labels]
    inputs = examples.inputs
    order = sorted(range(len(inputs)), key=lambda n: len(inputs[n])) if examples.kind == "text" else list(
        range(len(inputs)))
    loader = task.eval_loader(recipe, _split(examples.kind, [inputs[n] for n in order], [labels[n] for n in order]),
                              loaded, [], "inspect")
    # The precision a run of this recipe trains in: bf16 where the processor computes it natively (1.9x faster).
    precision = resolve_precision(recipe.train.precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        computed = compute_features(feature_fn(loaded.model, loaded.root, loaded.head_modules), loader, device)
    features = np.empty((len(order), computed.features.shape[1]), dtype=np.float32)
    features[order] = computed.features.reshape(len(order), -1).numpy()
    return features, {"model": recipe.model.name, "device": str(device), "dim": int(features.shape[1]),
                      "precision": precision, "seconds": round(time.perf_counter() - started, 2)}


def _split(kind: str, inputs: list[str], labels: list[int]) -> Any:
    """What the task's eval loader takes: a dataset of texts, or an ImageSet."""
    if kind == "image":
        from graft.data.images import ImageSet

        return ImageSet([Path(p) for p in inputs], labels)
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"text": inputs, "label": labels})
