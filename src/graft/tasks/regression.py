"""Regression on texts: one or more numeric targets per text, learnt standardised (each target's training mean and
standard deviation), scored and predicted in the targets' own units.

The model is text classification's (its pooling choice, tokenisation and loaders) with one output per target. It
trains on standardised targets; when training ends the scale is folded into the head's last Linear (w·std,
b·std + mean), so the saved model, its exports and every later eval and prediction give the targets' own units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from graft.errors import GraftError
from graft.evaluation.metrics import REGRESSION_METRICS
from graft.tasks.classification import NO_SOFTMAX_REFUSES
from graft.tasks.text_classification import TextClassification

if TYPE_CHECKING:
    from pathlib import Path

    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.data.targets import TargetNames
    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe

SCALE_KEY = "graft_targets"
"""In a saved model's config: the targets' training mean and standard deviation (the standardised loss's scale)."""
SCATTER_POINTS = 1000
"""Test examples kept in the record for the report's predicted-vs-true scatter."""


class Regression(TextClassification):
    name = "regression"
    pipeline_tag = "text-classification"  # the Hub files regression heads of sequence classifiers under it too
    data_fields = frozenset({"text_column", "label_column", "target_columns", "group_by_length"})
    metrics = REGRESSION_METRICS
    default_metric = "rmse"
    refused_strategies: ClassVar[dict[str, str]] = NO_SOFTMAX_REFUSES
    single_label = False
    pipeline_arguments = 'top_k=None, function_to_apply="none"'
    """A regression's outputs are the values themselves: no softmax over them."""
    export_metrics = ("rmse", "mae", "r2")
    onnx_decode = ('print({n: float(v) for n, v in zip(spec["labels"], logits[0])})  # values in the targets\' units',)

    def check_recipe(self, recipe: Recipe) -> None:
        if isinstance(recipe.loss.class_weights, dict) or recipe.loss.class_weights == "none":
            raise ValueError("loss.class_weights: for classifiers; a regression's loss is the mean squared error of "
                             "the standardised targets: remove it")
        if recipe.retention.on:
            raise ValueError("retention: measured on a classifier's or a language model's source task; a regression "
                             "head has no source classes to keep: remove the retention section")

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """Text classification's model (and pooling) with one output per target, scored by mean squared error."""
        loaded = super().load_model(spec, labels, data, scratch)
        loaded.model.config.problem_type = "regression"
        return loaded

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        trained = super().load_trained(folder, data)
        trained.labels = self.trained_labels(trained.model, trained.labels)
        return trained

    def score_logits(self, logits: Any, truth: Any, labels: Any, thresholds: dict[str, float] | None = None
                     ) -> dict[str, Any]:
        return score(logits, truth, labels)

    def trained_labels(self, model: Any, labels: list[str]) -> Any:
        """The target names with the scale the saved model's config keeps (its outputs are in the targets' units
        already; the scale standardises the loss)."""
        from graft.data.targets import TargetNames

        scale = getattr(getattr(model, "config", None), SCALE_KEY, None) or {}
        return TargetNames(labels, scale.get("mean", ()), scale.get("std", ()), standardised=False)

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data.tables import TableFormat
        from graft.data.targets import load_target_splits, target_columns

        d = recipe.data
        return load_target_splits(d.train, d.validation, d.test, text_column=d.text_column,
                                  targets=target_columns(d.label_column, d.target_columns), split=d.split,
                                  seed=recipe.train.seed, leakage=d.leakage, fmt=TableFormat.of(d))

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data.tables import TableFormat
        from graft.data.targets import read_targets, to_dataset

        return to_dataset(read_targets(path, recipe.data.text_column, list(labels), TableFormat.of(recipe.data)))

    def read_examples(self, recipe: Recipe) -> list[tuple[str, ...]]:
        """data.train as (text, target, ...) rows, duplicates dropped (a text in two folds would be leakage)."""
        from graft.data.checks import drop_duplicate_texts
        from graft.data.sources import locate_splits
        from graft.data.tables import TableFormat
        from graft.data.targets import read_targets, target_columns

        d = recipe.data
        train = locate_splits(d.train, None, None)[0]["train"]
        part = read_targets(train, d.text_column, target_columns(d.label_column, d.target_columns), TableFormat.of(d))
        part, _ = drop_duplicate_texts(part)  # type: ignore[arg-type]  # Targets duck-types Labelled
        return [(text, *map(str, values)) for text, values in zip(part.texts, part.values, strict=True)]

    def label_columns(self, recipe: Recipe) -> tuple[str, ...]:
        from graft.data.targets import target_columns

        return tuple(target_columns(recipe.data.label_column, recipe.data.target_columns))

    def rows(self, split: Any, labels: list[str]) -> list[tuple[Any, ...]]:
        return [(text, *values) for text, values in zip(split["text"], split["label"], strict=True)]

    def fold_groups(self, examples: list[tuple[str, ...]]) -> None:
        """None: folds are a seeded shuffle, there are no classes to stratify by."""
        return None

    def loss(self, recipe: Recipe, splits: Any) -> tuple[Any, dict[str, Any]]:
        """The mean squared error of the standardised targets, with the scale it standardises by."""
        names = splits.labels
        record = {"standardised": {n: {"mean": m, "std": s} for n, m, s in zip(names, names.mean, names.std,
                                                                                strict=True)},
                  "why": "each target minus its training mean, over its training standard deviation"}
        return standardised_mse(names.mean, names.std), record

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str]) -> dict[str, Any]:
        from graft.evaluation.predictions import collect_logits

        return self.score_logits(*collect_logits(accelerator, model, loader), labels)

    def finish_model(self, accelerator: Accelerator, model: nn.Module, splits: Any, loaded: LoadedModel) -> None:
        """The targets' scale folded into the head: what is saved, tested and predicted with gives their units."""
        fold_scale(accelerator.unwrap_model(model), loaded.head.path, splits.labels)

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """The test metrics (in the targets' units: `finish_model` folded their scale into the head) beside the mean
        predictor's, the largest errors, and predicted-vs-true pairs for the report's scatter."""
        from graft.data.targets import TargetNames
        from graft.evaluation.predictions import collect_logits
        from graft.evaluation.regression import beats_baseline, largest_errors, mean_baseline

        names = splits.labels
        raw = TargetNames(names, names.mean, names.std, standardised=False)
        predicted, truth = collect_logits(accelerator, model, loader)
        metrics = score(predicted, truth, raw)
        metrics |= mean_baseline(truth, names.mean, list(names))
        metrics["beats_baseline"] = beats_baseline(metrics)
        kept = slice(0, SCATTER_POINTS)
        scatter = {n: {"true": truth[kept, j].tolist(), "predicted": predicted[kept, j].tolist()}
                   for j, n in enumerate(names)}
        return metrics, {"largest_errors": largest_errors(predicted, truth, list(names), self.inputs(splits.test)),
                         "scatter": scatter}

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        import numpy as np

        names = splits.labels
        values = np.asarray(splits.train["label"], dtype=np.float64)
        targets = {n: {"mean": m, "std": s, "min": float(values[:, j].min()), "max": float(values[:, j].max())}
                   for j, (n, m, s) in enumerate(zip(names, names.mean, names.std, strict=True))}
        lines = [f"target {n}: mean {t['mean']:.4g}, std {t['std']:.4g}, range {t['min']:.4g} to {t['max']:.4g} "
                 f"in train (learnt standardised, reported in these units)" for n, t in targets.items()]
        noun = "examples, 1 target" if len(names) == 1 else f"examples, {len(names)} targets"
        return noun, {"input_kind": self.input_kind, "targets": targets}, lines

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        from graft.evaluation.predictions import collect_logits

        _no_mc(run)
        texts, split = self.read_unlabelled(run.recipe, source)
        predicted, _ = collect_logits(*batches(split))
        return self.prediction_rows(run.labels, texts, predicted), self.prediction_columns(run.labels)

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        _no_mc(run)
        if not inputs:
            return [], self.prediction_columns(run.labels)
        shown, loader = self.memory_loader(run, inputs)
        return self.prediction_rows(run.labels, shown, logits(loader)), self.prediction_columns(run.labels)

    def prediction_rows(self, labels: list[str], inputs: list[Any], logits: Any) -> list[dict[str, Any]]:
        """Each text with its predicted value of each target, in the targets' units (the saved model's outputs)."""
        return [{"text": text, "predicted": {n: float(v) for n, v in zip(labels, row, strict=True)}}
                for text, row in zip(inputs, logits, strict=True)]

    def prediction_columns(self, labels: list[str]) -> list[str]:
        return ["text", *(f"predicted_{n}" for n in labels)]


