"""Train/validation/test splits for image classification: folders of class folders, checked, carved, decoded.

A split is a folder with one sub-folder per class (`train/cat/0001.jpg`); the sub-folder's name is the class.
Splits that are not given are found next to a folder named `train` (`val`, `validation`, `valid`, `test`) or else
carved from train by the same seeded stratified split as text. Class ids follow `class_order`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from graft.data.checks import Labelled, plural, shown
from graft.data.splits import SPLITS, check_class_sizes, class_order, stratified_split
from graft.errors import GraftError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SIBLINGS = {"validation": ("val", "validation", "valid"), "test": ("test",)}
"""Folder names looked for next to a train folder named `train`, in order of preference."""
CROP_RATIO = 0.875
"""Eval-time crop / resize ratio (224 of 256), as torchvision's ImageNet references use."""
SMALL = 64
"""Below this crop size images are resized straight to the crop: a 32 px CIFAR image must not lose pixels."""


@dataclass
class ImageSet:
    """Image files and their class ids, in the same order."""

    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ImageSplits:
    """The three splits and what to report."""

    train: ImageSet
    validation: ImageSet
    test: ImageSet
    labels: list[str]
    """Class names; index == class id."""
    sources: dict[str, str]
    """Split name -> where it came from, for display: `val/` or `train/ (split)`."""
    warnings: list[str]
    """One line each, for the caller to print."""


def find_images(folder: Path, field: str) -> tuple[list[Path], list[str]]:
    """A folder of class folders (`<folder>/<class>/*.jpg`) -> image paths and the class name of each.

    Files are sorted (a fixed order, so one seed always draws the same split); hidden files and folders
    and files without an image suffix are skipped. `field` is the recipe field to name in messages.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "not found"
        raise GraftError(f"{field}: folder {folder} {what}; set {field} to a folder with one sub-folder per class")
    entries = _visible(folder)
    loose = [path for path in entries if _is_image(path)]
    classes = [path for path in entries if path.is_dir()]
    if loose or not classes:
        found = f"{plural(len(loose), 'image')} directly inside" if loose else "no class folders"
        raise GraftError(f"{folder}: {found}; put images in one sub-folder per class ({folder}/<class>/<image>)")
    paths: list[Path] = []
    names: list[str] = []
    for class_folder in classes:
        images = [path for path in _visible(class_folder) if _is_image(path)]
        if not images:
            raise GraftError(
                f"{class_folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) for class {class_folder.name!r}; "
                "add images or remove the folder"
            )
        paths += images
        names += [class_folder.name] * len(images)
    return paths, names


def _visible(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))  # .DS_Store, ._x.jpg


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def load_image_splits(
    train: Path, validation: Path | None, test: Path | None, *, split: tuple[float, float, float], seed: int
) -> ImageSplits:
    """Find, check and split the user's image folders; `split` gives the (train, validation, test) fractions
    used to carve the splits that are neither given nor found next to `train`."""
    given = {key: Path(path) for key, path in zip(SPLITS, (train, validation, test), strict=True) if path is not None}
    given, warnings = _find_siblings(given)
    names = _display_names(given)
    parts = {key: _labelled(path, names[key], f"data.{key}") for key, path in given.items()}
    _check_classes(parts, given)
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        check_class_sizes(parts["train"], carve, split)
        picked = stratified_split(parts["train"].labels, carve, seed)
        parts = {**parts, **{key: parts["train"].select(indices) for key, indices in picked.items()}}
    labels = class_order(parts["train"].labels)
    ids = {label: i for i, label in enumerate(labels)}
    return ImageSplits(
        **{key: ImageSet([Path(p) for p in parts[key].texts], [ids[c] for c in parts[key].labels]) for key in SPLITS},
        labels=labels,
        sources={key: names[key] if key in given else f"{names['train']} (split)" for key in SPLITS},
        warnings=warnings,
    )


def labelled_folder(folder: Path, labels: list[str]) -> ImageSet:
    """A folder of class folders to evaluate a trained model on; every class must be one of the model's `labels`."""
    paths, classes = find_images(folder, "--data")
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise GraftError(f"{folder}: class folder(s) {shown(unknown)} are not among the model's labels "
                         f"({shown(labels, 10)}); remove or rename them")
    ids = {label: i for i, label in enumerate(labels)}
    return ImageSet(paths, [ids[c] for c in classes])


