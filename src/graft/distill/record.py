"""run.json's `distill` section: teacher and student side by side on quality (test metrics), size (parameters,
megabytes of weights on disk) and prediction latency (median milliseconds per example at batch 1 and batch 32, the
two timed in turn on the same tokenised slice of the test split, in one process, so load on the machine falls on
both)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graft.errors import GraftError
from graft.evaluation.metrics import scalars
from graft.rundir import MODEL_DIR

if TYPE_CHECKING:
    from accelerate import Accelerator

    from graft.distill.teacher import FrozenTeacher, TeacherRun
    from graft.setup import Setup

TIMED = {1: 32, 32: 128}
"""Batch size -> how many test examples (the first ones) are timed at it."""
REPEATS = 3
"""Passes over the timed batches, teacher and student in turn in each."""


def distill_record(run: Setup, teacher: TeacherRun, frozen: FrozenTeacher, start: str, accelerator: Accelerator,
                   model: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """The section, from the student's final (best) weights, saved already, and its test metrics in `record`."""
    student = accelerator.unwrap_model(model).eval()
    frozen.model.to(next(student.parameters()).device)
    test, source = _teacher_test(run, teacher, accelerator, frozen.model)
    texts = run.task.inputs(run.splits.test)[:max(TIMED.values())]
    latency = measure_latency({"teacher": frozen.model, "student": student}, texts, run.loaded.processor,
                              run.recipe.model.max_length)
    sides = {
        "teacher": {"run": str(teacher.run_dir), "test": test, "test_from": source,
                    **_size(frozen.model, teacher.model_dir), "latency_ms": latency["teacher"]},
        "student": {"start": start, "test": scalars(record["metrics"]["test"]),
                    **_size(student, run.recipe.output.dir / MODEL_DIR), "latency_ms": latency["student"]},
    }
    spec = run.recipe.strategy.distill
    return {**sides, "student_vs_teacher": _ratios(sides["student"], sides["teacher"]),
            "loss": {"temperature": spec.temperature, "weight": spec.weight,
                     "unlabelled": str(spec.unlabelled) if spec.unlabelled is not None else None},
            "latency": {"device": str(next(student.parameters()).device), "torch_threads": torch.get_num_threads(),
                        "examples": {f"batch_{n}": min(k, len(texts)) for n, k in TIMED.items()},
                        "repeats": REPEATS, "precision": "fp32"}}


def _teacher_test(run: Setup, teacher: TeacherRun, accelerator: Accelerator,
                  model: nn.Module) -> tuple[dict[str, Any], str]:
    """The teacher's test metrics: its own record's when its test split is this run's, else measured here."""
    labels = run.splits.labels
    try:
        theirs = run.task.load_splits(teacher.recipe).test
        same = run.task.rows(theirs, labels) == run.task.rows(run.splits.test, labels)
    except GraftError:  # its data cannot be read again (moved, changed): measure it
        same = False
    if same:
        return scalars(teacher.record["metrics"]["test"]), "the teacher run's record (the same test split)"
    loader = accelerator.prepare(run.task.eval_loader(run.recipe, run.splits.test, run.loaded))
    return scalars(run.task.evaluate(accelerator, model, loader, labels)), "measured on this run's test split"


def _size(model: nn.Module, folder: Path) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {"layers": getattr(config, "num_hidden_layers", None), "params": sum(p.numel() for p in model.parameters()),
            "megabytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20}


def _ratios(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = {m: ratio(student["test"].get(m), teacher["test"].get(m)) for m in ("accuracy", "f1_macro")}
    out.update(params=ratio(student["params"], teacher["params"]),
               megabytes=ratio(student["megabytes"], teacher["megabytes"]))
    for k, ms in teacher["latency_ms"].items():
        out[f"latency_{k}"] = ratio(student["latency_ms"][k], ms)
    return out


@torch.inference_mode()
def measure_latency(models: dict[str, nn.Module], texts: list[str], tokenizer: Any,
                    max_length: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per example of each model (in eval mode, fp32, on its device) at each batch size of
    `TIMED`, over `REPEATS` passes, the models timed in turn on the same batches."""
    device = next(next(iter(models.values())).parameters()).device
    batches = {n: [dict(tokenizer(texts[i:i + n], truncation=True, max_length=max_length, padding=True,
                                  return_tensors="pt").to(device)) for i in range(0, min(k, len(texts)), n)]
               for n, k in TIMED.items()}
    for model in models.values():  # warm each: thread pools, allocators
        model.eval()(**batches[max(TIMED)][0])
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in TIMED} for name in models}
    for _ in range(REPEATS):
        for n, chunk in batches.items():
            for name, model in models.items():
                times[name][n] += [_per_example_ms(model, batch) for batch in chunk]
    return {name: {f"batch_{n}": statistics.median(t) for n, t in per.items()} for name, per in times.items()}


def _per_example_ms(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    synchronize = torch.cuda.synchronize if batch["input_ids"].is_cuda else (lambda: None)
    synchronize()
    started = time.perf_counter()
    model(**batch)
    synchronize()
    return 1000 * (time.perf_counter() - started) / len(batch["input_ids"])

