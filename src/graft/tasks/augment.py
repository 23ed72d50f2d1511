"""Train-time image augmentation on batches of uint8 tensors: random resized crop, horizontal flip, rotation, colour
jitter and translation (pad-and-crop), each on or off.

Written here because torchvision cannot be installed beside this torch build, and no other maintained pure-PyTorch
library covers these four. Every random draw of an image is a pure function of (seed, epoch, image index), never
of the global RNG, the batch it lands in, the process or the worker: a resumed or multi-process run augments each
image exactly as an uninterrupted single-process one does. Geometry is one affine map per image (crop, flip and
rotation together), applied to the whole batch with a single `grid_sample`, so an image is resampled once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

GREY = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights, as PIL's and torchvision's greyscale conversions use."""


@dataclass(frozen=True)
class Augment:
    """What to randomise; `size` is the (h, w) the model takes, sources may be larger (they are cropped)."""

    size: tuple[int, int]
    crop_scale: tuple[float, float] | None = (0.35, 1.0)
    """Random resized crop: the crop's share of the source area; None: a centre crop of `size`."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    rotation: float = 0.0
    """Largest rotation in degrees, either way; 0: none."""
    color_jitter: float = 0.0
    """Brightness, contrast and saturation each scaled by a factor in [1 - j, 1 + j]; 0: none."""
    seed: int = 0
    translate: float = 0.0
    """Largest shift as a share of each side, in whole pixels either way, the space left black: what padding by
    that many pixels and cropping back at random does; 0: none."""

    @property
    def resamples(self) -> bool:
        return self.crop_scale is not None or self.rotation > 0

    def __call__(self, images: torch.Tensor, keys: list[tuple[int, int]]) -> torch.Tensor:
        """uint8 [B, 3, H, W] sources and their (index, epoch) keys -> float32 [B, 3, h, w] in [0, 1]."""
        draws = [self.draw(np.random.default_rng([self.seed, epoch, index]), images.shape[-2:])
                 for index, epoch in keys]
        if self.resamples:
            out = _warp(images.to(torch.float32).div_(255), draws, self.size)
        else:
            out = _centre_crop(images, self.size).to(torch.float32).div_(255)
            flipped = [i for i, d in enumerate(draws) if d.flip]
            if flipped:
                out[flipped] = out[flipped].flip(-1)
        if self.color_jitter > 0:
            out = _jitter(out, torch.tensor([[d.brightness, d.contrast, d.saturation] for d in draws]))
        for i, d in enumerate(draws):
            if d.shift != (0, 0):
                out[i] = _shifted(out[i], *d.shift)
        return out

    def draw(self, rng: np.random.Generator, source: tuple[int, int] | torch.Size) -> Draw:
        """One image's random choices, in a fixed order (so adding a switch never changes the others' draws)."""
        height, width = int(source[0]), int(source[1])
        box = _crop_box(rng, height, width, self.crop_scale, self.crop_ratio)
        if self.crop_scale is None:
            box = _centre_box(height, width, self.size)
        flip = bool(rng.random() < 0.5)
        angle = float(rng.uniform(-self.rotation, self.rotation))
        j = self.color_jitter
        factors = rng.uniform(1 - j, 1 + j, size=3)
        reach = [round(self.translate * side) for side in self.size]
        shift = (int(rng.integers(-reach[0], reach[0] + 1)), int(rng.integers(-reach[1], reach[1] + 1)))
        return Draw(box, flip and self.hflip, angle if self.rotation > 0 else 0.0,
                    *(float(f) if j > 0 else 1.0 for f in factors), shift)


@dataclass(frozen=True)
class Draw:
    box: tuple[int, int, int, int]
    """top, left, height, width of the crop in the source."""
    flip: bool
    angle: float
    brightness: float
    contrast: float
    saturation: float
    shift: tuple[int, int] = (0, 0)
    """Pixels down and right the image moves."""


def _crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] | None,
              ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling: an area share and a log-uniform aspect ratio, ten tries, then the
    largest centred box of an allowed ratio. Draws are made even when cropping is off, to keep the stream fixed."""
    area = height * width
    lo, hi = scale or (1.0, 1.0)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(lo, hi)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _centre_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = min(size[0], height), min(size[1], width)
    return round((height - h) / 2), round((width - w) / 2), h, w


def _centre_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    top, left, h, w = _centre_box(images.shape[-2], images.shape[-1], size)
    if (h, w) != tuple(size):
        raise ValueError(f"source images {list(images.shape[-2:])} are smaller than the input size {list(size)}")
    return images[..., top:top + h, left:left + w]


def _warp(images: torch.Tensor, draws: list[Draw], size: tuple[int, int]) -> torch.Tensor:
    """Crop, flip and rotate each image by one affine map from output to source coordinates (bilinear; areas
    rotated in from outside the source are black, as torchvision fills them)."""
    height, width = images.shape[-2:]
    theta = torch.empty((len(draws), 2, 3), dtype=torch.float32)
    for i, d in enumerate(draws):
        top, left, h, w = d.box
        cos, sin = math.cos(math.radians(d.angle)), math.sin(math.radians(d.angle))
        sx = (-1.0 if d.flip else 1.0) * w / 2  # output x in [-1, 1] -> pixels from the crop's centre
        sy = h / 2
        # Rotate in pixel units (so angles are true on non-square crops), then to the source's [-1, 1] range.
        theta[i, 0] = torch.tensor([cos * sx / (width / 2), -sin * sy / (width / 2),
                                    (left + w / 2) / (width / 2) - 1])
        theta[i, 1] = torch.tensor([sin * sx / (height / 2), cos * sy / (height / 2),
                                    (top + h / 2) / (height / 2) - 1])
    grid = F.affine_grid(theta, [len(draws), images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def _shifted(image: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """[C, h, w] moved by whole pixels, black where nothing moved in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(down, 0):h + min(down, 0), max(right, 0):w + min(right, 0)] = \
        image[..., max(-down, 0):h + min(-down, 0), max(-right, 0):w + min(-right, 0)]
    return out


def _jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast (towards the image's mean grey), then saturation (towards its own grey)."""
    weights = torch.tensor(GREY).view(1, 3, 1, 1)
    b, c, s = (factors[:, k].view(-1, 1, 1, 1).to(images.dtype) for k in range(3))
    images = (images * b).clamp_(0, 1)
    mean = (images * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    images = ((images - mean) * c + mean).clamp_(0, 1)
    grey = (images * weights).sum(1, keepdim=True)
    return ((images - grey) * s + grey).clamp_(0, 1)
