"""What text and image classification share: class names from the data, a new head, logits scored into metrics,
the most confident test mistakes, labels and probabilities as predictions. No torch at import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from graft.errors import GraftError
from graft.evaluation.metrics import (
    ENTITY_ONLY_METRICS,
    LM_ONLY_METRICS,
    MULTILABEL_ONLY_METRICS,
    REGRESSION_ONLY_METRICS,
    SCALAR_METRICS,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe

    LossFn = Callable[[dict[str, Any], Any], Any]


NO_SOFTMAX_REFUSES = {"distill": "teacher -> student distillation matches the teacher's one softmax per example; "
                                  "text_classification only so far"}
"""What a task without one softmax per example (multi-label, regression, token tags) cannot train with."""


class Classification:
    """One label per example out of the classes found in data.train."""

    name = ""
    pipeline_tag = ""
    data_fields: frozenset[str] = frozenset()
    metrics = tuple(m for m in SCALAR_METRICS if m not in (*LM_ONLY_METRICS, *MULTILABEL_ONLY_METRICS,
                                                           *REGRESSION_ONLY_METRICS, *ENTITY_ONLY_METRICS))
    default_metric = "f1_macro"
    refused_strategies: ClassVar[dict[str, str]] = {}
    refused_commands: ClassVar[dict[str, str]] = {}
    peft_task_type: str | None = None
    input_kind: str | None = None
    takes_plain_modules = False
    single_label = True
    feature_cache = True
    loss_units: Callable[[dict[str, Any]], int] | None = None
    export_metrics = ("accuracy", "f1_macro")
    onnx_decode = ('z = logits / spec["temperature"]  # the run\'s calibration; 1 when it has none',
                   "probabilities = np.exp(z - z.max(1, keepdims=True))",
                   "probabilities /= probabilities.sum(1, keepdims=True)",
                   'print(spec["labels"][probabilities[0].argmax()], probabilities[0].max())')
    hf_auto_class = ""
    """The transformers Auto class that loads this task's Hugging Face models."""
    hf_processor = ""
    """`tokenizer` or `image`: what prepares the model's inputs."""
    pipeline_arguments = "top_k=None"
    """What the model card's transformers `pipeline(...)` snippet passes after the model: every class's score."""

    def check_recipe(self, recipe: Recipe) -> None:
        pass

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        from graft.models.build import load_classifier

        return load_classifier(spec, labels, data, scratch, self.hf_auto_class, self.hf_processor)

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        from graft.models.build import load_trained_classifier

        return load_trained_classifier(folder, self.hf_auto_class, self.hf_processor)

    def trained_labels(self, model: Any, labels: list[str]) -> Any:
        return labels

    def score_logits(self, logits: Any, truth: Any, labels: Any, thresholds: dict[str, float] | None = None
                     ) -> dict[str, Any]:
        from graft.evaluation.predictions import score

        return score(logits, truth, labels)

    def finish_model(self, accelerator: Accelerator, model: nn.Module, splits: Any, loaded: LoadedModel) -> None:
        pass

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str], temperature: float = 1.0) -> dict[str, Any]:
        """The metrics of the logits divided by `temperature` (a calibrated run's; 1: the model's own)."""
        from graft.evaluation.predictions import evaluate

        return evaluate(accelerator, model, loader, labels, temperature)

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's own test metrics; the record also gets the most confident mistakes and `calibration`: the
        temperature fitted on the validation split, and what it changes on test."""
        from graft.evaluation.calibration import calibrate
        from graft.evaluation.metrics import confident_mistakes
        from graft.evaluation.predictions import collect_logits, score

        logits, truth = collect_logits(accelerator, model, loader)
        metrics = score(logits, truth, splits.labels)
        validation = accelerator.prepare(self.eval_loader(recipe, splits.validation, loaded, [], "validation"))
        calibration = calibrate(*collect_logits(accelerator, model, validation), logits, truth)
        return metrics, {"mistakes": confident_mistakes(logits, truth, splits.labels, self.inputs(splits.test)),
                         "calibration": calibration}

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        """The size line's noun, the record's class counts, and a warning when the classes are skewed."""
        counts = class_counts(self.label_ids(splits.train), splits.labels)
        if len(counts) < 2:
            raise GraftError(f"data.train: every example has the label {splits.labels[0]!r}; a classifier needs "
                             f"examples of two or more classes (check data.label_column)")
        lines = []
        seen = {splits.labels[i] for i in self.label_ids(splits.validation)}
        if len(seen) == 1:
            warning = (f"data.validation: every example is {next(iter(seen))!r}, so validation cannot tell a model "
                       f"from one that always answers it; give a validation set with more classes (or let graft "
                       f"carve one: data.split)")
            splits.warnings.append(warning)
            lines.append(f"warning: {warning}")
        largest, smallest = max(counts.values()), min(counts.values())
        if smallest * SKEWED <= largest:
            shares = ", ".join(f"{name} {n / sum(counts.values()):.0%}" for name, n in
                               sorted(counts.items(), key=lambda kv: -kv[1])[:5])
            warning = (f"data.train: the classes are skewed ({shares}; {largest / max(1, smallest):.1f}:1 largest to "
                       f"smallest): accuracy can look good for a model that only answers the largest class; see "
                       f"each evaluation's majority baseline and macro-F1")
            splits.warnings.append(warning)
            lines.append(f"warning: {warning}")
        return (f"examples, {len(splits.labels)} classes", {"input_kind": self.input_kind, "class_counts": counts},
                lines)

    def loss(self, recipe: Recipe, splits: Any) -> tuple[LossFn | None, dict[str, Any]]:
        """The training loss when it is not the model's own: cross-entropy with class weights (see
        `loss.class_weights`), and what was chosen and why."""
        counts = class_counts(self.label_ids(splits.train), splits.labels)
        weights, why = class_weights(recipe.loss.class_weights, counts)
        record = {"class_weights": weights, "why": why}
        return (None if weights is None else weighted_cross_entropy(list(weights.values()))), record

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows for `source`, probabilities from the logits divided by the run's temperature (1 when raw)."""
        from graft.evaluation.predictions import collect_logits

        inputs, split = self.read_unlabelled(run.recipe, source)
        if run.mc_passes:
            accelerator, model, loader = batches(split)
            return self.mc_rows(run, inputs, model, loader, accelerator.gather_for_metrics)
        logits, _ = collect_logits(*batches(split))
        return self.prediction_rows(run.labels, inputs, logits / run.temperature), self.prediction_columns(run.labels)

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows as `predict` gives them, for inputs held in memory; `logits(loader)` runs the model."""
        if not inputs:
            return [], self.prediction_columns(run.labels)
        shown, loader = self.memory_loader(run, inputs)
        if run.mc_passes:
            return self.mc_rows(run, shown, run.model, loader)
        rows = self.prediction_rows(run.labels, shown, logits(loader) / run.temperature)
        return rows, self.prediction_columns(run.labels)

    def mc_rows(self, run: Any, inputs: list[Any], model: Any, loader: Any,
                gather: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows from `run.mc_passes` dropout passes (graft.evaluation.mc_dropout), each with its input."""
        from graft.evaluation.mc_dropout import mc_columns, mc_predict_rows

        key = self.input_kind or "input"
        rows = mc_predict_rows(model, loader, run.labels, run.mc_passes, temperature=run.temperature, gather=gather)
        return [{key: x, **row} for x, row in zip(inputs, rows, strict=True)], mc_columns(run.labels, key)

    def prediction_rows(self, labels: list[str], inputs: list[Any], logits: Any) -> list[dict[str, Any]]:
        """Each input with its most probable label, that label's probability (`score`) and every label's."""
        import numpy as np

        from graft.evaluation.metrics import softmax

        probs = softmax(logits) if len(inputs) else np.zeros((0, len(labels)))
        key = self.input_kind or "input"
        return [{key: x, "label": labels[int(row.argmax())], "score": float(row.max()),
                 "probabilities": {name: float(v) for name, v in zip(labels, row, strict=True)}}
                for x, row in zip(inputs, probs, strict=True)]

    def prediction_columns(self, labels: list[str]) -> list[str]:
        return [self.input_kind or "input", "label", "score", *(f"p_{n}" for n in labels)]

    def label_columns(self, recipe: Recipe) -> tuple[str, ...]:
        """The columns an example's label is read from: what compare and cross-validation name in their files."""
        return (recipe.data.label_column,)

    def fold_groups(self, examples: list[tuple[str, str]]) -> list[str] | None:
        """What cross-validation's folds are stratified by: each example's class."""
        return [label for _, label in examples]

    def rows(self, split: Any, labels: list[str]) -> list[tuple[str, str]]:
        """A split as (input, class name) rows, inputs as `inputs` gives them: what compare writes to files."""
        return list(zip(self.inputs(split), (labels[i] for i in self.label_ids(split)), strict=True))

    def write_examples(self, folder: Path, name: str, rows: list[Any], recipe: Recipe) -> Path:
        """`rows` as FOLDER/NAME.csv, headed by the input column and the recipe's own label fields."""
        from graft.data.tables import write_csv

        return write_csv(folder / f"{name}.csv", (self.input_kind, *self.label_columns(recipe)), rows)

    def written_fields(self, recipe: Recipe) -> dict[str, Any]:
        from graft.data.tables import WRITTEN

        return {f"{self.input_kind}_column": self.input_kind, **WRITTEN}

    # What each classification task says for itself.
    def inputs(self, split: Any) -> list[str]:
        """What each example of a split is, for people: its text, or its image file (absolute)."""
        raise NotImplementedError

    def label_ids(self, split: Any) -> list[int]:
        raise NotImplementedError

    def read_unlabelled(self, recipe: Recipe, source: str) -> tuple[list[str], Any]:
        """Inputs to predict on, and the split the eval loader takes."""
        raise NotImplementedError

    def memory_loader(self, run: Any, inputs: list[Any]) -> tuple[list[Any], DataLoader]:
        """Inputs held in memory, checked (a GraftError names the first wrong one), as batches; and what each row
        shows of its input."""
        raise NotImplementedError


