"""Train-time text augmentation: EDA's random swap, deletion, insertion and synonym replacement (Wei & Zou 2019) on
whitespace-separated words, the synonyms being a word's nearest whole words in the model's own input embeddings.

Written here because nlpaug is not installed, and its word augmenters draw from Python's and NumPy's global RNGs,
which would tie an example's edits to the batches before it. As for images (graft.tasks.augment), every draw for a
text is a pure function of (seed, epoch, example index): a resumed or multi-process run augments each text exactly
as an uninterrupted single-process one does. Synonyms need no download and no word list: the model's input-embedding
matrix already places related words together (in all-MiniLM-L6-v2: movie -> movies 0.82, film 0.71; terrible ->
horrible 0.83, awful 0.68). It also places some antonyms close (good -> bad 0.53), which the default similarity
floor of 0.55 keeps out there; a lower floor lets more in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from transformers import PreTrainedTokenizerBase

Synonyms = Mapping[str, tuple[str, ...]]

WORD_STARTS = ("Ġ", "▁")
"""What starts a whole word in byte-level BPE (GPT-2, RoBERTa) and SentencePiece (T5, XLM-R, DeBERTa-v3)
vocabularies; WordPiece (BERT) instead marks the pieces that continue one, with `##`."""
MARKED = 0.2
"""Share of a vocabulary's entries that must start with one of WORD_STARTS for it to count as that kind."""
CHUNK = 1024
"""Words whose neighbours are searched at once: a CHUNK x vocabulary similarity matrix at a time."""


@dataclass(frozen=True)
class TextAugment:
    """Per-word rates of each operation (0: off) and the synonyms of the training words."""

    swap: float = 0.0
    delete: float = 0.0
    insert: float = 0.0
    synonym: float = 0.0
    synonyms: Synonyms = field(default_factory=dict)
    seed: int = 0

    def __call__(self, text: str, index: int, epoch: int) -> str:
        """The text of example `index` as augmented in `epoch`; unchanged (whitespace too) when no draw edits it."""
        words = text.split()
        if not words:
            return text
        # One stream per operation, so turning one on or off never changes another's draws.
        rngs = [np.random.default_rng([self.seed, epoch, index, k]) for k in range(4)]
        out = replace_synonyms(words, self.synonym, self.synonyms, rngs[0])
        out = insert_words(out, self.insert, self.synonyms, rngs[1])
        out = swap_words(out, self.swap, rngs[2])
        out = delete_words(out, self.delete, rngs[3])
        return text if out == words else " ".join(out)


def replace_synonyms(words: list[str], p: float, synonyms: Synonyms, rng: np.random.Generator) -> list[str]:
    """Each word that has synonyms replaced, with probability `p`, by one of them."""
    out = list(words)
    for i, draw in enumerate(rng.random(len(words))):
        options = synonyms.get(words[i])
        if options and draw < p:
            out[i] = options[int(rng.integers(len(options)))]
    return out


def insert_words(words: list[str], p: float, synonyms: Synonyms, rng: np.random.Generator) -> list[str]:
    """About `p` x the word count of insertions (binomial), each a synonym of a random word of the text (the word
    itself when it has none) at a random place."""
    out = list(words)
    for _ in range(int(rng.binomial(len(words), p))):
        word = words[int(rng.integers(len(words)))]
        options = synonyms.get(word) or (word,)
        out.insert(int(rng.integers(len(out) + 1)), options[int(rng.integers(len(options)))])
    return out


def swap_words(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """About `p` x the word count of swaps (binomial), each of two words at random places."""
    out = list(words)
    for _ in range(int(rng.binomial(len(words), p))):
        i, j = (int(k) for k in rng.integers(len(out), size=2))
        out[i], out[j] = out[j], out[i]
    return out


def delete_words(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each word dropped with probability `p`; when none would be left, one random word stays."""
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    return [w for w, k in zip(words, keep, strict=True) if k]


def whole_words(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The vocabulary entries that are whole words, as {word: token id}: alphabetic, two letters or more, no special
    token or English stop-word. WordPiece: entries without `##`; BPE / SentencePiece: entries with the word-start
    mark (Ġ / ▁), which is taken off."""
    vocab = tokenizer.get_vocab()
    shares = {mark: sum(t.startswith(mark) for t in vocab) / max(1, len(vocab)) for mark in WORD_STARTS}
    mark = max(shares, key=shares.__getitem__)
    if shares[mark] < MARKED:
        mark = ""  # WordPiece: every entry starts a word but the `##` ones, which isalpha() leaves out below
    special = set(tokenizer.all_special_tokens)
    out: dict[str, int] = {}
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        word = token[len(mark):]
        if (token.startswith(mark) and token not in special and len(word) >= 2 and word.isalpha()
                and word.lower() not in ENGLISH_STOP_WORDS):
            out.setdefault(word, i)
    return out


@torch.no_grad()
def synonym_table(words: Iterable[str], vocabulary: Mapping[str, int], embeddings: torch.Tensor, k: int,
                  min_similarity: float) -> dict[str, tuple[str, ...]]:
    """For each distinct word of `words` that is in `vocabulary` (as written, else lower-cased), its up to `k`
    nearest vocabulary words by cosine similarity of their rows of `embeddings`, at least `min_similarity`, nearest
    first, written in the word's case (Title, UPPER). Words with none are left out."""
    lookup = {w: vocabulary.get(w, vocabulary.get(w.lower())) for w in dict.fromkeys(words)}
    queries = [w for w, i in lookup.items() if i is not None]
    names = list(vocabulary)
    candidates = F.normalize(embeddings[list(vocabulary.values())].float(), dim=1)
    table: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start:start + CHUNK]
        rows = F.normalize(embeddings[[lookup[w] for w in chunk]].float(), dim=1)
        # k + 2: the word itself and a case variant of it (Good / good in cased vocabularies) are not synonyms.
        values, indices = (rows @ candidates.T).topk(min(k + 2, len(names)), dim=1)
        for word, sims, near in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            found = dict.fromkeys(_cased_like(word, names[j]) for s, j in zip(sims, near, strict=True)
                                  if s >= min_similarity and names[j].lower() != word.lower())
            if found:
                table[word] = tuple(found)[:k]
    return table


def _cased_like(word: str, synonym: str) -> str:
    if word.isupper():
        return synonym.upper()
    return synonym[0].upper() + synonym[1:] if word[0].isupper() else synonym
