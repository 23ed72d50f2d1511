"""What the data is, before any model reads it: sizes, examples per class and imbalance, lengths in tokens or
image sizes, duplicates within and across splits (leakage), and what the checks warned of while reading it."""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.data.checks import normalize_text

if TYPE_CHECKING:
    from graft.setup import Setup

SPLITS = ("train", "validation", "test")


def data_facts(run: Setup) -> dict[str, Any]:
    """The data section of advise.json, from the splits and loaders a run would use (nothing read again but image
    headers, and image bytes for their duplicates)."""
    splits, task = run.splits, run.task
    facts: dict[str, Any] = {"sizes": {n: len(getattr(splits, n)) for n in SPLITS}, "warnings": list(splits.warnings)}
    if task.input_kind is None:  # a language model's instructions
        facts["lengths"] = response_lengths(run.train_loader.dataset)
        return facts
    from graft.tasks.classification import class_counts

    counts = class_counts(task.label_ids(splits.train), splits.labels)
    smallest, largest = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    facts.update(classes=len(counts), class_counts=counts, smallest_class={"label": smallest, "n": counts[smallest]},
                 imbalance=round(counts[largest] / max(counts[smallest], 1), 3),
                 duplicates=duplicates({n: task.inputs(getattr(splits, n)) for n in SPLITS}, task.input_kind))
    if task.input_kind == "text":
        facts["lengths"] = token_lengths(run.train_loader.dataset["input_ids"], run.recipe.model.max_length)
    else:
        facts["image_sizes"] = image_sizes(task.inputs(splits.train), run.loaded.input["image_size"])
    return facts


def spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"median": 0, "p95": 0, "max": 0}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1]}


def token_lengths(ids: list[list[int]], max_length: int) -> dict[str, Any]:
    """Tokens per training text, and the share cut at model.max_length."""
    lengths = [len(x) for x in ids]
    return {"tokens": spread(lengths), "max_length": max_length,
            "truncated": sum(n >= max_length for n in lengths) / max(len(lengths), 1)}


def response_lengths(encoded: Any) -> dict[str, Any]:
    """Prompt and response tokens per training example (the response: what the loss is on)."""
    from graft.tasks.chat import IGNORE

    responses = [sum(t != IGNORE for t in item["labels"]) for item in encoded.items]
    prompts = [len(item["labels"]) - r for item, r in zip(encoded.items, responses, strict=True)]
    return {"response_tokens": spread(responses), "prompt_tokens": spread(prompts),
            "total_response_tokens": sum(responses), "dropped": encoded.dropped}


def image_sizes(paths: list[str], input_size: list[int]) -> dict[str, Any]:
    """Image sizes as stored (width x height, read from the headers) and the size the model takes."""
    from PIL import Image

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            continue  # unreadable files are reported by the reading itself
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {"width": spread(widths), "height": spread(heights), "input": list(input_size)}


def duplicates(inputs: dict[str, list[str]], kind: str) -> dict[str, int]:
    """Examples repeating an earlier one of their split (`train`, ...), and validation / test examples also in an
    earlier split (`validation_in_train`, `test_in_earlier`): texts compared normalised, images by their bytes."""
    same = normalize_text if kind == "text" else _file_digest
    keys = {name: [same(x) for x in values] for name, values in inputs.items()}
    found = {name: len(k) - len(set(k)) for name, k in keys.items()}
    train, validation = set(keys["train"]), set(keys["validation"])
    found["validation_in_train"] = sum(k in train for k in keys["validation"])
    found["test_in_earlier"] = sum(k in train or k in validation for k in keys["test"])
    return found


def _file_digest(path: str) -> str:
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return path


def duplicate_lines(found: dict[str, int]) -> list[str]:
    """The duplicates worth a line of warning."""
    lines = [f"{n} {name} example(s) repeat an earlier one of the same split" for name, n in found.items()
             if n and name in SPLITS]
    if found.get("validation_in_train"):
        lines.append(f"{found['validation_in_train']} validation example(s) are also in train (leakage)")
    if found.get("test_in_earlier"):
        lines.append(f"{found['test_in_earlier']} test example(s) are also in train or validation (leakage)")
    return lines



def describe_data(data: dict[str, Any]) -> str:
    """The data facts in one line: sizes, classes and imbalance, lengths or image sizes."""
    sizes = data["sizes"]
    line = f"{sizes['train']:,} train / {sizes['validation']:,} validation / {sizes['test']:,} test"
    if "classes" in data:
        small = data["smallest_class"]
        line += (f"; {data['classes']} classes, the smallest {small['label']!r} with {small['n']:,} (largest to "
                 f"smallest {data['imbalance']:.2f}:1)")
    lengths = data.get("lengths", {})
    if "tokens" in lengths:
        t = lengths["tokens"]
        line += (f"; {t['median']:g} tokens median (p95 {t['p95']:g}, max {t['max']:g}; {lengths['truncated']:.1%} "
                 f"cut at model.max_length {lengths['max_length']})")
    if "response_tokens" in lengths:
        line += (f"; {lengths['total_response_tokens']:,} response tokens ({lengths['response_tokens']['median']:g} "
                 f"median an example, prompts {lengths['prompt_tokens']['median']:g})")
    if "image_sizes" in data:
        w, h = data["image_sizes"]["width"], data["image_sizes"]["height"]
        line += (f"; images {w['median']:g}x{h['median']:g} median (up to {w['max']:g}x{h['max']:g}), read at "
                 f"{'x'.join(map(str, data['image_sizes']['input']))}")
    return line
