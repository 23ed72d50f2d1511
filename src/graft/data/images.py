"""Train/validation/test splits for image classification: folders of class folders or lists of image files,
checked, carved, decoded.

A split is a folder with one sub-folder per class (`train/cat/0001.jpg`; the sub-folder's name is the class), or a
table (CSV, TSV, JSON lines, Parquet: anything `read_table` reads) with a column of image paths, relative to the
table's folder, and a label column. Splits that are not given are found next to a folder named `train` (`val`,
`validation`, `valid`, `test`) or else carved from train by the same seeded stratified split as text. Class ids
follow `class_order`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from graft.data.checks import Labelled, drop_duplicate_texts, format_rows, plural, require_column, shown, text_values
from graft.data.review import apply_review
from graft.data.splits import (
    SPLITS,
    check_class_sizes,
    class_order,
    remove_leakage,
    split_sources,
    stratified_split,
)
from graft.data.tables import (
    PLAIN,
    SUFFIXES,
    FileRow,
    TableFormat,
    is_glob,
    read_labelled,
    read_rows,
    scalar_values,
    source_name,
)
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
    labels: list[int] | None
    """None: images to predict on."""

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, indices: Sequence[int]) -> ImageSet:
        """The images at `indices`, as `datasets.Dataset.select` gives a text split's rows."""
        return ImageSet([self.paths[i] for i in indices], None if self.labels is None else
                        [self.labels[i] for i in indices])


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
    train: Path, validation: Path | None, test: Path | None, *, split: tuple[float, float, float], seed: int,
    image_column: str = "image", label_column: str = "label", leakage: str = "error", fmt: TableFormat = PLAIN,
    review: Path | None = None,
) -> ImageSplits:
    """Find, check and split the user's image folders or lists (a glob reads several lists as one); `split` gives
    the (train, validation, test) fractions used to carve the splits that are neither given nor found next to
    `train`; an image file listed in two splits is leakage, handled as `leakage` says; `fmt` says how to read the
    lists; `review` is a file of a person's decisions (see `graft.data.review`)."""
    given = {key: Path(path) for key, path in zip(SPLITS, (train, validation, test), strict=True) if path is not None}
    read, given, warnings = read_image_files(given, image_column, label_column, fmt)
    names = {key: part.name for key, part in read.items()}
    parts, found = apply_review(read, review)
    warnings += found
    check_classes(parts, given)
    parts, found = remove_leakage(parts, leakage)
    warnings += found
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        parts["train"], found = drop_duplicate_texts(parts["train"])  # one file in two splits would be leakage
        warnings += found
        check_class_sizes(parts["train"], carve, split)
        picked = stratified_split(parts["train"].labels, carve, seed)
        parts = {**parts, **{key: parts["train"].select(indices) for key, indices in picked.items()}}
    labels = class_order(parts["train"].labels)
    ids = {label: i for i, label in enumerate(labels)}
    return ImageSplits(
        **{key: ImageSet([Path(p) for p in parts[key].texts], [ids[c] for c in parts[key].labels]) for key in SPLITS},
        labels=labels,
        sources=split_sources(names, given),
        warnings=warnings,
    )


def read_image_files(given: dict[str, Path], image_column: str, label_column: str, fmt: TableFormat = PLAIN
                     ) -> tuple[dict[str, Labelled], dict[str, Path], list[str]]:
    """Each split's images and labels (split -> examples), the splits' folders or lists with those found next to a
    `train` folder added, and what to say about the ones found."""
    given, warnings = _find_siblings(given)
    names = _display_names(given)
    parts = {key: _labelled(path, names[key], f"data.{key}", image_column, label_column, fmt)
             for key, path in given.items()}
    return parts, given, warnings


