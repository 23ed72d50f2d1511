"""Text classification: one label per text; tokenised once (or, augmented, per batch), padded per batch, batches
grouped by length."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.tasks.classification import Classification

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import AugmentSpec, DataSpec, ModelSpec, Recipe
    from graft.tasks.text_augment import TextAugment


class TextClassification(Classification):
    name = "text_classification"
    pipeline_tag = "text-classification"
    data_fields = frozenset({"text_column", "label_column", "normalize_labels", "group_by_length", "augment.swap",
                             "augment.delete", "augment.insert", "augment.synonym", "augment.synonym_neighbours",
                             "augment.synonym_similarity", "review", "inspect"})
    peft_task_type = "SEQ_CLS"
    input_kind = "text"
    hf_auto_class = "AutoModelForSequenceClassification"
    hf_processor = "tokenizer"

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        """The classifier, its head reading the pooling the backbone was trained with (see `model.pooling`)."""
        from graft.models.pooling import apply_pooling, choose_pooling

        loaded = super().load_model(spec, labels, data, scratch)
        if not spec.is_factory:
            mode, why = choose_pooling(spec.pooling, loaded.model, loaded.source)
            apply_pooling(loaded.model, mode)
            loaded.notes.append(f"pooling: {mode} ({why})")
        return loaded

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        from graft.models.pooling import apply_pooling, saved_pooling

        trained = super().load_trained(folder, data)
        apply_pooling(trained.model, saved_pooling(trained.model))
        return trained

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data import load_text_splits
        from graft.data.tables import TableFormat

        d = recipe.data
        return load_text_splits(d.train, d.validation, d.test, text_column=d.text_column, label_column=d.label_column,
                                split=d.split, seed=recipe.train.seed, leakage=d.leakage,
                                normalize_labels=d.normalize_labels, fmt=TableFormat.of(d), review=d.review)

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data import load_labelled_file
        from graft.data.tables import TableFormat

        d = recipe.data
        return load_labelled_file(path, text_column=d.text_column, label_column=d.label_column, labels=labels,
                                  normalize_labels=d.normalize_labels, fmt=TableFormat.of(d))

    def read_examples(self, recipe: Recipe) -> list[tuple[str, str]]:
        from graft.data.checks import drop_duplicate_texts
        from graft.data.review import apply_review
        from graft.data.sources import locate_splits
        from graft.data.tables import TableFormat, read_labelled, source_name

        d = recipe.data
        train = locate_splits(d.train, None, None)[0]["train"]
        part = read_labelled(train, source_name(train), d.text_column, d.label_column, fmt=TableFormat.of(d))
        part = apply_review({"train": part}, d.review)[0]["train"]
        part, _ = drop_duplicate_texts(part)  # a text in two folds would be leakage
        return list(zip(part.texts, part.labels, strict=True))

    def read_unlabelled(self, recipe: Recipe, source: str) -> tuple[list[str], Any]:
        import datasets

        from graft.data import read_unlabelled_texts
        from graft.data.tables import TableFormat

        texts = read_unlabelled_texts(source, text_column=recipe.data.text_column, fmt=TableFormat.of(recipe.data))
        return texts, datasets.Dataset.from_dict({"text": texts})

    def memory_loader(self, run: Any, inputs: list[Any]) -> tuple[list[Any], DataLoader]:
        import datasets

        from graft.errors import GraftError

        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise GraftError(f"input {i + 1}: a text classifier predicts on strings, got {type(text).__name__} "
                                 f"({str(text)[:40]!r}); pass a list of texts")
            if not text.strip():
                raise GraftError(f"input {i + 1}: empty text; remove it or give the text")
        texts = [str(t) for t in inputs]  # numpy's str_ and other subclasses as plain strings
        datasets.disable_progress_bars()  # as read_table does: a bar for each call is noise
        return texts, self.eval_loader(run.recipe, datasets.Dataset.from_dict({"text": texts}), run)

    def train_loader(self, recipe: Recipe, split: Any, loaded: LoadedModel, augment: bool,
                     notes: list[str]) -> DataLoader:
        from graft.tasks import text

        t, aug = recipe.train, recipe.data.augment
        if aug.text_on and not augment:
            notes.append("text augmentation: off, the feature cache needs fixed inputs (strategy.feature_cache: false "
                         "to augment)")
        if aug.text_on and augment:
            augmenter = _augmenter(aug, split["text"], loaded, t.seed, notes)
            return text.augmented_train_loader(split, loaded.processor, recipe.model.max_length, t.batch_size, t.seed,
                                               recipe.data.group_by_length, augmenter, t.num_workers)
        tokenized = text.tokenize(split, loaded.processor, recipe.model.max_length)
        return text.train_loader(tokenized, loaded.processor, t.batch_size, t.seed, recipe.data.group_by_length,
                                 t.num_workers)

    def eval_loader(self, recipe: Recipe, split: Any, model: Any, notes: list[str] | None = None,
                    name: str = "test") -> DataLoader:
        from graft.tasks import text

        tokenized = text.tokenize(split, model.processor, recipe.model.max_length)
        return text.eval_loader(tokenized, model.processor, recipe.train.eval_batch, recipe.train.num_workers)

    def inputs(self, split: Any) -> list[str]:
        return list(split["text"])

    def label_ids(self, split: Any) -> list[int]:
        return list(split["label"])


def _augmenter(aug: AugmentSpec, texts: list[str], loaded: LoadedModel, seed: int, notes: list[str]) -> TextAugment:
    """data.augment's text operations, with synonyms (for synonym and insert) from the model's input embeddings for
    the words of the training texts."""
    from graft.tasks.text_augment import TextAugment, synonym_table, whole_words

    synonyms: dict[str, tuple[str, ...]] = {}
    if aug.synonym > 0 or aug.insert > 0:
        words = (word for text in texts for word in text.split())
        embeddings = loaded.model.get_input_embeddings().weight
        synonyms = synonym_table(words, whole_words(loaded.processor), embeddings, aug.synonym_neighbours,
                                 aug.synonym_similarity)
    if aug.synonym > 0 and not synonyms:
        notes.append(f"data.augment.synonym: no training word has a whole-word neighbour in the model's input "
                     f"embeddings at cosine {aug.synonym_similarity} or more, so no word is replaced; lower "
                     f"data.augment.synonym_similarity, or set synonym: 0")
    return TextAugment(aug.swap, aug.delete, aug.insert, aug.synonym, synonyms, seed)
