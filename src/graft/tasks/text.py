"""Text classification: tokenisation, dynamic padding, batches grouped by length, train texts augmented per batch
(graft.tasks.text_augment) when asked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

if TYPE_CHECKING:
    from graft.tasks.text_augment import TextAugment

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    """Token ids (unpadded) and `labels` when the split has them; padding happens per batch in the collator."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    keep = {"label"} & set(ds.column_names)
    out = ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                 load_from_cache_file=False, desc=None)
    if keep:
        out = out.rename_column("label", "labels")
    return out


class EpochShuffle(Sampler[int]):
    """A seeded shuffle that is a pure function of (seed, epoch), optionally grouped by length.

    Its order never depends on the global RNG, so a run resumed mid-epoch sees the very batches an
    uninterrupted one would; accelerate calls `set_epoch` before each pass.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.group_by_length:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))
        return iter(torch.randperm(len(self.lengths), generator=g).tolist())


class KeyedShuffle(EpochShuffle):
    """EpochShuffle that yields `(index, epoch)`: each example's augmentation is then a function of its own key."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((index, epoch) for index in super().__iter__())


class KeyedTexts(Dataset):
    """Texts and their class ids, indexed by `(index, epoch)` keys (as `KeyedShuffle` samples): an item is
    `{"text", "labels", "key"}`, its key seeding its augmentation."""

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return {"text": self.texts[key[0]], "labels": self.labels[key[0]], "key": key}


class AugmentTokenize:
    """A collate_fn: each text through `augment` by its key, then the batch tokenised as `tokenize` does and padded
    to its longest text, as the unaugmented loader's collator pads."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, augment: TextAugment) -> None:
        self.tokenizer, self.max_length, self.augment = tokenizer, max_length, augment

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.augment(item["text"], *item["key"]) for item in items]
        batch = dict(self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                    return_tensors="pt"))
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.int64)
        return batch


def train_loader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                 group_by_length: bool, num_workers: int = 0) -> DataLoader:
    """Shuffled (seeded per epoch) batches padded to their own longest text."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    sampler = EpochShuffle(lengths, batch_size, seed, group_by_length)
    return _loader(ds, tokenizer, batch_size, sampler, num_workers)


def augmented_train_loader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                           batch_size: int, seed: int, group_by_length: bool, augment: TextAugment,
                           num_workers: int = 0) -> DataLoader:
    """The examples `train_loader` would batch, in the same order (grouped by their unaugmented lengths), each text
    augmented afresh each epoch by its key and tokenised per batch."""
    lengths = [len(ids) for ids in tokenize(ds, tokenizer, max_length)["input_ids"]]
    sampler = KeyedShuffle(lengths, batch_size, seed, group_by_length)
    # A private generator, as in _loader: creating the iterator must not draw from the global RNG.
    return DataLoader(KeyedTexts(list(ds["text"]), list(ds["label"])), batch_size=batch_size, sampler=sampler,
                      shuffle=False, collate_fn=AugmentTokenize(tokenizer, max_length, augment),
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))


def eval_loader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                num_workers: int = 0) -> DataLoader:
    """Batches in the split's own order (predictions line up with rows)."""
    return _loader(ds, tokenizer, batch_size, None, num_workers)


def _loader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, sampler: Sampler | None,
            num_workers: int) -> DataLoader:
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None, return_tensors="pt")
    # A private generator: creating the iterator must not draw from the global RNG (exact resume).
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))