def labelled_images(source: Path, labels: list[str], image_column: str = "image",
                    label_column: str = "label", fmt: TableFormat = PLAIN) -> ImageSet:
    """A folder of class folders, or a table of image paths and labels, to evaluate a trained model on; every class
    must be one of the model's `labels`."""
    if _is_list(source):
        part = read_image_list(source, source_name(source), image_column, label_column, fmt)
        paths, classes = [Path(p) for p in part.texts], part.labels
    else:
        paths, classes = find_images(source, "--data")
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise GraftError(f"{source}: class(es) {shown(unknown)} are not among the model's labels "
                         f"({shown(labels, 10)}); remove or rename them")
    ids = {label: i for i, label in enumerate(labels)}
    return ImageSet(paths, [ids[c] for c in classes])


def unlabelled_images(source: str, image_column: str = "image", fmt: TableFormat = PLAIN) -> list[Path]:
    """Images to predict on: one image file, a folder (searched recursively, sorted), a table with `image_column`
    (paths relative to it), or `-`: one path per line on stdin."""
    import sys

    if source == "-":
        paths = [Path(line.strip()) for line in sys.stdin.read().splitlines() if line.strip()]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise GraftError(f"stdin: {plural(len(missing), 'image file')} not found ({shown(missing, 3)}); "
                             f"give one existing image path per line")
        return paths
    path = Path(source)
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if _is_image(p) and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        if not paths:
            raise GraftError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
        return paths
    if _is_list(path):
        name, (table, rows) = source_name(path), read_rows(path, fmt)
        require_column(table.column_names, image_column, name, "data.image_column")
        listed = text_values(scalar_values(table, image_column, name, "data.image_column", rows), name, image_column,
                             rows)
        return _resolve_listed(path, name, listed, rows)
    if _is_image(path):
        return [path]
    what = "not found" if not path.exists() else f"not an image ({', '.join(IMAGE_SUFFIXES)}) nor a table"
    raise GraftError(f"{path}: {what}; give an image, a folder of images, a CSV/JSONL with an "
                     f"'{image_column}' column, or - for paths on stdin")