def _no_mc(run: Any) -> None:
    if run.mc_passes:
        raise GraftError("--mc-dropout: for classifiers' class probabilities; a regression predicts values: leave it "
                         "out")


def score(outputs: Any, truth: Any, names: TargetNames | list[str]) -> dict[str, Any]:
    """The metrics of a model's outputs against the targets, in the targets' units: outputs in standard deviations
    from the mean while training (`names.standardised`), in the targets' units once the scale is folded in. The
    loss is the MSE of the standardised targets (of the raw ones when `names` has no scale: a PEFT run's model)."""
    import numpy as np

    from graft.data.targets import TargetNames
    from graft.evaluation.regression import regression_metrics

    if truth is None:
        raise ValueError("evaluate() needs labelled data")
    names = names if isinstance(names, TargetNames) else TargetNames(names, standardised=False)
    mean, std = np.asarray(names.mean), np.asarray(names.std)
    predicted = outputs * std + mean if names.standardised else outputs
    loss = float(np.mean(((predicted - truth) / std) ** 2)) if len(truth) else None
    return regression_metrics(predicted, truth, list(names), loss)


def standardised_mse(mean: list[float], std: list[float]) -> Any:
    """(batch, output) -> the mean squared error of the outputs against the standardised targets."""
    import torch

    centre, scale = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def loss(batch: dict[str, Any], output: Any) -> torch.Tensor:
        logits = output.logits.float()
        target = (batch["labels"].float() - centre.to(logits.device)) / scale.to(logits.device)
        return ((logits - target.view_as(logits)) ** 2).mean()

    return loss


