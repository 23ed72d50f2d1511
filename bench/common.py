"""What every benchmark shares: the machine, timing statistics, the data, writing results.

Benchmarks are not tests: they measure, side by side in one process and one run, and write what they saw to
bench/results/<name>.json. Nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "date": time.strftime("%Y-%m-%d")}


def spread(values: list[float]) -> dict[str, float]:
    """Median and min–max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def per_step(stamps: list[float], warmup: int) -> float:
    """Median seconds per step from the times at which steps ended, the first `warmup` steps left out."""
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]
    if not gaps:
        raise ValueError(f"need more than {warmup + 1} steps to time")
    return statistics.median(gaps)


def uniform_texts(tokenizer: Any, n: int, words: int, seed: int = 0) -> list[str]:
    """Texts of `words` random vocabulary words: every one is truncated to the same token length, so padding
    plays no part in a loop-overhead comparison."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2][:5000]
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def rt_polarity(n_train: int, n_test: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Real movie-review sentences when ../shared/data has them (the development machines), else None."""
    corpus = SHARED / "rt-polarity"
    rows = [(line.strip(), label) for label in ("pos", "neg")
            for line in (corpus / f"rt-polarity.{label}").read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]
    rows = list(dict.fromkeys(rows))
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_test]


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    return path


def repeat(measure: Callable[[], float], times: int) -> dict[str, float]:
    return spread([measure() for _ in range(times)])