def _find_siblings(given: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    train = _absolute(given["train"])
    # Only a conventional layout is searched: `images/` next to `test/` may be unrelated.
    if train.name != "train" or not train.is_dir():
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
    def slash(path: Path) -> str:
        return "" if path.is_file() else "/"  # a folder reads `train/`, a list of images `train.csv`

    names = {key: source_name(path) if is_glob(path) else f"{_absolute(path).name}{slash(path)}"
             for key, path in paths.items()}
    if len(set(names.values())) < len({_absolute(path) for path in paths.values()}):  # a/images and b/images
        return {key: f"{path}{slash(path)}" for key, path in paths.items()}
    return names


def _is_list(source: Path) -> bool:
    """A table of image paths (or a glob of them), not a folder of class folders."""
    return (source.is_file() or is_glob(source)) and source.suffix.lower() in SUFFIXES


def _labelled(source: Path, name: str, field: str, image_column: str, label_column: str,
              fmt: TableFormat) -> Labelled:
    # Labelled is text-shaped; paths ride in `texts` so the text splitter's checks and split apply as they are.
    if _is_list(source):
        return read_image_list(source, name, image_column, label_column, fmt)
    paths, classes = find_images(source, field)
    return Labelled(name, [str(path.resolve()) for path in paths], classes, list(range(1, len(paths) + 1)),
                    noun="image")


def read_image_list(path: Path, name: str, image_column: str, label_column: str,
                    fmt: TableFormat = PLAIN) -> Labelled:
    """A table of image paths (relative to its folder) and labels; every listed file must exist."""
    part = read_labelled(path, name, image_column, label_column, text_field="data.image_column", fmt=fmt)
    paths = _resolve_listed(path, name, part.texts, part.rows)
    return Labelled(part.name, [str(p) for p in paths], part.labels, part.rows, noun="image")


def _resolve_listed(table: Path, name: str, listed: list[str], rows: list[int]) -> list[Path]:
    """Paths listed in `table`, relative to its folder (for a glob, to each matched file's); every one must be a
    file."""
    folder = _absolute(table).parent
    folders = [_absolute(row.path).parent if isinstance(row, FileRow) else folder for row in rows]
    # Resolved (`..`, symlinks), so that one file listed twice under two spellings counts as one.
    paths = [(at / Path(p.strip()).expanduser()).resolve() for at, p in zip(folders, listed, strict=True)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        where, shown_paths = format_rows([rows[i] for i in missing]), shown([listed[i] for i in missing], 3)
        raise GraftError(f"{name}: {plural(len(missing), 'image file')} not found ({where}: {shown_paths}); paths "
                         f"are relative to {folders[missing[0]]}, fix them or remove those rows")
    return paths


def check_classes(parts: dict[str, Labelled], folders: dict[str, Path]) -> None:
    """Refuse a train split with one class, and validation/test classes that train lacks."""
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


@dataclass
class Decoded:
    """Decoded images and what could not be decoded."""

    pixels: torch.Tensor
    """uint8 [N, 3, H, W], one per readable file."""
    kept: list[int]
    """Positions (in the paths given) of the images in `pixels`."""
    bad: list[str]
    """`path (reason)` of each unreadable file."""


def decode_images(paths: Sequence[Path], size: tuple[int, int], *, skip_bad: bool = False,
                  square_source: bool = False) -> Decoded:
    """uint8 tensor [N, 3, H, W] for `size` (h, w), with torchvision's eval-time geometry.

    Each file becomes RGB (transparency composited onto white), its shorter side is resized (bilinear) to
    `round(max(h, w) / 0.875)`, or to `max(h, w)` for crops under 64 px, then it is centre-cropped to (h, w), or
    with `square_source` to a square of that resized side (what random crops are later drawn from).
    An image already at the resize target is not resampled, so a 32×32 image decoded at 32 is bit-exact.
    Decoding happens once: callers keep the tensor, so CPU epochs do not decode JPEGs again.
    Unreadable or truncated files are all listed in one error, or left out with `skip_bad`.
    """
    target = resize_target(size)
    crop = (target, target) if square_source else size
    out = torch.empty((len(paths), 3, *crop), dtype=torch.uint8)
    kept, bad = [], []
    for i, path in enumerate(paths):
        try:
            image = fit_image(_open_rgb(Path(path)), target, crop)
        except _Unreadable as error:
            bad.append(f"{path} ({error})")
            continue
        out[len(kept)] = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # np.array copies: PIL's is read-only
        kept.append(i)
    if bad and not skip_bad:
        raise GraftError(f"{plural(len(bad), 'unreadable image')}: {shown(bad, 3)}; remove or replace the files, or "
                         f"set data.bad_images: skip to leave them out")
    return Decoded(out[: len(kept)], kept, bad)


def resize_target(size: tuple[int, int]) -> int:
    """The side the shorter edge is resized to before cropping `size`."""
    return round(max(size) / CROP_RATIO) if max(size) >= SMALL else max(size)


class _Unreadable(Exception):
    pass


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file only fails when its pixels are read
            return to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise _Unreadable(reason) from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit (and 32-bit) grey: Pillow's convert clips every value above 255 to white; scale to 8 bits instead.
        values = np.asarray(image, dtype=np.float64)
        deep = image.mode.startswith("I;16") or values.max(initial=0) > 255
        grey = np.clip(np.round(values / 257 if deep else values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Plain convert('RGB') drops alpha and keeps whatever colour hides under transparent pixels.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def fit_image(image: Image.Image, target: int, size: tuple[int, int]) -> Image.Image:
    height, width = size
    w, h = image.size
    new = (target, int(target * h / w)) if w <= h else (int(target * w / h), target)  # as torchvision's Resize
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = round((new[0] - width) / 2), round((new[1] - height) / 2)  # as torchvision's CenterCrop
    return image.crop((left, top, left + width, top + height))
