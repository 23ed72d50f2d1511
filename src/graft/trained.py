"""What a finished run does: evaluate on data, predict, export. Each asks the run's task for what differs."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.files import check_output_file, writing
from graft.recipe import Recipe
from graft.rundir import MODEL_DIR, run_recipe
from graft.tasks import Task, get_task

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader


@dataclass
class TrainedRun:
    recipe: Recipe
    task: Task
    model: nn.Module
    processor: Any
    labels: list[str]
    input: dict[str, Any]


def open_run(run_dir: Path) -> TrainedRun:
    """A finished run's recipe, task, model, tokenizer or image input, and class names."""
    from graft.strategy.peft import is_peft_run, load_peft_run

    recipe = run_recipe(run_dir)
    task = get_task(recipe.task)
    check_model_files(run_dir)
    if is_peft_run(run_dir / MODEL_DIR):
        rebuilt = load_peft_run(run_dir / MODEL_DIR)
        return TrainedRun(recipe, task, rebuilt.attached.model, rebuilt.processor, rebuilt.labels, rebuilt.input)
    trained = task.load_trained(run_dir / MODEL_DIR, recipe.data)
    return TrainedRun(recipe, task, trained.model, trained.processor, trained.labels, trained.input)


def check_model_files(run_dir: Path) -> None:
    """Refuse a run whose final model is missing, has no weights file, or has one that is cut short or damaged,
    before anything reads or copies it."""
    from safetensors import safe_open

    folder = run_dir / MODEL_DIR
    if not folder.is_dir():
        raise GraftError(f"{run_dir}: no final model (model/ missing); did the run finish?")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise GraftError(f"{folder}: no weights file (*.safetensors); the final model is incomplete: restore it or "
                         f"train the run again")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):  # its header must cover the file exactly
                pass
        except Exception as error:  # safetensors raises its own error types for damaged files
            reason = " ".join(str(error).split())[:120] or type(error).__name__
            raise GraftError(f"{path}: damaged ({reason}); restore the file or train the run again") from None


def batches(run: TrainedRun, split: Any) -> tuple[Accelerator, nn.Module, DataLoader]:
    """The run's model and a split as batches, placed on the device the way training does it."""
    from accelerate import Accelerator

    loader = run.task.eval_loader(run.recipe, split, run)
    accelerator = Accelerator()
    model, loader = accelerator.prepare(run.model, loader)
    return accelerator, model, loader


def evaluate_run(run_dir: Path | str, data: Path | str | None = None) -> dict[str, Any]:
    """Metrics of a trained run on `data` (a labelled file, or a folder of class folders for images), or on the
    run's own test split."""
    run = open_run(Path(run_dir))
    if data is None:
        split = run.task.load_splits(run.recipe).test
    else:
        split = run.task.read_labelled(run.recipe, Path(data), run.labels)
    return run.task.evaluate(*batches(run, split), run.labels)


def predict_run(run_dir: Path | str, source: str, output: Path | str | None = None) -> list[dict[str, Any]]:
    """Predictions for each input of `source`: labels and probabilities (texts: a file, or '-' for stdin lines;
    images: a file, a folder searched recursively, a table with the image column, or '-' for paths on stdin), or a
    language model's answers to prompts.

    With `output`, rows are written there (CSV/TSV by suffix, else JSON lines), atomically.
    """
    if output is not None:
        check_output_file(Path(output))
    run = open_run(Path(run_dir))
    rows, columns = run.task.predict(run, source, lambda split: batches(run, split))
    if output is not None:
        write_rows(rows, Path(output), columns)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    """Rows as CSV/TSV (by suffix; a row's `probabilities` become p_<label> columns) or JSON lines; atomically."""
    with writing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            w = csv.DictWriter(f, fieldnames=columns, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            w.writeheader()
            w.writerows(_flat(r) for r in rows)
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    probabilities = row.get("probabilities", {})
    return {**{k: v for k, v in row.items() if k != "probabilities"}, **{f"p_{n}": p for n, p in probabilities.items()}}


def export_run(run_dir: Path | str, output: Path | str, *, merge: bool = False) -> Path:
    """A standalone copy of a run's final model at `output`: with `merge`, a PEFT run's update folded into the
    base weights (LoRA, IA³), so plain transformers (or graft's plain-module loader) serves it without peft.
    A full fine-tune's model is standalone already and is copied. Written beside `output`, then renamed."""
    from graft.strategy.peft import is_peft_run

    run_dir, output = Path(run_dir), Path(output)
    source = run_dir / MODEL_DIR
    recipe = run_recipe(run_dir)  # a run directory, with its recipe
    check_model_files(run_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise GraftError(f"--output {output}: already exists and is not empty; choose another folder or remove it")
    with writing(output) as tmp:
        if merge and is_peft_run(source):
            _save_merged(source, run_dir, recipe, tmp)
        else:
            shutil.copytree(source, tmp)
    return output


def _save_merged(source: Path, run_dir: Path, recipe: Recipe, tmp: Path) -> None:
    from graft.models.save import plain_meta
    from graft.strategy.peft import load_peft_run, merged_model

    rebuilt = load_peft_run(source)
    merged = merged_model(rebuilt, run_dir)
    if rebuilt.plain_head is not None:
        from graft.models.plain import PlainClassifier, save_plain

        head_path, in_shape = rebuilt.plain_head
        plain = PlainClassifier(merged, head_path, recipe.model.head.input_from)
        save_plain(plain, plain.state_dict(), tmp, plain_meta(recipe, rebuilt.labels, head_path, in_shape,
                                                              rebuilt.input))
    else:
        merged.save_pretrained(tmp)
    if rebuilt.processor is not None:
        rebuilt.processor.save_pretrained(tmp)
