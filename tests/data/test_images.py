"""Image folders: class discovery, sibling splits, carving, one-line errors, decoding geometry and colour."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft.data.images import ImageSplits, decode_images, find_images, load_image_splits
from tests.conftest import error_of

KINDS = ("png", "jpg", "grey", "rgba")


def write_image(
    stem: Path, kind: str = "png", size: tuple[int, int] = (8, 8), seed: int = 0
) -> tuple[Path, np.ndarray]:
    """A seeded random image of `size` (w, h) saved as `kind` at `stem` plus its suffix: the file and its pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    stem.parent.mkdir(parents=True, exist_ok=True)
    channels, mode, suffix = {"grey": ((), "L", ".png"), "rgba": ((4,), "RGBA", ".png")}.get(
        kind, ((3,), "RGB", f".{kind}")
    )
    pixels = rng.integers(0, 256, (h, w, *channels), dtype=np.uint8)
    path = stem.with_suffix(suffix)
    Image.fromarray(pixels, mode).save(path)
    return path, pixels


def class_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """`root/<class>/<i>.<ext>` with `counts[class]` images, cycling through PNG, JPEG, greyscale and RGBA."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"{i:03d}", KINDS[i % len(KINDS)], seed=seed + 100 * c + i)
    return root


def load(train: Path, validation: Path | None = None, test: Path | None = None, **options) -> ImageSplits:
    settings = {"split": (0.7, 0.15, 0.15), "seed": 0, **options}
    return load_image_splits(train, validation, test, **settings)


def class_names(splits: ImageSplits, key: str) -> Counter[str]:
    return Counter(splits.labels[label] for label in getattr(splits, key).labels)


# Discovery


def test_class_folders_give_sorted_paths_and_class_names(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "images", {"dog": 2, "cat": 3})
    (root / "cat" / "004.PNG").write_bytes((root / "cat" / "000.png").read_bytes())
    (root / "cat" / ".hidden.png").write_bytes((root / "cat" / "000.png").read_bytes())
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    paths, names = find_images(root, "data.train")
    assert [path.relative_to(root).as_posix() for path in paths] == [
        "cat/000.png", "cat/001.jpg", "cat/002.png", "cat/004.PNG", "dog/000.png", "dog/001.jpg",
    ]
    assert names == ["cat"] * 4 + ["dog"] * 2


def test_class_ids_follow_class_order(tmp_path: Path) -> None:
    splits = load(class_folder(tmp_path / "digits", {"10": 4, "2": 4, "9": 4}), split=(0.5, 0.25, 0.25))
    assert splits.labels == ["2", "9", "10"]  # numeric folder names sort as numbers
    assert class_names(splits, "train") == {"2": 2, "9": 2, "10": 2}


def test_sibling_test_folder_is_found_next_to_train(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "cifar" / "train", {"cat": 10, "dog": 10})
    test = class_folder(tmp_path / "cifar" / "test", {"cat": 2, "dog": 3}, seed=7)
    splits = load(train)
    assert splits.sources == {"train": "train/", "validation": "train/ (split)", "test": "test/"}
    assert splits.test.paths == find_images(test, "data.test")[0]
    assert splits.test.labels == [0, 0, 1, 1, 1]
    assert len(splits.train) + len(splits.validation) == 20  # nothing carved for test
    assert splits.warnings == []


def test_sibling_validation_folder_is_found_under_each_name(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"cat": 4, "dog": 4})
    class_folder(tmp_path / "valid", {"cat": 1, "dog": 1})
    assert load(train).sources == {"train": "train/", "validation": "valid/", "test": "train/ (split)"}
    class_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    splits = load(train)
    assert splits.sources["validation"] == "val/"
    assert splits.warnings == ["data.validation: using val/ next to train/, not valid/; set data.validation to choose"]


def test_siblings_are_looked_for_only_next_to_a_folder_named_train(tmp_path: Path) -> None:
    images = class_folder(tmp_path / "images", {"cat": 10, "dog": 10})
    class_folder(tmp_path / "test", {"cat": 1, "dog": 1})
    splits = load(images)
    assert splits.sources == {"train": "images/", "validation": "images/ (split)", "test": "images/ (split)"}
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 20


def test_given_folders_are_used_as_they_are(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    class_folder(tmp_path / "test", {"cat": 1, "dog": 1})
    holdout = class_folder(tmp_path / "holdout", {"dog": 2})
    final = class_folder(tmp_path / "final", {"dog": 2})
    splits = load(train, holdout, final)
    assert splits.sources == {"train": "train/", "validation": "holdout/", "test": "final/"}
    assert len(splits.train) == 6
    assert splits.validation.labels == splits.test.labels == [1, 1]


def test_one_folder_as_validation_and_test_is_leakage(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    holdout = class_folder(tmp_path / "holdout", {"dog": 2})
    assert error_of(load, train, holdout, holdout).startswith("holdout/: 2 images also in holdout/")


# Carving


def test_carved_splits_are_stratified_and_cover_train_once(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "images", {"a": 20, "b": 40, "c": 60})
    splits = load(train)
    assert class_names(splits, "validation") == class_names(splits, "test") == {"a": 3, "b": 6, "c": 9}
    assert class_names(splits, "train") == {"a": 14, "b": 28, "c": 42}
    every = [*splits.train.paths, *splits.validation.paths, *splits.test.paths]
    assert sorted(every) == find_images(train, "data.train")[0]
    assert all(path.parent.name == splits.labels[label] for path, label in zip(every, [
        *splits.train.labels, *splits.validation.labels, *splits.test.labels], strict=True))


def test_carving_is_a_function_of_the_seed(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "images", {"a": 20, "b": 20})

    def paths(seed: int) -> list[list[Path]]:
        splits = load(train, seed=seed)
        return [splits.train.paths, splits.validation.paths, splits.test.paths]

    assert paths(3) == paths(3)
    assert paths(3) != paths(4)


# Errors


def test_missing_folder(tmp_path: Path) -> None:
    message = error_of(load, tmp_path / "nowhere")
    assert message.startswith(f"data.train: folder {tmp_path / 'nowhere'} not found; set data.train to a folder")


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"a": 3, "b": 3})
    message = error_of(load, train, tmp_path / "train" / "a" / "000.png")
    assert "data.validation: folder" in message and "is a file, not a folder" in message


def test_images_directly_inside_the_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "flat" / "one", "png")
    write_image(tmp_path / "flat" / "two", "jpg")
    class_folder(tmp_path / "flat", {"cat": 2})
    message = error_of(load, tmp_path / "flat")
    assert message == (
        f"{tmp_path / 'flat'}: 2 images directly inside; put images in one sub-folder per class "
        f"({tmp_path / 'flat'}/<class>/<image>)"
    )


def test_a_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    message = error_of(load, tmp_path / "empty")
    assert message.startswith(f"{tmp_path / 'empty'}: no class folders; put images in one sub-folder per class")


def test_a_class_folder_without_images(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    (train / "fox").mkdir()
    (train / "fox" / "notes.txt").write_text("todo")
    message = error_of(load, train)
    assert message.startswith(f"{train / 'fox'}: no image files (.jpg, .jpeg")
    assert message.endswith("for class 'fox'; add images or remove the folder")


def test_a_test_class_missing_from_train(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    test = class_folder(tmp_path / "test", {"cat": 1, "fox": 1})
    assert error_of(load, train) == (
        f"{test}: class 'fox' is not in {train} (classes: cat, dog); add it to {train} or remove it from {test}"
    )


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "images", {"cat": 5})
    message = error_of(load, train)
    assert message.startswith(f"{train}: only one class folder ('cat'); a classifier needs at least 2")


def test_a_class_too_small_to_carve(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "images", {"cat": 5, "dog": 2})
    message = error_of(load, train)
    assert message.startswith("images/: class 'dog' has 2 examples; a stratified 70/15/15 split needs at least 3")


def test_unreadable_images_are_all_named_in_one_line(tmp_path: Path) -> None:
    whole, _ = write_image(tmp_path / "whole", "jpg", size=(32, 32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(whole.read_bytes()[:100])  # truncated: fails only when the pixels are read
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    message = error_of(decode_images, [whole, broken, fake], (32, 32))
    assert message.startswith(f"2 unreadable images: {broken} (")
    assert f", {fake} (" in message
    assert message.endswith("remove or replace the files, or set data.bad_images: skip to leave them out")


def test_unreadable_images_can_be_skipped(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}", "png", size=(8, 8), seed=i)[0] for i in range(3)]
    paths[1].write_bytes(b"garbage")
    decoded = decode_images(paths, (8, 8), skip_bad=True)
    assert decoded.kept == [0, 2] and decoded.pixels.shape == (2, 3, 8, 8)
    assert len(decoded.bad) == 1 and decoded.bad[0].startswith(str(paths[1]))
    assert torch.equal(decoded.pixels[1], decode_images([paths[2]], (8, 8)).pixels[0])


def test_square_source_keeps_the_whole_resized_square(tmp_path: Path) -> None:
    Image.new("RGB", (200, 100), (1, 2, 3)).save(tmp_path / "wide.png")
    decoded = decode_images([tmp_path / "wide.png"], (64, 64), square_source=True)
    assert decoded.pixels.shape == (1, 3, 73, 73)  # round(64 / 0.875): random crops are drawn from it later


# Image lists


def test_a_csv_of_image_paths_is_a_split(tmp_path: Path) -> None:
    for i in range(6):
        write_image(tmp_path / "pics" / f"{i}", "png", size=(8, 8), seed=i)
    rows = "\n".join(f"pics/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(6))
    (tmp_path / "list.csv").write_text(f"file,kind\n{rows}\n")
    splits = load_image_splits(tmp_path / "list.csv", None, None, split=(0.5, 0.0, 0.5), seed=0,
                               image_column="file", label_column="kind")
    assert splits.labels == ["cat", "dog"]
    assert len(splits.train) + len(splits.test) == 6
    assert all(path.is_file() and path.parent == tmp_path / "pics" for path in splits.train.paths)


def test_a_missing_listed_image_is_named_with_its_row(tmp_path: Path) -> None:
    write_image(tmp_path / "a", "png", size=(8, 8))
    (tmp_path / "list.csv").write_text("image,label\na.png,x\nnope.png,y\n")
    message = error_of(load_image_splits, tmp_path / "list.csv", None, None, split=(0.7, 0.15, 0.15), seed=0)
    assert message == (f"list.csv: 1 image file not found (row 2: nope.png); paths are relative to {tmp_path}, "
                       f"fix them or remove those rows")


def test_a_wrong_image_column_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,label\na.png,x\n")
    message = error_of(load_image_splits, tmp_path / "list.csv", None, None, split=(0.7, 0.15, 0.15), seed=0)
    assert "data.image_column" in message and "'image'" in message


def test_an_image_listed_in_train_and_test_is_leakage(tmp_path: Path) -> None:
    for i in range(4):
        write_image(tmp_path / f"{i}", "png", size=(8, 8), seed=i)
    (tmp_path / "train.csv").write_text("image,label\n0.png,a\n1.png,b\n2.png,a\n3.png,b\n")
    (tmp_path / "test.csv").write_text("image,label\n2.png,a\n")
    message = error_of(load_image_splits, tmp_path / "train.csv", None, tmp_path / "test.csv",
                       split=(0.7, 0.15, 0.15), seed=0)
    assert "also in" in message and "data.leakage" in message


# Decoding


def test_decode_gives_uint8_nchw(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}", kind, size=(12, 10), seed=i)[0] for i, kind in enumerate(KINDS)]
    images = decode_images(paths, (8, 8)).pixels
    assert images.dtype == torch.uint8
    assert images.shape == (4, 3, 8, 8)
    assert decode_images([], (8, 8)).pixels.shape == (0, 3, 8, 8)


def test_no_resize_is_bit_exact(tmp_path: Path) -> None:
    path, pixels = write_image(tmp_path / "rgb", "png", size=(32, 32))
    image = decode_images([path], (32, 32)).pixels[0]
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_jpeg_decodes_to_what_pil_reads(tmp_path: Path) -> None:
    path, _ = write_image(tmp_path / "photo", "jpg", size=(32, 32))
    expected = np.array(Image.open(path).convert("RGB"))  # JPEG is lossy: compare with the decoded file
    assert torch.equal(decode_images([path], (32, 32)).pixels[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    path, pixels = write_image(tmp_path / "grey", "grey", size=(16, 16))
    image = decode_images([path], (16, 16)).pixels[0]
    for channel in image:
        assert torch.equal(channel, torch.from_numpy(pixels))


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white, whatever colour is stored
    rgba[1, 0] = (0, 0, 0, 128)  # half black over white
    rgba[1, 1] = (200, 100, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    image = decode_images([tmp_path / "alpha.png"], (2, 2)).pixels[0].permute(1, 2, 0)
    assert image[0, 0].tolist() == [10, 20, 30]
    assert image[0, 1].tolist() == [255, 255, 255]
    assert image[1, 0].tolist() == [127, 127, 127]
    assert image[1, 1].tolist() == [200, 100, 0]


def test_centre_crop_of_a_wide_image(tmp_path: Path) -> None:
    path, pixels = write_image(tmp_path / "wide", "png", size=(40, 24))  # 40 wide, 24 high
    image = decode_images([path], (24, 24)).pixels[0]
    # The shorter side is already 24: no resize, just the middle 24 columns (8 cut from each side).
    assert torch.equal(image, torch.from_numpy(pixels[:, 8:32]).permute(2, 0, 1))


def test_small_crops_resize_the_shorter_side_to_the_crop(tmp_path: Path) -> None:
    path, pixels = write_image(tmp_path / "wide", "png", size=(40, 24))
    image = decode_images([path], (12, 12)).pixels[0]
    # 40x24 -> 20x12 (shorter side to the crop, nothing upscaled past it), then the middle 12 of 20 columns.
    resized = np.array(Image.fromarray(pixels).resize((20, 12), Image.Resampling.BILINEAR))
    assert torch.equal(image, torch.from_numpy(resized[:, 4:16]).permute(2, 0, 1))


def test_large_crops_use_the_eval_resize_ratio(tmp_path: Path) -> None:
    Image.new("RGB", (100, 80), (40, 80, 120)).save(tmp_path / "flat.png")
    image = decode_images([tmp_path / "flat.png"], (64, 64)).pixels[0]
    assert image.shape == (3, 64, 64)
    assert image[:, 0, 0].tolist() == [40, 80, 120] and image.unique().tolist() == [40, 80, 120]


@pytest.mark.parametrize("size", [(16, 24), (24, 16)])
def test_non_square_crop_sizes(tmp_path: Path, size: tuple[int, int]) -> None:
    path, _ = write_image(tmp_path / "odd", "jpg", size=(40, 24))
    assert decode_images([path], size).pixels.shape == (1, 3, *size)


def test_folders_with_the_same_name_are_shown_by_path(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "a" / "images", {"cat": 3, "dog": 3})
    validation = class_folder(tmp_path / "b" / "images", {"cat": 1})
    splits = load(train, validation)
    assert splits.sources == {"train": f"{train}/", "validation": f"{validation}/", "test": f"{train}/ (split)"}
