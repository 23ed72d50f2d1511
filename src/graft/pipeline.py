"""The orchestrator: recipe → data → model → loop → evaluation → run record, for train / eval / predict.

Each public function here is what one CLI command calls, and what the Python API exposes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.errors import GraftError
from graft.recipe import Recipe, load_recipe
from graft.rundir import (
    CKPT_DIR,
    MODEL_DIR,
    check_run_dir,
    claim_run_dir,
    run_recipe,
    write_record,
)

PHASED = ("two_phase", "gradual_unfreeze")

if TYPE_CHECKING:
    from collections.abc import Callable

    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel
    from graft.strategy.peft import Attached
    from graft.training.loop import LoopState


def train(recipe: Recipe | str | Path | dict[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
          resume: bool = False, overwrite: bool = False, hooks: list[Callable] | None = None) -> dict[str, Any]:
    """Fine-tune as the recipe says, evaluate on test, write the run directory; return the run record."""
    from accelerate.utils import set_seed

    from graft.evaluation.metrics import confident_mistakes
    from graft.evaluation.predictions import collect_logits, score
    from graft.models.build import load_model
    from graft.models.groups import layer_groups
    from graft.strategy.plan import apply_plan, make_plan
    from graft.training import checkpoint
    from graft.training.feature_cache import head_train_mode
    from graft.training.logging import console_hooks
    from graft.training.loop import LoopState, Parts, fit, steps_per_epoch, total_steps
    from graft.training.optim import build_optimizer, build_scheduler, param_groups

    started = time.perf_counter()
    _reset_peak_memory()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    check_run_dir(recipe, resume, overwrite)
    accelerator = _accelerator(recipe)
    run_dir = recipe.output.dir
    ckpt_dir = run_dir / CKPT_DIR
    say = _printer(accelerator)
    set_seed(recipe.train.seed)

    splits = _load_splits(recipe)
    for warning in splits.warnings:
        say(f"warning: {warning}")
    loaded = load_model(recipe.model, recipe.task, splits.labels, recipe.data,
                        scratch=recipe.strategy.name == "scratch")
    for note in [*loaded.notes, loaded.head.line()]:
        say(f"model: {note}")
    lm = recipe.task == "causal_lm"
    if lm:
        loaded.model.config.use_cache = False  # a cache in training also turns off packed attention masks
    _configure_model(loaded, recipe)
    root, attached = loaded.root, None
    if recipe.strategy.is_peft:
        from graft.strategy.peft import attach

        attached = attach(loaded.model, root, loaded.head_modules, recipe.strategy, recipe.task, recipe.model.groups)
        for note in attached.notes:
            say(f"model: {note}")
        loaded.model, root = attached.model, attached.root
    groups = attached.groups if attached else layer_groups(root, loaded.head_modules, recipe.model.groups)
    plan = make_plan(root, groups, loaded.head_modules, recipe.strategy, recipe.train.epochs,
                     attached.trains if attached else None)
    cached = plan.backbone_frozen_throughout and recipe.strategy.feature_cache
    if cached and recipe.task == "image_classification" and recipe.data.augment.enabled:
        say("augmentation: off, the feature cache needs fixed inputs (strategy.feature_cache: false to augment)")
    # Data is read (images decoded) before the run directory is touched: a bad file leaves nothing behind.
    train_loader, val_loader, test_loader, notes = _loaders(recipe, splits, loaded, augment=not cached)
    for note in notes:
        say(f"warning: {note}")
    splits.warnings.extend(notes)
    rendered = None
    if lm:
        from graft.tasks.causal_lm import render

        rendered = render(loaded.processor, train_loader.dataset.conversations[0])
        say(f"example 1 as the model sees it (the loss is on the assistant's turns only):\n{rendered}")
    previous = claim_run_dir(accelerator, recipe, overwrite and not resume)

    model, trained, cache_note, cache_s = loaded.model, loaded.model, None, 0.0
    if cached:
        cache_started = time.perf_counter()
        trained, train_loader, val_loader, cache_note = _feature_cache(loaded, train_loader, val_loader,
                                                                      accelerator.device)
        cache_s = time.perf_counter() - cache_started
        say(f"feature cache: {cache_note} ({cache_s:.1f} s)")
    # Parameters that train at some epoch require grad while being wrapped (DDP registers only those); the plan
    # then sets each epoch's state.
    apply_plan(root, plan, epoch=10**9)
    optimizer = build_optimizer(param_groups(root, plan, recipe.optim.lr, recipe.optim.weight_decay), recipe.optim)
    if trained is model:
        model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
            model, optimizer, train_loader, val_loader, test_loader)
        trained = model
        begin_epoch = partial(apply_plan, root, plan)
    else:
        trained, optimizer, train_loader, val_loader = accelerator.prepare(trained, optimizer, train_loader,
                                                                          val_loader)
        model, test_loader = accelerator.prepare(model, test_loader)
        apply_plan(root, plan, epoch=0)
        begin_epoch = head_train_mode(trained)
    parts = Parts(trained, optimizer, None, train_loader, val_loader, splits.labels, begin_epoch)
    if lm:
        from graft.tasks.causal_lm import evaluate_lm

        parts.evaluator = evaluate_lm
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
    table = plan.table(root, recipe.optim.lr)
    record = _new_record(recipe, splits, loaded, table, cache_note, accelerator)
    if rendered is not None:
        record["data"]["rendered_example"] = rendered
    write_record(accelerator, run_dir, record)
    what = "instruction examples" if lm else f"examples, {len(splits.labels)} classes"
    say(f"{len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test {what}; "
        f"strategy {recipe.strategy.name}")
    say(format_groups(table))

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

    best = checkpoint.load_best(accelerator, trained, ckpt_dir)
    if lm:
        loaded.model.config.use_cache = True  # what the saved model generates with
    test_started = time.perf_counter()
    if lm:
        test_metrics = parts.evaluator(accelerator, model, test_loader, [])
    else:
        logits, truth = collect_logits(accelerator, model, test_loader)
        test_metrics = score(logits, truth, splits.labels)
    test_s = time.perf_counter() - test_started
    _save_final_model(accelerator, model, loaded, recipe, splits.labels, run_dir / MODEL_DIR, attached)

    record.update(status="completed", stopped=state.stopped, best=best)
    record["metrics"] = {"test": test_metrics, "validation": _best_validation(state), "history": state.history}
    if lm:
        record["samples"] = _sample_generations(accelerator, model, loaded, splits.validation, recipe)
    else:
        record["mistakes"] = confident_mistakes(logits, truth, splits.labels, _inputs(splits.test))
    epochs_run = max(1, state.epoch + (1 if state.batch_in_epoch else 0))
    record["timings"] = {
        "setup_s": round(setup_s, 3), "train_s": round(state.train_s, 3), "eval_s": round(state.eval_s, 3),
        "test_s": round(test_s, 3), "total_s": round(time.perf_counter() - started, 3), "steps": state.step,
        "steps_per_s": round(state.step / state.train_s, 4) if state.train_s else None,
        "train_s_per_epoch": round(state.train_s / epochs_run, 3),
        "feature_cache_s": round(cache_s, 3),
    }
    record["peak_memory_mb"] = _peak_memory_mb()
    write_record(accelerator, run_dir, record)
    if accelerator.is_main_process:
        from graft.report import write_report

        write_report(run_dir)
    if previous is not None and accelerator.is_main_process:
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.end_training()
    return record


def _configure_model(loaded: LoadedModel, recipe: Recipe) -> None:
    """Gradient checkpointing, and the output layer kept in fp32 under bf16/fp16 autocast (logits and the loss
    are where low precision hurts most)."""
    if recipe.train.gradient_checkpointing:
        enable = getattr(loaded.model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise GraftError("train.gradient_checkpointing: for Hugging Face models; a plain module checkpoints "
                             "in its own forward")
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.train.precision != "fp32":
        from graft.training.precision import keep_fp32

        keep_fp32(loaded.root.get_submodule(loaded.head.path))


def _sample_generations(accelerator: Accelerator, model: nn.Module, loaded: LoadedModel, conversations: list,
                        recipe: Recipe) -> list[dict[str, Any]]:
    """Greedy answers to the first few validation prompts, for the record and the report (main process)."""
    from graft.tasks.causal_lm import generate

    unwrapped = accelerator.unwrap_model(model)
    if not recipe.eval.samples or not hasattr(unwrapped, "generate") or not accelerator.is_main_process:
        return []
    return generate(unwrapped, loaded.processor, conversations[: recipe.eval.samples], recipe.eval.max_new_tokens)


def _inputs(split: Any) -> list[str]:
    """What each example of a split is, for people: its text or its image file."""
    paths = getattr(split, "paths", None)
    return [str(p) for p in paths] if paths is not None else list(split["text"])


def format_groups(table: list[dict[str, Any]]) -> str:
    """The layer-group table a run prints at its start."""
    width = max(len(row["name"]) for row in table)
    lines = [f"{'group':<{width}}  {'params':>10}  {'trainable':>10}  {'from epoch':>10}  {'lr':>9}"]
    for row in table:
        start = "-" if row["from_epoch"] is None else str(row["from_epoch"])
        lines.append(f"{row['name']:<{width}}  {row['params']:>10,}  {row['trainable']:>10,}  {start:>10}  "
                     f"{row['lr']:>9.3g}")
    total, trainable = sum(r["params"] for r in table), sum(r["trainable"] for r in table)
    lines.append(f"{'total':<{width}}  {total:>10,}  {trainable:>10,}")
    return "\n".join(lines)


def _feature_cache(loaded: LoadedModel, train_loader: DataLoader, val_loader: DataLoader,
                   device: Any) -> tuple[nn.Module, DataLoader, DataLoader, str]:
    """The cached head and its loaders when the cache reproduces the model, else the model and a reason."""
    from graft.training.feature_cache import build_cache

    cache, reason = build_cache(loaded.model, loaded.root, loaded.head_modules, train_loader, val_loader, device)
    if cache is None:
        return loaded.model, train_loader, val_loader, f"off: {reason}"
    return cache.head, cache.train_loader, cache.val_loader, "on: the backbone ran once, the head trains on its outputs"


def evaluate_run(run_dir: Path | str, data: Path | str | None = None) -> dict[str, Any]:
    """Metrics of a trained run on `data` (a labelled file, or a folder of class folders for images), or on the
    run's own test split."""
    from graft.evaluation.predictions import evaluate

    run = _open_run(Path(run_dir))
    if data is None:
        split = _load_splits(run.recipe).test
    elif run.recipe.task == "causal_lm":
        from graft.data.instructions import read_conversations

        split = read_conversations(Path(data), Path(data).name, run.recipe.data)
    elif run.recipe.task == "image_classification":
        from graft.data.images import labelled_images

        d = run.recipe.data
        split = labelled_images(Path(data), run.labels, d.image_column, d.label_column)
    else:
        from graft.data import load_labelled_file

        d = run.recipe.data
        split = load_labelled_file(Path(data), text_column=d.text_column, label_column=d.label_column,
                                   labels=run.labels, normalize_labels=d.normalize_labels)
    if run.recipe.task == "causal_lm":
        from graft.tasks.causal_lm import evaluate_lm

        return evaluate_lm(*_batches(run, split))
    return evaluate(*_batches(run, split), run.labels)


