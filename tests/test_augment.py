"""Train-time augmentation: seeded per (seed, epoch, image), geometry that is what it claims, loaders that replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.tasks.augment import Augment, Draw, _crop_box, _jitter, _warp
from graft.tasks.image import ImageTensors, train_loader


def images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def keys(n: int, epoch: int = 0) -> list[tuple[int, int]]:
    return [(i, epoch) for i in range(n)]


FULL = Augment((8, 8), crop_scale=(0.3, 1.0), hflip=True, rotation=20, color_jitter=0.4, seed=1)


def test_same_keys_same_images_and_each_key_its_own() -> None:
    source = images()
    a, b = FULL(source, keys(6)), FULL(source.clone(), keys(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, FULL(source, keys(6, epoch=1)))  # another epoch, other draws
    other_seed = Augment((8, 8), (0.3, 1.0), hflip=True, rotation=20, color_jitter=0.4, seed=2)
    assert not torch.equal(a, other_seed(source, keys(6)))


def test_an_image_is_augmented_the_same_in_any_batch() -> None:
    source = images()
    batch = FULL(source, keys(6))
    alone = FULL(source[3:4], [(3, 0)])
    assert torch.allclose(batch[3:4], alone, atol=1e-6)


def test_output_is_float_in_unit_range_at_the_model_size() -> None:
    out = FULL(images(size=20), keys(6))
    assert out.dtype == torch.float32 and out.shape == (6, 3, 8, 8)
    assert out.min() >= 0 and out.max() <= 1


def test_everything_off_is_the_centre_crop_bit_for_bit() -> None:
    source = images(size=12)
    plain = Augment((8, 8), crop_scale=None, hflip=False)
    assert torch.equal(plain(source, keys(6)), source[..., 2:10, 2:10].float() / 255)


def test_flip_alone_mirrors_about_half_the_images_exactly() -> None:
    source = images(n=40, size=8)
    out = Augment((8, 8), crop_scale=None, hflip=True)(source, keys(40))
    centre = source.float() / 255
    mirrored = [bool(torch.equal(o, c.flip(-1))) for o, c in zip(out, centre, strict=True)]
    same = [bool(torch.equal(o, c)) for o, c in zip(out, centre, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert 10 <= sum(mirrored) <= 30


def test_identity_warp_reproduces_the_image() -> None:
    source = images(n=1, size=8).float() / 255
    out = _warp(source, [Draw((0, 0, 8, 8), False, 0.0, 1, 1, 1)], (8, 8))
    assert torch.allclose(out, source, atol=1e-5)


def test_warp_flip_and_quarter_turn() -> None:
    source = images(n=1, size=8).float() / 255
    flipped = _warp(source, [Draw((0, 0, 8, 8), True, 0.0, 1, 1, 1)], (8, 8))
    assert torch.allclose(flipped, source.flip(-1), atol=1e-5)
    turned = _warp(source, [Draw((0, 0, 8, 8), False, 90.0, 1, 1, 1)], (8, 8))
    assert torch.allclose(turned, torch.rot90(source, 1, (-2, -1)), atol=1e-5) or torch.allclose(
        turned, torch.rot90(source, -1, (-2, -1)), atol=1e-5)


def test_warp_crops_the_box_it_is_given() -> None:
    source = images(n=1, size=8).float() / 255
    out = _warp(source, [Draw((2, 4, 4, 4), False, 0.0, 1, 1, 1)], (4, 4))  # top 2, left 4, 4x4: no resampling
    assert torch.allclose(out, source[..., 2:6, 4:8], atol=1e-5)


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 0.5), (1.0, 1.0)])
def test_crop_boxes_stay_inside_with_the_area_asked_for(scale: tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = _crop_box(rng, 30, 40, scale, (3 / 4, 4 / 3))
        assert top >= 0 and top + h <= 30 and left >= 0 and left + w <= 40 and h > 0 and w > 0
        if scale == (0.5, 0.5):
            assert abs(h * w / 1200 - 0.5) < 0.06  # rounding to whole pixels


def test_jitter_identity_and_full_desaturation() -> None:
    x = images(n=2, size=4).float() / 255
    assert torch.allclose(_jitter(x, torch.ones(2, 3)), x, atol=1e-6)
    grey = _jitter(x, torch.tensor([[1.0, 1.0, 0.0]] * 2))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    darker = _jitter(x, torch.tensor([[0.5, 1.0, 1.0]] * 2))
    assert torch.allclose(darker, x * 0.5, atol=1e-6)


def test_switching_one_part_on_leaves_the_others_draws_alone() -> None:
    rng_a, rng_b = np.random.default_rng([0, 0, 5]), np.random.default_rng([0, 0, 5])
    a = Augment((8, 8), (0.3, 1.0), hflip=True).draw(rng_a, (12, 12))
    b = Augment((8, 8), (0.3, 1.0), hflip=True, rotation=30, color_jitter=0.2, translate=0.25).draw(rng_b, (12, 12))
    assert (a.box, a.flip) == (b.box, b.flip)
    assert a.shift == (0, 0) and b.shift != (0, 0)


def test_translation_moves_whole_pixels_within_reach_and_fills_black() -> None:
    source = images(n=60, size=8)
    out = Augment((8, 8), crop_scale=None, hflip=False, translate=0.25)(source, keys(60))  # up to 2 px
    centre = source.float() / 255
    seen = set()
    for o, c in zip(out, centre, strict=True):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(o[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)],
                                c[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)])]
        assert found, "each image is its source moved by at most 2 pixels each way"
        dy, dx = found[0]
        seen.add((dy, dx))
        rows = [r for r in range(8) if not max(dy, 0) <= r < 8 + min(dy, 0)]
        cols = [k for k in range(8) if not max(dx, 0) <= k < 8 + min(dx, 0)]
        assert not o[:, rows].any() and not o[:, :, cols].any()  # what moved in is black
    assert len(seen) >= 12  # most of the 25 shifts occur in 60 draws


def test_train_loader_replays_each_epoch_and_moves_on() -> None:
    ds = ImageTensors(images(n=10, size=12), list(range(10)))
    augment = Augment((8, 8), (0.3, 1.0), hflip=True, rotation=10, seed=4)

    def epoch(e: int) -> list[torch.Tensor]:
        loader = train_loader(ds, 4, seed=4, mean=[0.5] * 3, std=[0.5] * 3, augment=augment)
        loader.sampler.set_epoch(e)
        return [batch["pixel_values"] for batch in loader]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].shape == (4, 3, 8, 8)


def test_auto_crops_large_inputs_and_shifts_small_ones() -> None:
    from graft.recipe.schema import AugmentSpec

    auto = AugmentSpec()
    assert auto.crop_for((224, 224)) == (0.35, 1.0) and auto.translate_for((224, 224)) == 0.0
    assert auto.crop_for((32, 32)) is None and auto.translate_for((32, 32)) == 1 / 8
    assert AugmentSpec(translate=0).translate_for((32, 32)) == 0.0
    assert AugmentSpec(crop_scale=None, hflip=False, translate=0).image_on is False
    assert AugmentSpec(crop_scale=None, hflip=False).image_on  # auto translation is on
