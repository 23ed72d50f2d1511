"""Token classification: a tag per word (BIO), a new head over the per-token states, entity-level precision, recall
and F1 (seqeval), and predictions as entities with character spans. Files: `graft.data.tagged`; the torch side:
`graft.tasks.tokens`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from graft.errors import GraftError
from graft.evaluation.metrics import ENTITY_METRICS
from graft.tasks.classification import NO_SOFTMAX_REFUSES, Classification

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe

SHOWN_SENTENCES = 8
"""Test sentences the record keeps with their gold and predicted entities (for the report)."""


def labelled_tokens(batch: dict[str, Any]) -> int:
    """The sub-tokens a batch's loss averages over: those with a tag (-100 marks the rest)."""
    return int((batch["labels"] != -100).sum())


class TokenClassification(Classification):
    name = "token_classification"
    pipeline_tag = "token-classification"
    data_fields = frozenset({"tokens_column", "tags_column", "tag_column", "label_all_subtokens", "group_by_length",
                             "text_column"})  # text_column: the texts of a table to predict on
    metrics = ENTITY_METRICS
    default_metric = "f1"
    refused_strategies: ClassVar[dict[str, str]] = NO_SOFTMAX_REFUSES
    refused_commands: ClassVar[dict[str, str]] = {
        "export --format onnx": "a token classifier's export is not checked against its logits yet; export it with "
                                "graft export (no --format) and serve it with transformers or graft serve",
        "advise": "graft advise scores one feature vector per example; a token classifier tags every word: compare "
                  "head_only, lora and full runs instead"}
    peft_task_type = "TOKEN_CLS"
    input_kind = None  # a sentence has a tag per word, not one input with one label
    loss_units = staticmethod(labelled_tokens)
    single_label = False
    feature_cache = False  # a head per token: the per-token prefix cache serves head_only
    hf_auto_class = "AutoModelForTokenClassification"
    hf_processor = "tokenizer"

    def check_recipe(self, recipe: Recipe) -> None:
        if recipe.model.pooling != "auto":
            raise ValueError("model.pooling: for text classifiers; a token classifier's head reads every token")
        if recipe.model.head.batchnorm:
            raise ValueError("model.head.batchnorm: a token classifier's head reads one state per token; leave it "
                             "out (dropout and hidden work)")
        if isinstance(recipe.loss.class_weights, dict):
            raise ValueError("loss.class_weights: for classifiers of whole examples; a token classifier's loss is "
                             "the model's own cross-entropy over tags")
        if recipe.retention.on:
            raise ValueError("retention: measured for classifiers of whole examples and language models, not for "
                             "token classification")

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """A new head over the per-token states; the tokenizer must be fast (its word_ids align tags to sub-words)."""
        if spec.is_factory:
            raise GraftError("model.name: token classification takes Hugging Face models (a plain module factory "
                             "has no tokenizer)")
        loaded = super().load_model(spec, labels, data, scratch)
        if not getattr(loaded.processor, "is_fast", False):
            raise GraftError(f"model.name = {spec.name}: its tokenizer is not a fast (Rust) one, whose word_ids align "
                             f"each word's tag to its sub-words; choose a model with a tokenizer.json")
        return loaded

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data.tagged import load_tagged_splits

        d = recipe.data
        return load_tagged_splits(d.train, d.validation, d.test, data=d, seed=recipe.train.seed)

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data.tagged import read_labelled_sentences

        return read_labelled_sentences(path, recipe.data, labels)

    def read_examples(self, recipe: Recipe) -> list[tuple[list[str], list[str]]]:
        """data.train's sentences as (words, tags), each sentence once (one in two folds would be leakage)."""
        from graft.data.sources import locate_splits
        from graft.data.tables import source_name
        from graft.data.tagged import read_sentences, tag_order

        train = locate_splits(recipe.data.train, None, None)[0]["train"]
        part = read_sentences(train, source_name(train), recipe.data)
        tag_order(part)  # the same one line as training when train holds no entity
        first: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        for words, tags in zip(part.words, part.tags, strict=True):
            first.setdefault(tuple(words), (words, tags))
        return list(first.values())

    def rows(self, split: Any, labels: list[str]) -> list[tuple[list[str], list[str]]]:
        return [(words, [labels[i] for i in tags]) for words, tags in zip(split["words"], split["tags"], strict=True)]

    def write_examples(self, folder: Path, name: str, rows: list[Any], recipe: Recipe) -> Path:
        from graft.data.tables import write_jsonl

        return write_jsonl(folder / f"{name}.jsonl", [{"tokens": words, "tags": tags} for words, tags in rows])

    def written_fields(self, recipe: Recipe) -> dict[str, Any]:
        from graft.data.tables import WRITTEN

        return {"tokens_column": "tokens", "tags_column": "tags", **WRITTEN}

    def fold_groups(self, examples: list[Any]) -> None:
        """None: folds are a seeded shuffle of sentences (a sentence has many tags, no one class)."""
        return None

    def loss(self, recipe: Recipe, splits: Any) -> tuple[None, dict[str, Any]]:
        return None, {"class_weights": None,
                      "why": "token classification: the model's cross-entropy over the labelled sub-tokens"}

    def train_loader(self, recipe: Recipe, split: Any, loaded: LoadedModel, augment: bool,
                     notes: list[str]) -> DataLoader:
        from graft.tasks import tokens

        t = recipe.train
        names = list(loaded.model.config.id2label.values())
        inside = tokens.inside_ids(names) if recipe.data.label_all_subtokens else None
        data = tokens.encode(list(split["words"]), list(split["tags"]), loaded.processor,
                             recipe.model.max_length, inside)
        _note_cut(data.cut, "train", recipe.model.max_length, "are not trained on", notes)
        return tokens.train_loader(data, loaded.processor, t.batch_size, t.seed, recipe.data.group_by_length,
                                   t.num_workers)

    def eval_loader(self, recipe: Recipe, split: Any, model: Any, notes: list[str] | None = None,
                    name: str = "test") -> DataLoader:
        """Tagged sentences padded per batch; untagged ones (to predict on) padded to model.max_length."""
        from graft.tasks import tokens

        tags = list(split["tags"]) if "tags" in split.column_names else None
        data = tokens.encode(list(split["words"]), tags, model.processor, recipe.model.max_length)
        if notes is not None and tags is not None:
            _note_cut(data.cut, name, recipe.model.max_length, "count as predicted O", notes)
        return tokens.eval_loader(data, model.processor, recipe.train.eval_batch, recipe.train.num_workers,
                                  None if tags is not None else recipe.model.max_length)

    def evaluate(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader,
                 labels: list[str]) -> dict[str, Any]:
        return _scores(accelerator, model, loader, labels)[0]

    def test(self, accelerator: Accelerator, model: nn.Module, loader: DataLoader, splits: Any,
             loaded: LoadedModel, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics, and the first test sentences that have entities, with the gold and predicted ones."""
        from graft.evaluation.entities import entity_spans

        metrics, gold, guess = _scores(accelerator, model, loader, splits.labels)
        shown = []
        for words, true, predicted in zip(splits.test["words"], gold, guess, strict=True):
            if len(shown) == SHOWN_SENTENCES:
                break
            if any(t != "O" for t in true + predicted):
                shown.append({"words": words, "gold": _spans(words, entity_spans(true)),
                              "predicted": _spans(words, entity_spans(predicted))})
        return metrics, {"tagged": shown}

    def describe(self, splits: Any, loader: DataLoader) -> tuple[str, dict[str, Any], list[str]]:
        from graft.data.tagged import entity_counts

        counts = {n: entity_counts([[splits.labels[i] for i in tags] for tags in getattr(splits, n)["tags"]])
                  for n in ("train", "validation", "test")}
        types = sorted(counts["train"])
        words = sum(len(w) for w in splits.train["words"])
        line = f"train: {words:,} words, entities {', '.join(f'{k} {v:,}' for k, v in counts['train'].items())}"
        return (f"sentences, {len(types)} entity types", {"input_kind": None, "entity_counts": counts}, [line])

    def predict(self, run: Any, source: str, batches: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Entities in each text of `source` (a .txt file or stdin: a text a line; a table: data.text_column)."""
        from graft.data.tables import TableFormat, read_unlabelled_texts
        from graft.evaluation.predictions import collect_logits
        from graft.tasks.tokens import tagged_of

        _no_mc(run)
        texts = read_unlabelled_texts(source, text_column=run.recipe.data.text_column,
                                      fmt=TableFormat.of(run.recipe.data))
        split, spans = _words(texts)
        accelerator, model, loader = batches(split)
        logits, _ = collect_logits(accelerator, model, loader)
        return _rows(run, texts, spans, logits, tagged_of(loader)), ["text", "entities"]

    def predict_inputs(self, run: Any, inputs: list[Any], logits: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Entities in texts held in memory."""
        _no_mc(run)
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text.strip():
                raise GraftError(f"input {i + 1}: a token classifier tags texts (non-empty strings), got "
                                 f"{str(text)[:40]!r}")
        if not inputs:
            return [], ["text", "entities"]
        texts = [str(t) for t in inputs]
        split, spans = _words(texts)
        loader = self.eval_loader(run.recipe, split, run)
        return _rows(run, texts, spans, logits(loader), loader.dataset), ["text", "entities"]


def _scores(accelerator: Accelerator, model: nn.Module, loader: DataLoader,
            labels: list[str]) -> tuple[dict[str, Any], list[list[str]], list[list[str]]]:
    from graft.evaluation.entities import entity_metrics
    from graft.tasks.tokens import predict_tags, tagged_of

    predicted = predict_tags(accelerator, model, loader)
    gold = [[labels[i] for i in tags] for tags in tagged_of(loader).gold]
    guess = [[labels[i] for i in tags] for tags in predicted.tags]
    metrics = {"loss": predicted.loss, **entity_metrics(gold, guess), "words_cut": tagged_of(loader).cut}
    return metrics, gold, guess


def _spans(words: list[str], found: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    return [{"type": kind, "text": " ".join(words[a:b + 1]), "first": a, "last": b} for kind, a, b in found]


def _note_cut(cut: int, name: str, max_length: int, fate: str, notes: list[str]) -> None:
    if cut:
        notes.append(f"data.{name}: {cut:,} words lie beyond model.max_length = {max_length} tokens (or have no "
                     f"sub-word token) and {fate}; raise model.max_length to keep them")


def _words(texts: list[str]) -> tuple[Any, list[list[tuple[int, int]]]]:
    import datasets

    from graft.tasks.tokens import split_words

    datasets.disable_progress_bars()
    split = [split_words(text) for text in texts]
    return datasets.Dataset.from_dict({"words": [w for w, _ in split]}), [s for _, s in split]


def _rows(run: Any, texts: list[str], spans: list[list[tuple[int, int]]], logits: Any,
          data: Any) -> list[dict[str, Any]]:
    from graft.tasks.tokens import entities, word_probabilities

    probs = word_probabilities(logits, data.firsts)
    return [{"text": text, "entities": entities(text, s, p, run.labels)}
            for text, s, p in zip(texts, spans, probs, strict=True)]


def _no_mc(run: Any) -> None:
    if run.mc_passes:
        raise GraftError("--mc-dropout: for classifiers of whole examples; a token classifier predicts entities, "
                         "leave it out")

