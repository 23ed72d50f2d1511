"""Mixed training data: every batch draws a fixed share of its examples from a second source (replay of old-task
data), collated with that source's own collate function and carried under the batch key `MIXED`.

The main data keeps its own sampler (and so its shuffling, length grouping and augmentation keys); the second
source is drawn without replacement in an order that is a pure function of (seed, epoch), cycling when it runs
out. So a mixed loader is as resume-exact as a plain one: skipping the first N batches of an epoch gives the very
batches an uninterrupted run sees. Written here because neither torch nor accelerate mixes two datasets with a
fixed per-batch share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from graft.training.loop import MIXED

Collate = Callable[[list[Any]], dict[str, Any]]


class MixedData(Dataset):
    """The main dataset, indexed by its sampler's keys, and the second one, indexed by `(MIXED, i)`."""

    def __init__(self, main: Dataset, second: Dataset) -> None:
        self.main, self.second = main, second

    def __len__(self) -> int:
        return len(self.main)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[bool, Any]:
        if isinstance(key, tuple) and key[0] == MIXED:
            return True, self.second[key[1]]
        return False, self.main[key]


class MixedBatches(Sampler[list[Any]]):
    """Batches of `batch_size`: `batch_size - k` keys from the main sampler, in its order, then `k` from the second
    source. With several processes (accelerate splits each batch into contiguous pieces), each piece gets its share
    of both."""

    def __init__(self, sampler: Sampler, n_second: int, batch_size: int, k: int, seed: int, processes: int = 1
                 ) -> None:
        if not 0 < k < batch_size:
            raise ValueError(f"the second source's share of a batch of {batch_size} must be 1 to {batch_size - 1}")
        self.sampler = sampler  # accelerate's set_epoch reaches it here; its epoch is ours
        self.n_second, self.batch_size, self.k, self.seed, self.processes = n_second, batch_size, k, seed, processes

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / (self.batch_size - self.k))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        epoch = getattr(self.sampler, "epoch", 0)
        main = list(self.sampler)
        order = _cycled(np.random.default_rng([self.seed, epoch, 1]), self.n_second, len(self) * self.k)
        step = self.batch_size - self.k
        for b in range(len(self)):
            mine = main[b * step:(b + 1) * step]
            theirs = [(MIXED, int(i)) for i in order[b * self.k:(b + 1) * self.k]]
            yield _interleave(mine, theirs, self.processes)


class MixedCollate:
    """Split a list of (is_second, item) into the main batch and, under `MIXED`, the second source's batch."""

    def __init__(self, main: Collate, second: Collate) -> None:
        self.main, self.second = main, second

    def __call__(self, items: list[tuple[bool, Any]]) -> dict[str, Any]:
        batch = self.main([item for second, item in items if not second])
        theirs = [item for second, item in items if second]
        if theirs:
            batch[MIXED] = self.second(theirs)
        return batch


def mix(loader: DataLoader, second: Dataset, second_collate: Collate, share: float, seed: int,
        processes: int = 1) -> DataLoader:
    """A training loader like `loader` (its dataset, sampler and collate function) whose every batch holds
    `round(share * batch_size)` examples of `second` (at least one) under batch[MIXED]."""
    if loader.batch_size is None or loader.sampler is None or not isinstance(second, Sized) or not len(second):
        raise ValueError("mix() takes a batched training loader with a sampler, and a non-empty second dataset")
    k = min(loader.batch_size - 1, max(1, round(share * loader.batch_size)))
    batches = MixedBatches(loader.sampler, len(second), loader.batch_size, k, seed, processes)
    return DataLoader(MixedData(loader.dataset, second), batch_sampler=batches,
                      collate_fn=MixedCollate(loader.collate_fn, second_collate), num_workers=loader.num_workers,
                      generator=torch.Generator().manual_seed(0))


def _cycled(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`count` indices below `n`: permutations back to back, each drawn afresh."""
    rounds = math.ceil(count / n) if count else 0
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count] if rounds else np.zeros(0, int)


def _interleave(mine: list[Any], theirs: list[Any], processes: int) -> list[Any]:
    if processes == 1:
        return [*mine, *theirs]
    pieces_a, pieces_b = np.array_split(np.arange(len(mine)), processes), np.array_split(np.arange(len(theirs)),
                                                                                          processes)
    return [x for a, b in zip(pieces_a, pieces_b, strict=True) for x in [*(mine[i] for i in a),
                                                                          *(theirs[i] for i in b)]]