def fold_scale(model: nn.Module, head_path: str, names: TargetNames) -> None:
    """Make the head output the targets' own units: its last Linear (each copy of it: a PEFT wrapper keeps the
    original beside the trained one) becomes w·std, b·std + mean; the scale is also kept in the config."""
    import torch
    from torch import nn

    std = torch.tensor(names.std, dtype=torch.float32)
    mean = torch.tensor(names.mean, dtype=torch.float32)
    heads = [m for n, m in model.named_modules() if n == head_path or n.endswith("." + head_path)]
    last: dict[str, nn.Linear] = {}
    for head in heads:
        for n, m in head.named_modules():
            if isinstance(m, nn.Linear) and m.out_features == len(names):
                last[f"{id(head)}/{n.rpartition('.')[0]}"] = m  # the last one under each parent
    linears = list({id(m): m for m in last.values()}.values())
    if not linears or any(linear.bias is None for linear in linears):
        raise GraftError(f"model: the head at {head_path} ends in no Linear with a bias of {len(names)} outputs, so "
                         f"the targets' scale cannot be folded into it; drop model.head's other settings")
    with torch.no_grad():
        for linear in linears:
            linear.weight.mul_(std.to(linear.weight.device, linear.weight.dtype).unsqueeze(1))
            bias = linear.bias
            bias.copy_(bias * std.to(bias.device, bias.dtype) + mean.to(bias.device, bias.dtype))
    config = getattr(model, "config", None)
    if config is not None:
        config.update({SCALE_KEY: {"mean": list(names.mean), "std": list(names.std)}})