def _find_siblings(given: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    train = _absolute(given["train"])
    if train.name != "train":  # only a conventional layout is searched: `images/` next to `test/` may be unrelated
        return given, []
    found, warnings = dict(given), []
    for key, candidates in SIBLINGS.items():
        if key in given:
            continue
        present = [name for name in candidates if (train.parent / name).is_dir()]
        if present:
            found[key] = given["train"].parent / present[0]
        if len(present) > 1:
            others = shown([f"{name}/" for name in present[1:]])
            warnings.append(f"data.{key}: using {present[0]}/ next to train/, not {others}; set data.{key} to choose")
    return {key: found[key] for key in SPLITS if key in found}, warnings


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))  # normalised without resolving links, so `.` inside train/ is `train`


def _display_names(paths: dict[str, Path]) -> dict[str, str]:
    names = {key: f"{_absolute(path).name}/" for key, path in paths.items()}
    if len(set(names.values())) < len({_absolute(path) for path in paths.values()}):  # a/images and b/images
        return {key: f"{path}/" for key, path in paths.items()}
    return names


def _labelled(folder: Path, name: str, field: str) -> Labelled:
    paths, classes = find_images(folder, field)
    # Labelled is text-shaped; paths ride in `texts` so the text splitter's class-size check and split apply as is.
    return Labelled(name, [str(path) for path in paths], classes, list(range(1, len(paths) + 1)))


def _check_classes(parts: dict[str, Labelled], folders: dict[str, Path]) -> None:
    known = class_order(parts["train"].labels)
    if len(known) < 2:
        raise GraftError(
            f"{folders['train']}: only one class folder ({known[0]!r}); a classifier needs at least 2, "
            "so add a sub-folder of images for each other class"
        )
    for key in SPLITS[1:]:
        if key not in parts:
            continue
        unknown = [label for label in class_order(parts[key].labels) if label not in known]
        if unknown:
            what = f"class {unknown[0]!r} is" if len(unknown) == 1 else f"classes {shown(unknown)} are"
            it = "it" if len(unknown) == 1 else "them"
            raise GraftError(
                f"{folders[key]}: {what} not in {folders['train']} (classes: {shown(known, 10)}); "
                f"add {it} to {folders['train']} or remove {it} from {folders[key]}"
            )


def decode_images(paths: Sequence[Path], size: tuple[int, int]) -> torch.Tensor:
    """uint8 tensor [N, 3, H, W] for `size` (h, w), with torchvision's eval-time geometry.

    Each file becomes RGB (transparency composited onto white), its shorter side is resized (bilinear) to
    `round(max(h, w) / 0.875)`, or to `max(h, w)` for crops under 64 px, then it is centre-cropped to (h, w).
    An image already at the resize target is not resampled, so a 32×32 image decoded at 32 is bit-exact.
    Decoding happens once: callers keep the tensor, so CPU epochs do not decode JPEGs again.
    """
    height, width = size
    out = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    for i, path in enumerate(paths):
        image = _fit(_open_rgb(Path(path)), size)
        out[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # np.array copies: PIL's buffer is read-only
    return out


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file only fails when its pixels are read
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise GraftError(f"{path}: cannot read the image ({reason}); remove or replace the file") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Plain convert('RGB') drops alpha and keeps whatever colour hides under transparent pixels.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    target = round(max(size) / CROP_RATIO) if max(size) >= SMALL else max(size)
    w, h = image.size
    new = (target, int(target * h / w)) if w <= h else (int(target * w / h), target)  # as torchvision's Resize
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = round((new[0] - width) / 2), round((new[1] - height) / 2)  # as torchvision's CenterCrop
    return image.crop((left, top, left + width, top + height))
