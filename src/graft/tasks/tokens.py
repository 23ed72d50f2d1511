"""Token classification, the torch side: words tokenised into sub-words with their tags aligned by the fast
tokenizer's `word_ids`, batches padded per batch (labels with -100), and the model's tag for each word read at its
first sub-token.

Training labels the first sub-token of each word and leaves the rest out (-100), or labels every sub-token
(`data.label_all_subtokens`: a B- tag's later pieces get its I- tag). Evaluation and prediction always read the
first sub-token. A word beyond model.max_length has no token: it is not trained on, and it counts as predicted `O`
(scores still cover every word of every sentence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from graft.tasks.text import MODEL_INPUTS, EpochShuffle

IGNORE = -100
"""The label of positions the loss leaves out (special tokens, padding, later sub-tokens)."""


class Tagged(Dataset):
    """Sentences as model inputs (token ids, and labels when tagged). Kept aside for scoring: each sentence's tags
    per word (`gold`), and the token position of each word that has one (`firsts`, word index -> position)."""

    def __init__(self, items: list[dict[str, list[int]]], gold: list[list[int]] | None,
                 firsts: list[list[int]], cut: int) -> None:
        self.items, self.gold, self.firsts, self.cut = items, gold, firsts, cut

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def encode(words: list[list[str]], tags: list[list[int]] | None, tokenizer: PreTrainedTokenizerBase, max_length: int,
           inside: list[int] | None = None) -> Tagged:
    """Sub-word ids of each sentence and, with `tags`, labels on each word's first sub-token; `inside` (tag id ->
    its I- tag's id) labels the later sub-tokens too."""
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    items, firsts, cut = [], [], 0
    for i in range(len(words)):
        item = {k: encoded[k][i] for k in MODEL_INPUTS if k in encoded}
        word_ids = encoded.word_ids(i)
        first = {}
        for position, word in enumerate(word_ids):
            if word is not None and word not in first:
                first[word] = position
        firsts.append([first.get(w, -1) for w in range(len(words[i]))])
        cut += len(words[i]) - len(first)
        if tags is not None:
            item["labels"] = [_label(tags[i], word, position, first, inside) for position, word in enumerate(word_ids)]
        items.append(item)
    return Tagged(items, tags, firsts, cut)


def _label(tags: list[int], word: int | None, position: int, first: dict[int, int], inside: list[int] | None) -> int:
    if word is None:
        return IGNORE
    if first[word] == position:
        return tags[word]
    return IGNORE if inside is None else inside[tags[word]]


def inside_ids(labels: list[str]) -> list[int]:
    """Each tag's id for a word's later sub-tokens: B-X's I-X (when train has it), else the tag itself."""
    ids = {label: i for i, label in enumerate(labels)}
    return [ids.get("I-" + label[2:], i) if label.startswith("B-") else i for i, label in enumerate(labels)]


def train_loader(data: Tagged, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                 group_by_length: bool, num_workers: int = 0) -> DataLoader:
    """Shuffled (seeded per epoch) batches padded to their own longest sentence."""
    sampler = EpochShuffle([len(item["input_ids"]) for item in data.items], batch_size, seed, group_by_length)
    return _loader(data, tokenizer, batch_size, sampler, num_workers, None)


def eval_loader(data: Tagged, tokenizer: PreTrainedTokenizerBase, batch_size: int, num_workers: int = 0,
                pad_to: int | None = None) -> DataLoader:
    """Batches in the split's order; `pad_to`: every batch that long (so logits of batches stack)."""
    return _loader(data, tokenizer, batch_size, None, num_workers, pad_to)


def _loader(data: Tagged, tokenizer: PreTrainedTokenizerBase, batch_size: int, sampler: Any, num_workers: int,
            pad_to: int | None) -> DataLoader:
    collate = DataCollatorForTokenClassification(tokenizer, padding="max_length" if pad_to else True,
                                                 max_length=pad_to, label_pad_token_id=IGNORE, return_tensors="pt")
    # A private generator: creating the iterator must not draw from the global RNG (exact resume).
    return DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))


def tagged_of(loader: DataLoader) -> Tagged:
    """The sentences behind a loader (a cached loader wraps them in an indexed dataset)."""
    data = loader.dataset
    return data if isinstance(data, Tagged) else data.data


@dataclass
class Predicted:
    """Each sentence's predicted tag id per word (O for a word with no token), and the mean cross-entropy over the
    labelled sub-tokens."""

    tags: list[list[int]]
    loss: float


@torch.no_grad()
def predict_tags(accelerator: Accelerator, model: nn.Module, loader: DataLoader) -> Predicted:
    """The model's tag for each word of each sentence of a tagged loader (batches gathered from every process)."""
    model.eval()
    guesses: list[np.ndarray] = []
    nll_sum, labelled = 0.0, 0
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        guess = logits.argmax(-1)
        guess, nll, labels = (accelerator.pad_across_processes(t, dim=1, pad_index=IGNORE if t is labels else 0)
                              for t in (guess, nll, labels))
        guess, nll, labels = accelerator.gather_for_metrics((guess, nll, labels))
        nll_sum += float(nll[labels != IGNORE].sum())
        labelled += int((labels != IGNORE).sum())
        guesses += list(guess.cpu().numpy())
    data = tagged_of(loader)
    tags = [[int(row[p]) if 0 <= p < len(row) else 0 for p in firsts] for row, firsts in
            zip(guesses, data.firsts, strict=True)]
    return Predicted(tags, nll_sum / labelled if labelled else 0.0)


WORD = re.compile(r"\S+")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """A text's whitespace-separated words and their character spans (start, end)."""
    found = list(WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def word_probabilities(logits: np.ndarray, firsts: list[list[int]]) -> list[np.ndarray]:
    """Per sentence, each word's tag probabilities read at its first sub-token (a word with no token: certain O)."""
    from graft.evaluation.metrics import softmax

    out = []
    for row, positions in zip(logits, firsts, strict=True):
        probs = softmax(row.astype(np.float64))
        none = np.eye(probs.shape[-1])[0]
        out.append(np.stack([probs[p] if p >= 0 else none for p in positions]) if positions else
                   np.zeros((0, probs.shape[-1])))
    return out


def entities(text: str, spans: list[tuple[int, int]], probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """The entities a sentence's most probable tags make: type, text, character span and score (the mean
    probability of its words' tags)."""
    from graft.evaluation.entities import entity_spans

    chosen = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=int)
    tags = [labels[int(i)] for i in chosen]
    out = []
    for kind, first, last in entity_spans(tags):
        start, end = spans[first][0], spans[last][1]
        score = float(np.mean([probs[w, chosen[w]] for w in range(first, last + 1)]))
        out.append({"type": kind, "text": text[start:end], "start": start, "end": end, "score": round(score, 6)})
    return out
