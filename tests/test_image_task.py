"""Image batches: normalisation values, seeded per-epoch shuffling, eval order, unlabelled prediction sets."""

from __future__ import annotations

import pytest
import torch

from graft.tasks.image import ImageTensors, Normalize, eval_loader, train_loader

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def dataset(n: int = 10, labelled: bool = True) -> ImageTensors:
    """`n` 4x4 images whose every pixel holds the example's index, so a batch shows which examples it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return ImageTensors(images, [i % 3 for i in range(n)] if labelled else None)


def indices(batch: dict[str, torch.Tensor]) -> list[int]:
    """Example indices of a batch made from `dataset`, read back from the normalised red channel."""
    red = batch["pixel_values"][:, 0, 0, 0] * STD[0] + MEAN[0]
    return (red * 255).round().long().tolist()


def epoch(loader: torch.utils.data.DataLoader, number: int) -> list[int]:
    loader.sampler.set_epoch(number)
    return [i for batch in loader for i in indices(batch)]


def test_items_are_uint8_pixels_and_int_labels() -> None:
    item = dataset()[4]
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 4, 4)
    assert item["labels"] == 1
    assert set(dataset(labelled=False)[4]) == {"pixel_values"}


def test_mismatched_labels_are_a_bug() -> None:
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        ImageTensors(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), [0, 1])
    with pytest.raises(ValueError, match="uint8"):
        ImageTensors(torch.zeros(3, 3, 2, 2), None)


def test_normalize_gives_known_values() -> None:
    pixels = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    batch = Normalize(MEAN, STD)([{"pixel_values": pixels, "labels": 2}, {"pixel_values": pixels, "labels": 0}])
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (2, 3, 2, 2)
    expected = [(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert batch["pixel_values"][1, :, 1, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [2, 0]


def test_normalize_rejects_bad_statistics() -> None:
    with pytest.raises(ValueError):
        Normalize((0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError):
        Normalize(MEAN, (0.2, 0.0, 0.2))


def test_train_order_is_a_function_of_seed_and_epoch() -> None:
    loader = train_loader(dataset(), batch_size=4, seed=7, mean=MEAN, std=STD)
    first, second = epoch(loader, 0), epoch(loader, 1)
    assert sorted(first) == sorted(second) == list(range(10))  # every example once per epoch
    assert first != second
    assert epoch(loader, 0) == first
    again = train_loader(dataset(), batch_size=4, seed=7, mean=MEAN, std=STD)
    assert epoch(again, 1) == second
    other = train_loader(dataset(), batch_size=4, seed=8, mean=MEAN, std=STD)
    assert epoch(other, 0) != first


def test_train_order_ignores_the_global_rng() -> None:
    loader = train_loader(dataset(), batch_size=4, seed=7, mean=MEAN, std=STD)
    torch.manual_seed(0)
    first = epoch(loader, 0)
    torch.manual_seed(1)
    assert epoch(loader, 0) == first


def test_train_batches_carry_their_labels() -> None:
    loader = train_loader(dataset(), batch_size=4, seed=0, mean=MEAN, std=STD)
    for batch in loader:
        assert batch["labels"].tolist() == [i % 3 for i in indices(batch)]
    assert [len(batch["labels"]) for batch in loader] == [4, 4, 2]


def test_eval_keeps_order() -> None:
    loader = eval_loader(dataset(), batch_size=4, mean=MEAN, std=STD)
    assert [i for batch in loader for i in indices(batch)] == list(range(10))


def test_unlabelled_batches_have_no_labels() -> None:
    batches = list(eval_loader(dataset(labelled=False), batch_size=4, mean=MEAN, std=STD))
    assert all(set(batch) == {"pixel_values"} for batch in batches)
    assert sum(len(batch["pixel_values"]) for batch in batches) == 10
