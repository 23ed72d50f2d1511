"""What text and image classification share: class names from the data, a new head, logits scored into metrics,
the most confident test mistakes, labels and probabilities as predictions. No torch at import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from graft.evaluation.metrics import LM_ONLY_METRICS, SCALAR_METRICS

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe


class Classification:
    """One label per example out of the classes found in data.train."""

    name = ""
    data_fields: frozenset[str] = frozenset()
    metrics = tuple(m for m in SCALAR_METRICS if m not in LM_ONLY_METRICS)
    default_metric = "f1_macro"
    refused_strategies: ClassVar[dict[str, str]] = {}
    peft_task_type: str | None = None
    input_kind: str | None = None
    takes_plain_modules = False
    hf_auto_class = ""
    """The transformers Auto class that loads this task's Hugging Face models."""
    hf_processor = ""
    """`tokenizer` or `image`: what prepares the model's inputs."""

    def check_recipe(self, recipe: Recipe) -> None:
        pass

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        from graft.models.build import load_classifier

        return load_classifier(spec, labels, data, scratch, self.hf_auto_class, self.hf_processor)

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        from graft.models.build import load_trained_classifier

        return load_trained_classifier(folder, self.hf_auto_class, self.hf_processor)

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str]) -> dict[str, Any]:
        from graft.evaluation.predictions import evaluate

        return evaluate(accelerator, model, loader, labels)

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        from graft.evaluation.metrics import confident_mistakes
        from graft.evaluation.predictions import collect_logits, score

        logits, truth = collect_logits(accelerator, model, loader)
        metrics = score(logits, truth, splits.labels)
        return metrics, {"mistakes": confident_mistakes(logits, truth, splits.labels, self.inputs(splits.test))}

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        return f"examples, {len(splits.labels)} classes", {"input_kind": self.input_kind}, []

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        import numpy as np

        from graft.evaluation.metrics import softmax
        from graft.evaluation.predictions import collect_logits

        inputs, split = self.read_unlabelled(run.recipe, source)
        logits, _ = collect_logits(*batches(split))
        probs = softmax(logits) if len(inputs) else np.zeros((0, len(run.labels)))
        key = self.input_kind or "input"
        rows = [{key: x, "label": run.labels[int(row.argmax())], "score": float(row.max()),
                 "probabilities": {name: float(v) for name, v in zip(run.labels, row, strict=True)}}
                for x, row in zip(inputs, probs, strict=True)]
        return rows, [key, "label", "score", *(f"p_{n}" for n in run.labels)]

    def rows(self, split: Any, labels: list[str]) -> list[tuple[str, str]]:
        """A split as (input, class name) rows, inputs as `inputs` gives them: what compare writes to files."""
        return list(zip(self.inputs(split), (labels[i] for i in self.label_ids(split)), strict=True))

    # What each classification task says for itself.
    def inputs(self, split: Any) -> list[str]:
        """What each example of a split is, for people: its text, or its image file (absolute)."""
        raise NotImplementedError

    def label_ids(self, split: Any) -> list[int]:
        raise NotImplementedError

    def read_unlabelled(self, recipe: Recipe, source: str) -> tuple[list[str], Any]:
        """Inputs to predict on, and the split the eval loader takes."""
        raise NotImplementedError