SKEWED = 3
"""Largest over smallest class count from which the classes count as skewed: a warning."""
WEIGHTED = 1.5
"""Largest over smallest class count from which `class_weights: auto` weights the loss."""


def class_counts(ids: list[int], labels: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(labels, 0)
    for i in ids:
        counts[labels[i]] += 1
    return counts


def class_weights(asked: str | dict[str, float], counts: dict[str, int]) -> tuple[dict[str, float] | None, str]:
    """Per-class loss weights (None: unweighted) and why, from `loss.class_weights`."""

    if asked == "none":
        return None, "loss.class_weights: none"
    if isinstance(asked, dict):
        unknown = [name for name in asked if name not in counts]
        if unknown:
            raise GraftError(f"loss.class_weights: unknown label {unknown[0]!r}; the labels are "
                             f"{', '.join(counts)}")
        return {name: float(asked.get(name, 1.0)) for name in counts}, "loss.class_weights as the recipe gives them"
    if min(counts.values()) * WEIGHTED > max(counts.values()):
        return None, f"loss.class_weights: auto, and the classes are balanced (within {WEIGHTED}:1)"
    n, k = sum(counts.values()), len(counts)
    weights = {name: n / (k * c) for name, c in counts.items()}
    return weights, (f"loss.class_weights: auto, each class weighted inversely to its share of data.train "
                     f"({min(counts.values())} to {max(counts.values())} examples a class)")


def weighted_cross_entropy(weights: list[float]) -> LossFn:
    """Cross-entropy of the model's logits, each example's weighted by its class, averaged over the examples (not
    over the weights: so the halves of a batch split between processes average to the whole batch's loss)."""
    import torch
    import torch.nn.functional as F

    table = torch.tensor(weights, dtype=torch.float32)

    def loss(batch: dict[str, Any], output: Any) -> torch.Tensor:
        logits = output.logits.float()
        return F.cross_entropy(logits, batch["labels"], weight=table.to(logits.device), reduction="none").mean()

    return loss
