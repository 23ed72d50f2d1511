"""Image classification: image folders or lists, decoded once into memory, augmented and normalised per batch; CNNs
and vision transformers from Hugging Face, or any plain nn.Module."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from graft.errors import GraftError
from graft.tasks.classification import Classification

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from graft.models.build import LoadedModel, TrainedModel
    from graft.recipe import DataSpec, ModelSpec, Recipe

VIRTUAL_TOKENS = "virtual tokens are for text transformers; use lora or adapter for images"


class ImageClassification(Classification):
    name = "image_classification"
    pipeline_tag = "image-classification"
    data_fields = frozenset({"image_column", "label_column", "image_size", "mean", "std", "bad_images",
                             "augment.crop_scale", "augment.crop_ratio", "augment.hflip", "augment.rotation",
                             "augment.color_jitter", "augment.translate", "review", "inspect"})
    refused_strategies: ClassVar[dict[str, str]] = {
        **dict.fromkeys(("prompt", "ptuning", "prefix"), VIRTUAL_TOKENS),
        "distill": "teacher -> student distillation is for text classifiers so far; fine-tune the smaller image model "
                   "with full"}
    input_kind = "image"
    takes_plain_modules = True
    hf_auto_class = "AutoModelForImageClassification"
    hf_processor = "image"

    def check_recipe(self, recipe: Recipe) -> None:
        if recipe.model.pooling != "auto":
            raise ValueError("model.pooling: for text classifiers; an image model pools its own feature maps")
        if recipe.model.is_factory and recipe.data.image_size is None:
            raise ValueError("data.image_size: a plain module needs its input size (e.g. data.image_size: 32)")
        # hub ids are the only data sources the recipe keeps as strings
        hub = next((key for key in ("train", "validation", "test") if isinstance(getattr(recipe.data, key), str)), None)
        if hub:
            raise ValueError(f"data.{hub}: hf:// datasets are read for text tasks (an image task reads image files); "
                             f"give a folder of class folders or a table of image paths")

    def load_model(self, spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
        from graft.models.build import image_input

        loaded = super().load_model(spec, labels, data, scratch)
        loaded.input = loaded.input or image_input(loaded.processor, data)
        return loaded

    def load_trained(self, folder: Path, data: DataSpec | None) -> TrainedModel:
        from graft.models.build import image_input

        trained = super().load_trained(folder, data)
        trained.input = trained.input or image_input(trained.processor, data)
        return trained

    def load_splits(self, recipe: Recipe) -> Any:
        from graft.data.images import load_image_splits
        from graft.data.tables import TableFormat

        d = recipe.data
        return load_image_splits(d.train, d.validation, d.test, split=d.split, seed=recipe.train.seed,
                                 image_column=d.image_column, label_column=d.label_column, leakage=d.leakage,
                                 fmt=TableFormat.of(d), review=d.review)

    def read_labelled(self, recipe: Recipe, path: Path, labels: list[str]) -> Any:
        from graft.data.images import labelled_images
        from graft.data.tables import TableFormat

        d = recipe.data
        return labelled_images(path, labels, d.image_column, d.label_column, TableFormat.of(d))

    def read_examples(self, recipe: Recipe) -> list[tuple[str, str]]:
        from graft.data.images import load_image_splits
        from graft.data.tables import TableFormat

        d = recipe.data
        splits = load_image_splits(d.train, None, None, split=(1.0, 0.0, 0.0), seed=recipe.train.seed,
                                   image_column=d.image_column, label_column=d.label_column, leakage=d.leakage,
                                   fmt=TableFormat.of(d), review=d.review)
        return self.rows(splits.train, splits.labels)

    def read_unlabelled(self, recipe: Recipe, source: str) -> tuple[list[str], Any]:
        from graft.data.images import ImageSet, unlabelled_images
        from graft.data.tables import TableFormat

        paths = unlabelled_images(source, image_column=recipe.data.image_column, fmt=TableFormat.of(recipe.data))
        return [str(p) for p in paths], ImageSet(paths, None)

    def memory_loader(self, run: Any, inputs: list[Any]) -> tuple[list[Any], DataLoader]:
        """PIL images, uint8 arrays (height, width[, channels]) or image files, decoded as files are for training
        and `graft predict`; a row shows the file, or None for an image given in memory."""
        import torch

        from graft.tasks import image

        size = (run.input["image_size"][0], run.input["image_size"][1])
        pixels = torch.stack([_pixels(x, i, size) for i, x in enumerate(inputs)])
        shown = [str(x) if isinstance(x, str | Path) else None for x in inputs]
        t = run.recipe.train
        return shown, image.eval_loader(image.ImageTensors(pixels, None), t.eval_batch, run.input["mean"],
                                        run.input["std"], t.num_workers)

    def train_loader(self, recipe: Recipe, split: Any, loaded: LoadedModel, augment: bool,
                     notes: list[str]) -> DataLoader:
        from graft.tasks import image
        from graft.tasks.augment import Augment

        t, aug = recipe.train, recipe.data.augment
        size = tuple(loaded.input["image_size"])
        if not augment and aug.image_on:
            notes.append("augmentation: off, the feature cache needs fixed inputs (strategy.feature_cache: false to "
                         "augment)")
        augmenter = Augment(size, aug.crop_for(size), aug.crop_ratio, aug.hflip, aug.rotation, aug.color_jitter,
                            t.seed, aug.translate_for(size)) if augment and aug.image_on else None
        images = _decoded(split, size, recipe.data.bad_images, "train", notes, square_source=augmenter is not None)
        return image.train_loader(images, t.batch_size, t.seed, loaded.input["mean"], loaded.input["std"],
                                  t.num_workers, augmenter)

    def eval_loader(self, recipe: Recipe, split: Any, model: Any, notes: list[str] | None = None,
                    name: str = "test") -> DataLoader:
        from graft.tasks import image

        bad = recipe.data.bad_images if notes is not None else "error"
        size = tuple(model.input["image_size"])
        images = _decoded(split, size, bad, name, notes if notes is not None else [])
        return image.eval_loader(images, recipe.train.eval_batch, model.input["mean"], model.input["std"],
                                 recipe.train.num_workers)

    def inputs(self, split: Any) -> list[str]:
        return [str(Path(p).absolute()) for p in split.paths]

    def label_ids(self, split: Any) -> list[int]:
        return list(split.labels)


def _decoded(split: Any, size: tuple[int, ...], bad_images: str, name: str, notes: list[str],
             square_source: bool = False) -> Any:
    """A split's images decoded once into memory; unreadable files stop the run or are left out (and noted)."""
    from graft.data.checks import plural, shown
    from graft.data.images import decode_images
    from graft.tasks.image import ImageTensors

    decoded = decode_images(split.paths, (size[0], size[1]), skip_bad=bad_images == "skip",
                            square_source=square_source)
    if decoded.bad:
        if not decoded.kept and len(split.paths):
            raise GraftError(f"data.{name}: none of its {len(split.paths)} images can be read (e.g. "
                             f"{decoded.bad[0]}); check the files")
        notes.append(f"data.{name}: left out {plural(len(decoded.bad), 'unreadable image')} "
                     f"({shown(decoded.bad, 3)}; data.bad_images: skip)")
    labels = None if split.labels is None else [split.labels[i] for i in decoded.kept]
    return ImageTensors(decoded.pixels, labels)


