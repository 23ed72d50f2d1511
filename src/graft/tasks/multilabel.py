"""Multi-label text classification: each text has a set of labels (possibly empty). The text classifier with one
sigmoid per label, trained on binary cross-entropy (each label's positives weighted by `loss.class_weights`), its
head reading the same pooling a text classifier's does; each label's decision threshold tuned on validation and kept
beside the weights (graft.evaluation.multilabel). Data: graft.data.multilabel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from graft.evaluation.metrics import MULTILABEL_METRICS
from graft.tasks.classification import NO_SOFTMAX_REFUSES
from graft.tasks.text_classification import TextClassification

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe

    LossFn = Callable[[dict[str, Any], Any], Any]

PROBLEM_TYPE = "multi_label_classification"
"""transformers' name for it: the saved config says so, and its pipelines then apply a sigmoid per label."""
SKEWED = 1.5
"""loss.class_weights: auto weights each label's positives when some label has this many negatives per positive."""


class MultilabelClassification(TextClassification):
    name = "multilabel_classification"
    data_fields = frozenset({"text_column", "label_column", "label_delimiter", "label_columns", "group_by_length",
                             "augment.swap", "augment.delete", "augment.insert", "augment.synonym",
                             "augment.synonym_neighbours", "augment.synonym_similarity"})
    metrics = MULTILABEL_METRICS
    default_metric = "f1_micro"
    refused_strategies: ClassVar[dict[str, str]] = NO_SOFTMAX_REFUSES
    single_label = False
    export_metrics = ("f1_micro", "f1_macro", "subset_accuracy")
    onnx_decode = ("probabilities = 1 / (1 + np.exp(-logits))  # each label its own sigmoid",
                   'cut = np.array([spec["thresholds"].get(n, 0.5) for n in spec["labels"]])  # tuned on validation',
                   'print([n for n, p, t in zip(spec["labels"], probabilities[0], cut) if p >= t], probabilities[0])')

    def check_recipe(self, recipe: Recipe) -> None:
        if recipe.retention.on:
            raise ValueError("retention: measured with the source head's single-label classes; train the "
                             "multi-label run without it")

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """The text classifier (its pooling chosen as a text classifier's), declared multi-label in its config."""
        loaded = super().load_model(spec, labels, data, scratch)
        loaded.model.config.problem_type = PROBLEM_TYPE
        return loaded

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data.multilabel import LabelFormat, load_multilabel_splits
        from graft.data.tables import TableFormat

        d = recipe.data
        return load_multilabel_splits(d.train, d.validation, d.test, text_column=d.text_column,
                                      labels=LabelFormat.of(d), split=d.split, seed=recipe.train.seed,
                                      leakage=d.leakage, fmt=TableFormat.of(d))

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data.multilabel import LabelFormat, load_labelled_sets
        from graft.data.tables import TableFormat

        d = recipe.data
        return load_labelled_sets(path, text_column=d.text_column, labels=LabelFormat.of(d), known=labels,
                                  fmt=TableFormat.of(d))

    def read_examples(self, recipe: Recipe) -> list[tuple[str, str]]:
        """data.train as (text, label set joined by commas, as graft writes files), repeated texts dropped."""
        from graft.data.checks import drop_duplicate_texts
        from graft.data.multilabel import LabelFormat, read_label_sets
        from graft.data.sources import locate_splits
        from graft.data.tables import TableFormat, source_name

        d, labels = recipe.data, LabelFormat.of(recipe.data)
        train = locate_splits(d.train, None, None)[0]["train"]
        part = read_label_sets(train, source_name(train), d.text_column, labels, TableFormat.of(d))
        part, _ = drop_duplicate_texts(part)  # a text in two folds would be leakage
        return [(text, ",".join(labels.split(joined))) for text, joined in zip(part.texts, part.labels, strict=True)]

    def rows(self, split: Any, labels: list[str]) -> list[tuple[str, str]]:
        """A split as (text, label set) rows, joined by "," as the files compare writes read them back."""
        return [(text, ",".join(name for name, bit in zip(labels, hot, strict=True) if bit))
                for text, hot in zip(split["text"], split["label"], strict=True)]

    def fold_groups(self, examples: list[tuple[str, str]]) -> None:
        """Cross-validation's folds are a seeded shuffle: a label set is too rare a class to stratify by."""
        return None

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        """The size line's noun, each label's count of train examples, and warnings for labels train lacks."""
        import numpy as np

        hot = np.asarray(splits.train["label"]).reshape(len(splits.train), len(splits.labels))
        counts = {name: int(n) for name, n in zip(splits.labels, hot.sum(0), strict=True)}
        lines = []
        missing = [name for name, n in counts.items() if n == 0]
        if missing:
            warning = (f"data.train: no training example has the label {', '.join(map(repr, missing[:5]))} after "
                       f"the split, so the model cannot learn it; give data.validation / data.test, or more examples")
            splits.warnings.append(warning)
            lines.append(f"warning: {warning}")
        sizes = hot.sum(1)
        record = {"input_kind": self.input_kind, "label_counts": counts,
                  "labels_per_example": {"mean": float(sizes.mean()), "max": int(sizes.max()),
                                         "none": int((sizes == 0).sum())}}
        return f"examples, {len(splits.labels)} labels", record, lines

    def loss(self, recipe: Recipe, splits: Any) -> tuple[LossFn, dict[str, Any]]:
        """Binary cross-entropy over every label, each label's positives weighted (pos_weight) as
        loss.class_weights says: the multi-label form of class weights."""
        import numpy as np

        hot = np.asarray(splits.train["label"]).reshape(len(splits.train), len(splits.labels))
        weights, why = positive_weights(recipe.loss.class_weights, splits.labels, hot)
        return binary_cross_entropy(None if weights is None else list(weights.values())), {
            "pos_weight": weights, "why": why}

    def score_logits(self, logits: Any, truth: Any, labels: Any, thresholds: dict[str, float] | None = None
                     ) -> dict[str, Any]:
        from graft.evaluation.multilabel import multilabel_metrics

        return multilabel_metrics(logits, truth, labels, thresholds)

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, labels: list[str],
                 thresholds: dict[str, float] | None = None) -> dict[str, Any]:
        """The metrics with each label decided at its threshold (0.5 when none is given)."""
        from graft.evaluation.predictions import collect_logits

        return self.score_logits(*collect_logits(accelerator, model, loader), labels, thresholds)

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics at the thresholds tuned on validation; the record also gets the thresholds with the
        validation and test scores at 0.5 and tuned, and the model folder a THRESHOLDS_FILE."""
        from graft.evaluation.multilabel import (
            THRESHOLDS_FILE,
            multilabel_metrics,
            thresholds_content,
            tune_thresholds,
        )
        from graft.evaluation.predictions import collect_logits

        validation = accelerator.prepare(self.eval_loader(recipe, splits.validation, loaded, [], "validation"))
        val_logits, val_truth = collect_logits(accelerator, model, validation)
        tuned = tune_thresholds(val_logits, val_truth, splits.labels)
        logits, truth = collect_logits(accelerator, model, loader)
        metrics = multilabel_metrics(logits, truth, splits.labels, tuned)
        compared = {split: {"at_0.5": _scalars(multilabel_metrics(x, y, splits.labels)),
                            "tuned": _scalars(multilabel_metrics(x, y, splits.labels, tuned))}
                    for split, (x, y) in (("validation", (val_logits, val_truth)), ("test", (logits, truth)))}
        return metrics, {"thresholds": {"per_label": tuned, "tuned_on": "validation", **compared},
                         "model_files": {THRESHOLDS_FILE: thresholds_content(tuned)}}

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        from graft.evaluation.predictions import collect_logits

        _refuse_mc(run)
        texts, split = self.read_unlabelled(run.recipe, source)
        logits, _ = collect_logits(*batches(split))
        return self.prediction_rows(run.labels, texts, logits, run.thresholds), self.prediction_columns(run.labels)

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        _refuse_mc(run)
        if not inputs:
            return [], self.prediction_columns(run.labels)
        shown, loader = self.memory_loader(run, inputs)
        return self.prediction_rows(run.labels, shown, logits(loader), run.thresholds), \
            self.prediction_columns(run.labels)

    def prediction_rows(self, labels: list[str], inputs: list[Any], logits: Any,
                        thresholds: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Each text with its label set (every label whose probability reaches its threshold, most probable
        first) and every label's probability."""
        import numpy as np

        from graft.evaluation.multilabel import cutoffs, sigmoid

        probs = sigmoid(np.asarray(logits, dtype=np.float64)) if len(inputs) else np.zeros((0, len(labels)))
        limits = cutoffs(labels, thresholds)
        return [{"text": text, "labels": [labels[j] for j in np.argsort(-row, kind="stable") if row[j] >= limits[j]],
                 "probabilities": {name: float(p) for name, p in zip(labels, row, strict=True)}}
                for text, row in zip(inputs, probs, strict=True)]

    def prediction_columns(self, labels: list[str]) -> list[str]:
        return ["text", "labels", *(f"p_{n}" for n in labels)]


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _refuse_mc(run: Any) -> None:
    from graft.errors import GraftError

    if run.mc_passes:
        raise GraftError("--mc-dropout: its spread is measured over one softmax; a multi-label run's labels are "
                         "each their own sigmoid: predict without it")


