"""What the data looks like: class balance per split, text lengths or image sizes, near-empty inputs (texts with
almost no letters, blank or tiny images) and inputs far longer than the rest."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from graft.doctor.examples import Examples

NEAR_EMPTY_CHARS = 3
"""A text with fewer letters and digits than this says next to nothing (`ok`, `?!`, `-`)."""
BLANK_SPREAD = 2.0
"""A standard deviation of grey levels (0-255) below this: the image is one flat colour."""
TINY_SIDE = 8
"""Pixels: an image smaller than this on a side holds little to learn from."""
IMBALANCE = 10.0
"""The largest class this many times the smallest: said in the summary."""


def balance(examples: Examples) -> dict[str, Any]:
    """Examples per class in each split, the train split's largest-to-smallest ratio, and classes a split lacks."""
    classes = examples.classes
    counts = {key: {c: Counter(part.labels)[c] for c in classes} for key, part in examples.parts.items()}
    train = [n for n in counts["train"].values() if n]
    return {"counts": counts, "imbalance": max(train) / min(train),
            "missing": {key: [c for c in classes if not n[c]] for key, n in counts.items() if key != "train"
                        and any(not v for v in n.values())}}


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=float)
    return {"min": float(a.min()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def text_profile(examples: Examples) -> dict[str, Any]:
    """Lengths per split (characters and words), near-empty texts, and texts far longer than the rest (more words
    than the third quartile plus three interquartile ranges, and at least twice the median)."""
    words = [len(text.split()) for text in examples.inputs]
    lengths = {key: {"chars": summary([len(t) for t in part.texts]), "words": summary([len(t.split()) for t in
                                                                                        part.texts])}
               for key, part in examples.parts.items()}
    near_empty = [n for n, text in enumerate(examples.inputs) if sum(c.isalnum() for c in text) < NEAR_EMPTY_CHARS]
    q1, median, q3 = np.percentile(words, [25, 50, 75])
    limit = max(q3 + 3 * (q3 - q1), 2 * median)
    long = sorted((n for n, w in enumerate(words) if w > limit), key=lambda n: -words[n])
    return {"lengths": lengths, "near_empty": near_empty, "long": long, "long_limit_words": float(limit)}


@dataclass
class ImageFacts:
    hashes: list[int | None]
    """64-bit perceptual hashes (imagehash.phash); None: unreadable."""
    sizes: list[tuple[int, int] | None]
    """(width, height)."""
    spread: list[float | None]
    """Standard deviation of the grey levels."""
    unreadable: dict[int, str]
    """Position -> why the file cannot be read."""

    def select(self, keep: list[int]) -> ImageFacts:
        """The facts of the images at positions `keep` (the readable ones, say), renumbered in that order."""
        return ImageFacts([self.hashes[n] for n in keep], [self.sizes[n] for n in keep],
                          [self.spread[n] for n in keep], {})


def look_at_images(paths: list[str]) -> ImageFacts:
    """Each image decoded once: its perceptual hash, size and grey-level spread."""
    import imagehash
    from PIL import Image, UnidentifiedImageError

    facts = ImageFacts([], [], [], {})
    for n, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image.load()
                size = image.size
                grey = image.convert("L")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
            facts.unreadable[n] = " ".join(str(error).split()) or type(error).__name__
            size, grey = None, None
        facts.sizes.append(size)
        facts.hashes.append(None if grey is None else int(str(imagehash.phash(grey)), 16))
        facts.spread.append(None if grey is None else float(np.asarray(grey, dtype=np.float32).std()))
    return facts


def image_profile(examples: Examples, facts: ImageFacts) -> dict[str, Any]:
    """Sizes per split, blank images (one flat colour) and tiny ones."""
    sizes: dict[str, Any] = {}
    for key in examples.parts:
        seen = [facts.sizes[n] for n, split in enumerate(examples.splits) if split == key and facts.sizes[n]]
        sizes[key] = {"width": summary([w for w, _ in seen]), "height": summary([h for _, h in seen])}  # type: ignore[misc]
    blank = [n for n, s in enumerate(facts.spread) if s is not None and s < BLANK_SPREAD]
    tiny = [n for n, s in enumerate(facts.sizes) if s is not None and min(s) < TINY_SIDE]
    return {"sizes": sizes, "near_empty": sorted(set(blank) | set(tiny)), "blank": blank, "tiny": tiny}
