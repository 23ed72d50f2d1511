"""The first phase of every run, and of everything that needs a model and data without a run: read and check the
splits, load the model for the task, attach the strategy, plan what trains when, build the loaders.

`setup` writes no file. `graft train` calls it before it claims the run directory (a bad file leaves nothing
behind); compare and cross-validation read splits through it; an advisor or an LR finder can take its model and
loaders as they are. A `Setup` also carries the seams a capability fills before training: the task's loss, loss terms,
extra evaluations, a training loader that mixes in a second source (`graft.training.mixing.mix`), and sections the
run record gets at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.recipe import Recipe, TrainSpec
from graft.tasks import Task, get_task

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel
    from graft.strategy.peft import Attached
    from graft.strategy.plan import Plan
    from graft.training.loop import Evaluation, LossTerm
    from graft.training.optim import OptimChoice


Section = Callable[["Accelerator", "nn.Module", dict[str, Any]], dict[str, Any]]
"""(accelerator, the final model, the run record so far) -> a section of run.json."""


def quiet(line: str) -> None:
    """A `say` that says nothing."""


@dataclass
class Setup:
    """Everything a run needs before it writes anything."""

    recipe: Recipe
    task: Task
    splits: Any
    """`.train`, `.validation`, `.test`, `.labels` (class names), `.sources`, `.warnings`."""
    loaded: LoadedModel
    """The model as loaded for the task: its processor, head, input description, load report."""
    model: nn.Module
    """What trains and is saved: the loaded model, or the PEFT-wrapped one."""
    root: nn.Module
    """The module whose parameter names the plan, the groups and the optimiser use."""
    attached: Attached | None
    plan: Plan
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    cached: bool
    """The whole backbone stays frozen and the recipe allows the feature cache: fit will train the head alone."""
    optim: OptimChoice
    """The optimiser (optim.name: auto resolved by the model's family) and its weight decay, with why."""
    notes: list[str] = field(default_factory=list)
    """Warnings met on the way (also printed), for the record."""
    data_record: dict[str, Any] = field(default_factory=dict)
    """What the task adds to run.json's `data` section."""
    noun: str = "examples"
    """How the size line names the examples ("examples, 4 classes")."""
    task_loss: LossTerm | None = None
    """The task's training loss when it is not the model's own (class weights); None: `output.loss`."""
    loss_record: dict[str, Any] = field(default_factory=dict)
    """What run.json's `loss` says: the class weights and why."""
    loss_terms: dict[str, LossTerm] = field(default_factory=dict)
    """Named terms added to the task's loss (see `graft.training.loop`)."""
    evaluations: list[Evaluation] = field(default_factory=list)
    """Named extra evaluation sets, run beside validation and at the end."""
    sections: dict[str, Section] = field(default_factory=dict)
    """Named sections run.json gets at the end, each computed from the final model once it is saved."""


def setup(recipe: Recipe, say: Callable[[str], None] = quiet) -> Setup:
    """Splits, model, strategy, plan and loaders for `recipe`, printing what a user should know through `say`."""
    from graft.models.groups import layer_groups
    from graft.strategy.plan import make_plan
    from graft.training.optim import choose_optimizer

    task = get_task(recipe.task)
    splits = task.load_splits(recipe)
    for warning in splits.warnings:
        say(f"warning: {warning}")
    for name in ("validation", "test"):
        if not len(getattr(splits, name)):
            raise GraftError(f"data.{name}: no examples (data.split gives it 0% and no data.{name} file is given); "
                             f"every run validates and tests: give data.{name} or a share of data.split")
    source = _read_source(recipe, task)  # before the model loads: a wrong source file costs nothing
    teacher = _read_teacher(recipe, task, splits.labels)  # likewise a wrong teacher
    loaded, start = _load_model(recipe, task, splits.labels, teacher)
    for note in [*loaded.notes, loaded.head.line()]:
        say(f"model: {note}")
    configure_model(loaded, recipe.train)
    attached = attach_strategy(loaded, recipe, say)
    model, root = (attached.model, attached.root) if attached else (loaded.model, loaded.root)
    groups = attached.groups if attached else layer_groups(root, loaded.head_modules, recipe.model.groups)
    plan = make_plan(root, groups, loaded.head_modules, recipe.strategy, recipe.train.epochs,
                     attached.trains if attached else None)
    cached = plan.backbone_frozen_throughout and recipe.strategy.feature_cache and task.feature_cache
    # Data is read (images decoded) before the run directory is touched: a bad file leaves nothing behind.
    notes: list[str] = []
    train_loader = task.train_loader(recipe, splits.train, loaded, not cached, notes)
    if recipe.train.grad_accum > len(train_loader):
        raise GraftError(f"train.grad_accum = {recipe.train.grad_accum}: an epoch has only {len(train_loader)} "
                         f"batches of {recipe.train.batch_size}, so each epoch would take one optimiser step; set "
                         f"grad_accum to at most {len(train_loader)} (or a smaller batch_size)")
    val_loader, test_loader = (task.eval_loader(recipe, getattr(splits, n), loaded, notes, n)
                               for n in ("validation", "test"))
    for note in notes:
        say(f"warning: {note}")
    splits.warnings.extend(notes)
    noun, data_record, lines = task.describe(splits, train_loader)
    task_loss, loss_record = task.loss(recipe, splits)
    if loss_record.get("class_weights"):
        shown = ", ".join(f"{k} {v:.3g}" for k, v in list(loss_record["class_weights"].items())[:6])
        lines.append(f"loss: class weights {shown} ({loss_record['why']})")
    optim = choose_optimizer(recipe.optim, root)
    lines.append(f"optimizer: {optim.name} ({optim.why})")
    for line in lines:
        say(line)
    run = Setup(recipe, task, splits, loaded, model, root, attached, plan, train_loader, val_loader, test_loader,
                cached, optim, notes, data_record, noun, task_loss, loss_record)
    if source is not None:
        from graft.retention import attach_retention

        attach_retention(run, source, say)
    if teacher is not None:
        from graft.distill import attach_distillation

        attach_distillation(run, teacher, start, say)
    return run


def _load_model(recipe: Recipe, task: Task, labels: list[str], teacher: Any) -> tuple[LoadedModel, str]:
    """The model for the task; a distilled student (and what it starts from, in words) when there is a teacher."""
    if teacher is None:
        return task.load_model(recipe.model, labels, recipe.data, recipe.strategy.name == "scratch"), ""
    from graft.distill import load_student

    return load_student(recipe, task, labels, teacher)


def _read_teacher(recipe: Recipe, task: Task, labels: list[str]) -> Any:
    """strategy.teacher read and checked against this run (None: no distillation)."""
    if recipe.strategy.teacher is None:
        return None
    from graft.distill import read_teacher

    return read_teacher(recipe, task, labels)


def _read_source(recipe: Recipe, task: Task) -> Any:
    """retention.data read and checked against the source head's classes (None: retention is not measured)."""
    if not recipe.retention.on:
        return None
    from graft.retention import read_source

    return read_source(recipe, task)


def load_splits(recipe: Recipe) -> Any:
    """The recipe's splits, read and checked by its task."""
    return get_task(recipe.task).load_splits(recipe)


def configure_model(loaded: LoadedModel, train: TrainSpec) -> None:
    """Gradient checkpointing, and the output layer kept in fp32 under bf16/fp16 autocast (logits and the loss
    are where low precision hurts most)."""
    from graft.training.precision import keep_fp32, resolve_precision

    if train.gradient_checkpointing:
        enable = getattr(loaded.model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise GraftError("train.gradient_checkpointing: this model has no switch for it (Hugging Face models "
                             "do); turn it off")
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if resolve_precision(train.precision) != "fp32":
        keep_fp32(loaded.root.get_submodule(loaded.head.path))


def attach_strategy(loaded: LoadedModel, recipe: Recipe, say: Callable[[str], None]) -> Attached | None:
    """A PEFT method's parameters added to the model (None for the other strategies, which only freeze)."""
    if not recipe.strategy.is_peft:
        return None
    from graft.strategy.peft import attach

    attached = attach(loaded.model, loaded.root, loaded.head_modules, recipe.strategy, recipe.task,
                      recipe.model.groups)
    for note in attached.notes:
        say(f"model: {note}")
    return attached


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