def predict_run(run_dir: Path | str, source: str, output: Path | str | None = None) -> list[dict[str, Any]]:
    """Labels and probabilities for each input of `source`: texts (a file, or '-' for stdin lines) or, for an image
    run, images (a file, a folder searched recursively, a table with the image column, or '-' for paths on stdin).

    With `output`, rows are written there (CSV/TSV by suffix, else JSON lines), atomically.
    """
    from graft.evaluation.metrics import softmax
    from graft.evaluation.predictions import collect_logits

    run = _open_run(Path(run_dir))
    if run.recipe.task == "causal_lm":
        rows = _generate_answers(run, source)
        if output is not None:
            write_rows(rows, Path(output))
        return rows
    if run.recipe.task == "image_classification":
        from graft.data.images import ImageSet, unlabelled_images

        key = "image"
        paths = unlabelled_images(source, image_column=run.recipe.data.image_column)
        inputs, split = [str(p) for p in paths], ImageSet(paths, None)
    else:
        import datasets

        from graft.data import read_unlabelled_texts

        key = "text"
        inputs = read_unlabelled_texts(source, text_column=run.recipe.data.text_column)
        split = datasets.Dataset.from_dict({"text": inputs})
    logits, _ = collect_logits(*_batches(run, split))
    probs = softmax(logits) if len(inputs) else np.zeros((0, len(run.labels)))
    rows = [{key: x, "label": run.labels[int(row.argmax())], "score": float(row.max()),
             "probabilities": {name: float(v) for name, v in zip(run.labels, row, strict=True)}}
            for x, row in zip(inputs, probs, strict=True)]
    if output is not None:
        write_predictions(rows, Path(output), run.labels)
    return rows


