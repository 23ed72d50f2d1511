"""Text classification: tokenisation, dynamic padding, batches grouped by length."""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

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


def train_loader(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                 group_by_length: bool, num_workers: int = 0) -> DataLoader:
    """Shuffled (seeded per epoch) batches padded to their own longest text."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    sampler = EpochShuffle(lengths, batch_size, seed, group_by_length)
    return _loader(ds, tokenizer, batch_size, sampler, num_workers)


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
