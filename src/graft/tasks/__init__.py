"""The task registry: everything that differs between tasks, behind one small interface.

A task says how its data is read, checked and split, how it becomes batches, how the model for it is loaded, how it
is evaluated and what its test adds to the run record, how predictions look, and which recipe fields and strategies
it takes. The pipeline, compare, cross-validation and the report ask the task; none of them names one.

Importing this module costs no torch: the recipe validates against it in milliseconds. Each task module imports
its heavy parts inside its methods.

To add a task: write `graft/tasks/<name>.py` with a class that has the attributes and methods of `Task`, and add
an instance to `TASKS` below. Nothing else in graft needs to learn its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from graft.tasks.causal_lm import CausalLM
from graft.tasks.image_classification import ImageClassification
from graft.tasks.multilabel import MultilabelClassification
from graft.tasks.regression import Regression
from graft.tasks.text_classification import TextClassification
from graft.tasks.token_classification import TokenClassification

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe


class Task(Protocol):
    """What a task module supplies. Splits have `.train`, `.validation`, `.test`, `.labels`, `.sources` and
    `.warnings`; a split is whatever the task's loaders take."""

    name: str
    pipeline_tag: str
    """What the model does in the Hugging Face Hub's words (`text-classification`): its model card's tag."""
    data_fields: frozenset[str]
    """The `data.*` fields only this task reads (a field of a section by its dotted path: `augment.hflip`); another
    task's field set to a non-default value is refused."""
    metrics: tuple[str, ...]
    """What `eval.metric` may name."""
    default_metric: str
    refused_strategies: dict[str, str]
    """strategy name -> why this task cannot take it (one line, with what to use instead)."""
    refused_commands: dict[str, str]
    """`export --format onnx` or `advise` -> why this task's runs cannot take it (one line, with what to do
    instead); a command not named works, or says itself why not."""
    peft_task_type: str | None
    """peft's TaskType for this task's models (None: a plain module, peft wraps it as it is)."""
    input_kind: str | None
    """`text` or `image`: what one example is, for people (mistakes, the model card); None: not a single input with
    one label (a language model's conversation, a tagged sentence)."""
    takes_plain_modules: bool
    """Whether `model.name` may be a plain nn.Module factory."""
    single_label: bool
    """Each example has exactly one of `labels` (a softmax): what the data doctor, an exact probe, retention, the
    advisor and stratified cross-validation folds assume; False: they decline, or fall back."""
    loss_units: Callable[[dict[str, Any]], int] | None
    """How many units a batch's loss averages over where they vary from batch to batch (a token-level loss: the
    labelled tokens); None: the loss averages over examples. With it, a step's gradient is that of the mean over all
    its units, however they fall into accumulated batches and processes."""
    export_metrics: tuple[str, ...]
    """The test metrics an ONNX export records for PyTorch, ONNX Runtime fp32 and int8; the first is the headline
    whose change int8 quantization is judged by."""
    onnx_decode: tuple[str, ...]
    """The model card's Python lines that turn the graph's `logits` (numpy) and `spec` (export.json) into answers."""
    feature_cache: bool
    """Whether a head over a frozen backbone may train on one cached feature tensor per example
    (graft.training.feature_cache); False (a head per token): the frozen groups' per-token outputs are cached
    instead (graft.training.prefix_cache)."""

    def check_recipe(self, recipe: Recipe) -> None:
        """Task rules over the whole recipe, before any data or model is read; raise ValueError with one line."""

    def load_splits(self, recipe: Recipe) -> Any:
        """Read, check and split the recipe's data."""

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        """A labelled file (or folder) to evaluate a trained run on, checked against the run's `labels`."""

    def read_examples(self, recipe: Recipe) -> list[Any]:
        """data.train's examples as `write_examples` writes them ((input, label) rows, (words, tags), chat
        messages), checked as training data is and each once: what cross-validation folds."""

    def rows(self, split: Any, labels: list[str]) -> list[Any]:
        """A loaded split's examples in the same form: what compare and sweep write once for every run."""

    def write_examples(self, folder: Path, name: str, rows: list[Any], recipe: Recipe) -> Path:
        """`rows` as a file FOLDER/NAME.<suffix> that the recipe's data section reads back with
        `written_fields`."""

    def written_fields(self, recipe: Recipe) -> dict[str, Any]:
        """The `data.*` fields that read written files back (their columns, UTF-8, no review)."""

    def fold_groups(self, examples: list[Any]) -> list[str] | None:
        """What cross-validation's folds are stratified by (each example's class), or None: a seeded shuffle."""

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """The model, ready for this task (a new head for `labels`, a prepared tokenizer...); `scratch`: the same
        architecture with random weights."""

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        """The final model a run saved, for eval and predict."""

    def score_logits(self, logits: Any, truth: Any, labels: Any, thresholds: dict[str, float] | None = None
                     ) -> dict[str, Any]:
        """The test metrics of collected outputs (numpy) against their labels: what an ONNX export is measured by."""

    def trained_labels(self, model: Any, labels: list[str]) -> Any:
        """A saved model's label names as eval and predict use them (a regression's carry the targets' scale, read
        from the model's config); `load_trained` gives them so, and a PEFT run's rebuilt model goes through this."""

    def train_loader(self, recipe: Recipe, split: Any, loaded: LoadedModel, augment: bool,
                     notes: list[str]) -> DataLoader:
        """Shuffled training batches, a pure function of (seed, epoch); what was left out goes to `notes`."""

    def eval_loader(self, recipe: Recipe, split: Any, model: Any, notes: list[str] | None = None,
                    name: str = "test") -> DataLoader:
        """In-order batches; `model` has `.processor` and `.input`; `notes` None: unreadable inputs are errors."""

    def loss(self, recipe: Recipe, splits: Any) -> tuple[Any, dict[str, Any]]:
        """The training loss `(batch, output) -> scalar` when it is not the model's own (None: `output.loss`), and
        what the record says of it."""

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str]) -> dict[str, Any]:
        """Validation and test metrics."""

    def finish_model(self, accelerator: Accelerator, model: nn.Module, splits: Any, loaded: LoadedModel) -> None:
        """What becomes of the best weights before they are tested and saved (a regression folds its targets' scale
        into the head); most tasks: nothing."""

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics, and what else the run record gets (`mistakes`, `samples`)."""

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        """The size line's noun ("examples, 4 classes"), extra `data` fields for the record, and lines to print."""

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Prediction rows for `source`, and the columns of a CSV of them."""

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """The same for inputs held in memory (texts; images, arrays or image files; prompts or conversations),
        checked one by one; `logits(loader)` runs the run's model over batches."""


TASKS: dict[str, Task] = {t.name: t for t in (TextClassification(), ImageClassification(), CausalLM(),
                                              MultilabelClassification(), Regression(), TokenClassification())}


def get_task(name: str) -> Task:
    return TASKS[name]