def positive_weights(given: str | dict[str, float], labels: list[str],
                     hot: Any) -> tuple[dict[str, float] | None, str]:
    """Each label's pos_weight and why: `auto` weighs a label's positives by its negatives per positive when
    some label is skewed beyond SKEWED:1 (a rare label then counts as much as its absence), `none` not at all, a
    {label: weight} map as given (unnamed labels 1)."""
    from graft.errors import GraftError

    if given == "none":
        return None, "loss.class_weights: none"
    if isinstance(given, dict):
        unknown = [name for name in given if name not in labels]
        if unknown:
            raise GraftError(f"loss.class_weights: {unknown[0]!r} is not a label of data.train (labels: "
                             f"{', '.join(labels[:10])}); name labels, each weighting its positives")
        return {name: float(given.get(name, 1.0)) for name in labels}, "loss.class_weights: as given, on positives"
    positives = hot.sum(0)
    negatives = len(hot) - positives
    ratios = negatives / positives.clip(min=1)
    if ratios.max() < SKEWED:
        return None, f"loss.class_weights: auto, every label is within {SKEWED}:1 positives to negatives"
    weights = {name: float(max(r, 1.0)) for name, r in zip(labels, ratios, strict=True)}
    return weights, (f"loss.class_weights: auto, each label's positives weighted by its negatives per positive in "
                     f"data.train (pos_weight {min(weights.values()):.3g} to {max(weights.values()):.3g})")


def binary_cross_entropy(pos_weight: list[float] | None) -> LossFn:
    """Binary cross-entropy of each label's logit against its 0/1 target, averaged over labels and examples, each
    label's positives weighted by `pos_weight` (None: 1)."""
    import torch
    import torch.nn.functional as F

    table = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)

    def loss(batch: dict[str, Any], output: Any) -> torch.Tensor:
        logits = output.logits.float()
        weight = None if table is None else table.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, batch["labels"].float(), pos_weight=weight)

    return loss