def _generate_answers(run: _TrainedRun, source: str) -> list[dict[str, Any]]:
    """A language model's greedy answers to prompts: a table with the prompt (or messages) column, a .txt file or
    stdin with one prompt a line."""
    from graft.data.checks import require_column, text_values
    from graft.data.instructions import checked_messages, with_system
    from graft.data.tables import read_table, read_unlabelled_texts
    from graft.tasks.causal_lm import generate

    d = run.recipe.data
    table = None if source == "-" or Path(source).suffix.lower() in (".txt", "") else read_table(Path(source))
    if table is not None and d.messages_column in table.column_names:
        rows = table.select_columns([d.messages_column]).to_dict()[d.messages_column]
        conversations = [checked_messages(m, source, i + 1, d.messages_column, need_answer=False)
                         for i, m in enumerate(rows)]
    else:
        if table is None:
            prompts = read_unlabelled_texts(source, text_column=d.prompt_column)
        else:
            require_column(table.column_names, d.prompt_column, Path(source).name, "data.prompt_column")
            prompts = text_values(table.select_columns([d.prompt_column]).to_dict()[d.prompt_column],
                                  Path(source).name, d.prompt_column)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
    conversations = with_system(conversations, d.system)
    answers = generate(run.model, run.processor, conversations, run.recipe.eval.max_new_tokens)
    return [{"prompt": a["prompt"], "generated": a["generated"]} for a in answers]