def _pixels(given: Any, i: int, size: tuple[int, int]) -> Any:
    """One input image as uint8 [3, H, W], by the geometry `decode_images` gives files (RGB, resize, centre crop)."""
    import numpy as np
    import torch
    from PIL import Image

    # The very steps decode_images takes for a file, so an image given in memory predicts as its file does.
    from graft.data.images import decode_images, fit_image, resize_target, to_rgb

    if isinstance(given, str | Path):
        path = Path(given)
        if not path.is_file():
            what = "a folder (for a folder, graft.predict(run_dir, folder))" if path.is_dir() else "not found"
            raise GraftError(f"input {i + 1}: {path}: {what}; give image files, PIL images or uint8 arrays")
        decoded = decode_images([path], size, skip_bad=True)
        if decoded.bad:
            raise GraftError(f"input {i + 1}: {decoded.bad[0]}: not a readable image")
        return decoded.pixels[0]
    if isinstance(given, np.ndarray):
        array = given[..., 0] if given.ndim == 3 and given.shape[-1] == 1 else given
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise GraftError(f"input {i + 1}: an array image must be uint8 (height, width, 3), (height, width, 4) or "
                             f"(height, width), got {given.dtype} {tuple(given.shape)}; channels last, values 0-255 "
                             f"(e.g. (x * 255).round().astype('uint8'), or x.transpose(1, 2, 0) for channels first)")
        given = Image.fromarray(array)
    if not isinstance(given, Image.Image):
        raise GraftError(f"input {i + 1}: an image classifier predicts on PIL images, uint8 arrays (height, width, 3) "
                         f"or image file paths, got {type(given).__name__}")
    fitted = fit_image(to_rgb(given), resize_target(size), size)
    return torch.from_numpy(np.array(fitted)).permute(2, 0, 1)
