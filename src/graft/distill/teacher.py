"""The teacher: a finished graft run of the same task and labels, checked before the student loads, and run frozen on
the student's own batches. A student cut from it (`strategy.distill.layers`) starts as its lower layers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graft.errors import GraftError
from graft.rundir import MODEL_DIR, read_record, run_recipe

if TYPE_CHECKING:
    from graft.models.build import LoadedModel
    from graft.recipe import Recipe
    from graft.tasks import Task

BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
"""Model types whose encoder is a stack `base_model.encoder.layer` that a student can be cut from."""
PROBE_TEXT = "Graft's teacher, its STUDENT: 123 café-crème!"
"""Tokenised by both: same vocabulary and same ids (casing, accents) mean the teacher reads the student's batches."""


@dataclass
class TeacherRun:
    """A finished run that teaches: where it is, its recipe and record, and its model folder's config."""

    run_dir: Path
    recipe: Recipe
    record: dict[str, Any]
    config: dict[str, Any]
    """The final model's config.json ({} for a PEFT run or a plain module)."""

    @property
    def layers(self) -> int | None:
        return self.config.get("num_hidden_layers")

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR


def read_teacher(recipe: Recipe, task: Task, labels: list[str]) -> TeacherRun:
    """strategy.teacher, checked against this run from its files alone (no weights loaded): a finished run of the
    same task with the same labels, which a student of distill.layers layers can be cut from."""
    from graft.tasks import get_task
    from graft.trained import check_model_files

    run_dir = recipe.strategy.teacher
    assert run_dir is not None, "the recipe requires strategy.teacher for distill"
    where = f"strategy.teacher {run_dir}"
    if not run_dir.is_dir():
        raise GraftError(f"{where}: no such folder; give the run directory of a finished graft run (train the "
                         f"teacher first)")
    record = read_record(run_dir)
    if record.get("status") != "completed":
        state = f"its run.json says {record['status']!r}" if record.get("status") else "no run.json"
        raise GraftError(f"{where}: not a finished graft run ({state}); give a completed run's directory")
    teacher_recipe = run_recipe(run_dir)
    if get_task(teacher_recipe.task) is not task:  # another task's outputs mean other things
        raise GraftError(f"{where}: a {teacher_recipe.task} run, and this run is {recipe.task}; the teacher must have "
                         f"been trained on the same task")
    theirs = record.get("data", {}).get("labels", [])
    if theirs != labels:
        raise GraftError(f"{where}: its labels ({', '.join(map(str, theirs[:6]))}) are not this data's "
                         f"({', '.join(labels[:6])}); the teacher's outputs must be the same classes in the same order")
    check_model_files(run_dir)
    config_file = run_dir / MODEL_DIR / "config.json"
    teacher = TeacherRun(run_dir, teacher_recipe, record,
                         json.loads(config_file.read_text()) if config_file.is_file() else {})
    if recipe.strategy.distill.layers is not None:
        _check_cut(teacher, recipe.strategy.distill.layers, where)
    return teacher


def _check_cut(teacher: TeacherRun, layers: int, where: str) -> None:
    kind = teacher.config.get("model_type")
    if kind not in BERT_LIKE or teacher.layers is None:
        what = f"a {kind} model" if kind else "not a whole transformers model (a PEFT run or a plain module)"
        raise GraftError(f"strategy.distill.layers: the teacher ({where}) is {what}; a student is cut only from a "
                         f"BERT-like encoder ({', '.join(BERT_LIKE)}); give a smaller model.name as the student "
                         f"instead")
    if layers >= teacher.layers:
        raise GraftError(f"strategy.distill.layers = {layers}: the teacher has {teacher.layers} layers; a student cut "
                         f"from it has fewer (1 to {teacher.layers - 1})")


def load_student(recipe: Recipe, task: Task, labels: list[str], teacher: TeacherRun) -> tuple[LoadedModel, str]:
    """model.name for `task`; cut from the teacher under distill.layers (its embeddings, first layers, pooling and
    fine-tuned head). The loaded student and what it starts from, in one line."""
    layers = recipe.strategy.distill.layers
    spec = recipe.model  # the teacher's folder: `auto` reads the pooling its run saved (graft.models.pooling)
    loaded = task.load_model(spec, labels, recipe.data, False)
    if layers is None:
        return loaded, f"{spec.name}, as it loads"
    cut_layers(loaded, layers)
    head = loaded.head
    rows = f"{len(head.copied)} of {len(labels)} rows copied" if head.copied else "fresh: no row could be copied"
    pooling = _saved_pooling(teacher)
    first = "layer 0" if layers == 1 else f"layers 0-{layers - 1}"
    pooled = "its pooler" if pooling == "pooler" else f"{pooling} pooling"
    return loaded, (f"the teacher cut to {layers} of its {teacher.layers} layers: its embeddings, {first}, {pooled} "
                    f"and fine-tuned head ({head.path}: {rows})")


def _saved_pooling(teacher: TeacherRun) -> str:
    from graft.models.pooling import CONFIG_KEY

    return teacher.config.get(CONFIG_KEY) or "pooler"


def cut_layers(loaded: LoadedModel, layers: int) -> None:
    """Keep the first `layers` encoder layers of a BERT-like model (the rest, and what loading said of weights no
    longer there, are dropped)."""
    model = loaded.model
    encoder = model.base_model.encoder
    encoder.layer = nn.ModuleList(list(encoder.layer)[:layers])
    model.config.num_hidden_layers = layers
    kept = {name for name, _ in loaded.root.named_parameters()}
    loaded.new_keys = [k for k in loaded.new_keys if k in kept]
    loaded.notes = [n for n in loaded.notes if not n.startswith("not in the checkpoint")]


def check_same_inputs(student: Any, teacher: Any, where: Path) -> None:
    """Refuse a student whose tokenizer gives other ids than the teacher's: the teacher reads the student's batches."""
    same = (student.get_vocab() == teacher.get_vocab()
            and student(PROBE_TEXT)["input_ids"] == teacher(PROBE_TEXT)["input_ids"])
    if not same:
        raise GraftError(f"model.name: the student's tokenizer is not the teacher's ({where}), and the teacher reads "
                         f"the student's token ids; distil into a model with the same vocabulary (the same family), "
                         f"or cut one from the teacher with strategy.distill.layers")


class FrozenTeacher:
    """The teacher's final model, frozen and in eval mode, moved once to where the student runs; its logits in fp32,
    computed at the run's autocast precision."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        self.model = model.requires_grad_(False).eval()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.no_grad()
    def logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        device = next(iter(inputs.values())).device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(**inputs).logits.float()
