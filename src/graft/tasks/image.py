"""Image classification: decoded images kept in memory as uint8, augmented and normalised per batch, seeded
shuffling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from graft.tasks.augment import Augment
from graft.tasks.text import EpochShuffle, KeyedShuffle


class ImageTensors(Dataset):
    """Decoded uint8 images [N, 3, H, W] and their class ids (None for prediction).

    An item is `{"pixel_values": uint8 [3, H, W], "labels": int}`, without `labels` when there are none; indexed
    by `(index, epoch)` (as `KeyedShuffle` samples), it also carries that `key`, which seeds its augmentation.
    Pixels stay uint8 until batched: a quarter of the memory of float32 for the whole split.
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], not {images.dtype} {list(images.shape)}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images = images
        self.labels = None if labels is None else [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key
        item: dict[str, Any] = {"pixel_values": self.images[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        if isinstance(key, tuple):
            item["key"] = key
        return item


class Normalize:
    """A collate_fn: stack items, scale to [0, 1] (through `augment` when given: items then carry keys),
    normalise per channel with `mean` and `std`.

    Returns `{"pixel_values": float32 [B, 3, H, W], "labels": int64 [B]}`, without `labels` when items have none.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: Augment | None = None) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive; got {list(mean)}, {list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.augment = augment

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([item["pixel_values"] for item in items])
        if self.augment is not None:
            pixels = self.augment(pixels, [item["key"] for item in items])
        else:
            pixels = pixels.to(torch.float32).div_(255)
        # The same order of operations as torchvision's ToTensor + Normalize, so pretrained models see their inputs.
        batch = {"pixel_values": pixels.sub_(self.mean).div_(self.std)}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.int64)
        return batch


def train_loader(ds: ImageTensors, batch_size: int, seed: int, mean: Sequence[float], std: Sequence[float],
                 num_workers: int = 0, augment: Augment | None = None) -> DataLoader:
    """Shuffled batches whose order is a pure function of (seed, epoch); `loader.sampler.set_epoch` moves on.
    With `augment`, each image is augmented by draws keyed on (its index, the epoch)."""
    if augment is None:
        sampler: Sampler = EpochShuffle([1] * len(ds), batch_size, seed, group_by_length=False)
    else:
        sampler = KeyedShuffle([1] * len(ds), batch_size, seed, group_by_length=False)
    return _loader(ds, batch_size, sampler, mean, std, num_workers, augment)


def eval_loader(ds: ImageTensors, batch_size: int, mean: Sequence[float], std: Sequence[float],
                num_workers: int = 0) -> DataLoader:
    """Batches in the split's own order (predictions line up with files)."""
    return _loader(ds, batch_size, None, mean, std, num_workers)


def _loader(ds: ImageTensors, batch_size: int, sampler: Sampler | None, mean: Sequence[float],
            std: Sequence[float], num_workers: int, augment: Augment | None = None) -> DataLoader:
    # A private generator: creating the iterator must not draw from the global RNG (exact resume).
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=Normalize(mean, std, augment),
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))