@dataclass
class _TrainedRun:
    recipe: Recipe
    model: nn.Module
    processor: Any
    labels: list[str]
    input: dict[str, Any]


def _open_run(run_dir: Path) -> _TrainedRun:
    """A finished run's recipe, model, tokenizer or image input, and class names."""
    from graft.models.build import load_trained
    from graft.strategy.peft import is_peft_run, load_peft_run

    recipe = run_recipe(run_dir)
    if is_peft_run(run_dir / MODEL_DIR):
        rebuilt = load_peft_run(run_dir / MODEL_DIR)
        return _TrainedRun(recipe, rebuilt.attached.model, rebuilt.processor, rebuilt.labels, rebuilt.input)
    trained = load_trained(run_dir / MODEL_DIR, recipe.task, recipe.data)
    return _TrainedRun(recipe, trained.model, trained.processor, trained.labels, trained.input)


def export_run(run_dir: Path | str, output: Path | str, *, merge: bool = False) -> Path:
    """A standalone copy of a run's final model at `output`: with `merge`, a PEFT run's update folded into the
    base weights (LoRA, IA³), so plain transformers (or graft's plain-module loader) serves it without peft.
    A full fine-tune's model is standalone already and is copied. Written beside `output`, then renamed."""
    from graft.strategy.peft import is_peft_run, load_peft_run, merged_model

    run_dir, output = Path(run_dir), Path(output)
    source = run_dir / MODEL_DIR
    run_recipe(run_dir)  # a run directory, with its recipe
    if not source.is_dir():
        raise GraftError(f"{run_dir}: no final model (model/ missing); did the run finish?")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise GraftError(f"--output {output}: already exists and is not empty; choose another folder or remove it")
    tmp = output.with_name(f".tmp-{output.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge and is_peft_run(source):
        rebuilt = load_peft_run(source)
        merged = merged_model(rebuilt, run_dir)
        if rebuilt.plain_head is not None:
            from graft.models.plain import PlainClassifier, save_plain

            recipe = run_recipe(run_dir)
            head_path, in_shape = rebuilt.plain_head
            plain = PlainClassifier(merged, head_path, recipe.model.head.input_from)
            save_plain(plain, plain.state_dict(), tmp,
                       plain_meta(recipe, rebuilt.labels, head_path, in_shape, rebuilt.input))
        else:
            merged.save_pretrained(tmp)
        if rebuilt.processor is not None:
            rebuilt.processor.save_pretrained(tmp)
    else:
        shutil.copytree(source, tmp)
    if output.exists():
        output.rmdir()
    os.replace(tmp, output)
    return output


def _batches(run: _TrainedRun, split: Any) -> tuple[Accelerator, nn.Module, DataLoader]:
    """The run's model and a split as batches, placed on the device the way training does it."""
    from accelerate import Accelerator

    batch = run.recipe.train.eval_batch_size or run.recipe.train.batch_size
    loader = _eval_loader(run.recipe, split, run.processor, run.input, batch)
    accelerator = Accelerator()
    model, loader = accelerator.prepare(run.model, loader)
    return accelerator, model, loader


def _loaders(recipe: Recipe, splits: Any, loaded: LoadedModel,
             augment: bool) -> tuple[DataLoader, DataLoader, DataLoader, list[str]]:
    """Training batches (shuffled per epoch, seeded; images augmented when `augment` and the recipe says so) and
    in-order validation and test batches; and what was left out on the way (unreadable images)."""
    t, notes = recipe.train, []
    eval_batch = t.eval_batch_size or t.batch_size
    val, test = (_eval_loader(recipe, getattr(splits, n), loaded.processor, loaded.input, eval_batch, notes, n)
                 for n in ("validation", "test"))
    if recipe.task == "causal_lm":
        from graft.tasks import causal_lm

        encoded = _encoded(recipe, splits.train, loaded.processor, notes, "train")
        train = causal_lm.train_loader(encoded, loaded.processor.pad_token_id, t.batch_size, t.seed,
                                       recipe.data.group_by_length, recipe.data.packing, t.num_workers)
        return train, val, test, notes
    if recipe.task == "image_classification":
        from graft.tasks import image
        from graft.tasks.augment import Augment

        size = tuple(loaded.input["image_size"])
        aug = recipe.data.augment
        augmenter = Augment(size, aug.crop_scale, aug.crop_ratio, aug.hflip, aug.rotation, aug.color_jitter,
                                  t.seed) if augment and aug.enabled else None
        images = _image_tensors(splits.train, size, recipe.data.bad_images, "train", notes,
                                square_source=augmenter is not None)
        train = image.train_loader(images, t.batch_size, t.seed, loaded.input["mean"], loaded.input["std"],
                                   t.num_workers, augmenter)
    else:
        from graft.tasks import text

        tokenized = text.tokenize(splits.train, loaded.processor, recipe.model.max_length)
        train = text.train_loader(tokenized, loaded.processor, t.batch_size, t.seed, recipe.data.group_by_length,
                                  t.num_workers)
    return train, val, test, notes


def _image_tensors(split: Any, size: tuple[int, ...], bad_images: str, name: str, notes: list[str],
                   square_source: bool = False) -> Any:
    """A split's images decoded once into memory; unreadable files stop the run or are left out (and noted)."""
    from graft.data.checks import plural, shown
    from graft.data.images import decode_images
    from graft.tasks.image import ImageTensors

    decoded = decode_images(split.paths, (size[0], size[1]), skip_bad=bad_images == "skip",
                            square_source=square_source)
    if decoded.bad:
        if not decoded.kept and len(split.paths):
            raise GraftError(f"data.{name}: none of its {len(split.paths)} images can be read (e.g. "
                             f"{decoded.bad[0]}); check the files")
        notes.append(f"data.{name}: left out {plural(len(decoded.bad), 'unreadable image')} "
                     f"({shown(decoded.bad, 3)}; data.bad_images: skip)")
    labels = None if split.labels is None else [split.labels[i] for i in decoded.kept]
    return ImageTensors(decoded.pixels, labels)


def _encoded(recipe: Recipe, conversations: list, tokenizer: Any, notes: list[str], name: str) -> Any:
    from graft.tasks.causal_lm import Encoded

    encoded = Encoded(conversations, tokenizer, recipe.model.max_length)
    if encoded.dropped:
        if not len(encoded):
            raise GraftError(f"data.{name}: every example's response lies beyond model.max_length = "
                             f"{recipe.model.max_length} tokens; raise it or shorten the prompts")
        notes.append(f"data.{name}: left out {encoded.dropped} example(s) whose response starts after "
                     f"model.max_length = {recipe.model.max_length} tokens (nothing to learn from); raise it to keep "
                     f"them")
    return encoded


def _eval_loader(recipe: Recipe, split: Any, processor: Any, image_input: dict[str, Any], batch_size: int,
                 notes: list[str] | None = None, name: str = "test") -> DataLoader:
    if recipe.task == "causal_lm":
        from graft.tasks import causal_lm

        encoded = _encoded(recipe, split, processor, notes if notes is not None else [], name)
        return causal_lm.eval_loader(encoded, processor.pad_token_id, batch_size, recipe.train.num_workers)
    if recipe.task == "image_classification":
        from graft.tasks import image

        bad = recipe.data.bad_images if notes is not None else "error"
        images = _image_tensors(split, tuple(image_input["image_size"]), bad, name, notes if notes is not None else [])
        return image.eval_loader(images, batch_size, image_input["mean"], image_input["std"],
                                 recipe.train.num_workers)
    from graft.tasks import text

    tokenized = text.tokenize(split, processor, recipe.model.max_length)
    return text.eval_loader(tokenized, processor, batch_size, recipe.train.num_workers)


def write_rows(rows: list[dict[str, Any]], path: Path, fields: list[str] | None = None) -> None:
    """Rows as CSV/TSV (by suffix; columns `fields`, else the first row's keys) or JSON lines; written atomically."""
    import csv

    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            w = csv.DictWriter(f, fieldnames=fields or (list(rows[0]) if rows else ["prompt", "generated"]),
                               delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_predictions(rows: list[dict[str, Any]], path: Path, labels: list[str]) -> None:
    """CSV/TSV (one probability column per label) or JSON lines, chosen by suffix; written atomically."""
    if path.suffix.lower() not in (".csv", ".tsv"):
        return write_rows(rows, path)
    key = next(iter(rows[0])) if rows else "text"  # `text` or `image`
    flat = [{key: r[key], "label": r["label"], "score": r["score"],
             **{f"p_{n}": r["probabilities"][n] for n in labels}} for r in rows]
    return write_rows(flat, path, [key, "label", "score", *(f"p_{n}" for n in labels)])


def _accelerator(recipe: Recipe) -> Accelerator:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    precision = recipe.train.precision
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


def _load_splits(recipe: Recipe) -> Any:
    """TextSplits or ImageSplits: train/validation/test, class names, sources, warnings."""
    d = recipe.data
    if recipe.task == "causal_lm":
        from graft.data.instructions import load_instruction_splits

        return load_instruction_splits(d.train, d.validation, d.test, data=d, split=d.split, seed=recipe.train.seed)
    if recipe.task == "image_classification":
        from graft.data.images import load_image_splits

        return load_image_splits(d.train, d.validation, d.test, split=d.split, seed=recipe.train.seed,
                                 image_column=d.image_column, label_column=d.label_column, leakage=d.leakage)
    from graft.data import load_text_splits

    return load_text_splits(d.train, d.validation, d.test, text_column=d.text_column, label_column=d.label_column,
                            split=d.split, seed=recipe.train.seed, leakage=d.leakage,
                            normalize_labels=d.normalize_labels)


def _new_record(recipe: Recipe, splits: Any, loaded: LoadedModel, table: list[dict[str, Any]],
                cache_note: str | None, accelerator: Accelerator) -> dict[str, Any]:
    from graft.environment import environment

    return {
        "status": "running",
        "recipe": recipe.dump(),
        "data": {"labels": splits.labels, "sources": splits.sources, "warnings": splits.warnings,
                 "sizes": {n: len(getattr(splits, n)) for n in ("train", "validation", "test")}},
        "model": {"source": loaded.source, "new_parameters": loaded.new_keys, "load_report": loaded.notes,
                  "head": {"path": loaded.head.path, "rows_copied": loaded.head.copied}, "input": loaded.input},
        "params": {"total": sum(r["params"] for r in table), "trainable": sum(r["trainable"] for r in table)},
        "groups": table,
        "strategy": {"name": recipe.strategy.name, "feature_cache": cache_note},
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
    write_record(accelerator, run_dir, record)


def _save_final_model(accelerator: Accelerator, model: nn.Module, loaded: LoadedModel, recipe: Recipe,
                      labels: list[str], path: Path, attached: Attached | None = None) -> None:
    """The format the model's ecosystem loads: save_pretrained with tokenizer / image processor and label names,
    or for a plain module safetensors plus how to rebuild it; a PEFT run saves what it trained (peft's adapter
    format where peft made it) and how to rebuild the base. Written beside, then renamed into place."""
    from graft.models.plain import PlainClassifier, save_plain

    tmp = path.with_name(f".tmp-{path.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if attached is not None:
            from graft.strategy.peft import save_peft_run

            save_peft_run(tmp, attached, recipe, labels, loaded.input)
        elif isinstance(unwrapped, PlainClassifier):
            save_plain(unwrapped, state_dict, tmp,
                       plain_meta(recipe, labels, unwrapped.head_path, loaded.head_in_shape, loaded.input))
        else:
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
        if loaded.processor is not None:
            loaded.processor.save_pretrained(tmp)
        old = path.with_name(f".old-{path.name}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def plain_meta(recipe: Recipe, labels: list[str], head_path: str, head_in_shape: list[int],
               image_input: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild a plain module: its factory, kwargs, head and input."""
    spec = recipe.model
    return {"factory": spec.name, "kwargs": spec.kwargs, "head_path": head_path, "head": spec.head.model_dump(),
            "head_in_shape": head_in_shape, "labels": labels, "input": image_input}


PROC = Path("/proc/self")


def _reset_peak_memory() -> None:
    """Count this run's peak memory afresh, so that several runs in one process (a comparison, a cross-validation)
    each report their own: Linux resets the peak RSS on `5` written to clear_refs."""
    import torch

    with contextlib.suppress(OSError):  # not Linux: the peak is the process's since it started (ru_maxrss)
        (PROC / "clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb() -> float:
    """Peak resident memory since `_reset_peak_memory` (Linux VmHWM; elsewhere ru_maxrss), or on a GPU the peak
    of allocated GPU memory when larger."""
    import resource

    import torch

    try:
        line = next(x for x in (PROC / "status").read_text().splitlines() if x.startswith("VmHWM:"))
        peak = int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return round(peak, 1)


def _printer(accelerator: Accelerator) -> Callable[[str], None]:
    def say(line: str) -> None:
        if accelerator.is_main_process:
            print(line, file=sys.stderr, flush=True)

    return say
