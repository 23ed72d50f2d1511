"""Do graft's defaults hold on data they were not chosen on? The README's held-out tables, reproduced.

    .venv/bin/python examples/defaults_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS] [EPOCH_SCALE] [text,vehicles]

Text: all-MiniLM-L6-v2 on rt-polarity "set B" (sentences 3,000-5,999 of the corpus shuffled with seed 0; set A, the
first 3,000, is what the LR and probe rules were chosen on): `full` at the measured LR against the old fixed 5e-5,
LoRA at the measured LR against the old preset 5e-4, the exact probe. Images: the CIFAR-10 ResNet-20 on
cifar10-mini's four vehicle classes: `full` with the old defaults (AdamW 5e-5), hand-tuned SGD 0.01, and graft's
defaults; `head_only` and `scratch` with graft's defaults. Prints one line per run (a JSON object) and a summary.
"""

from __future__ import annotations

import csv
import json
import random
import statistics
import sys
from pathlib import Path

import graft

HERE = Path(__file__).resolve().parent
VEHICLES = ("airplane", "automobile", "ship", "truck")
TEXT_RUNS = {"full auto": ({"name": "full"}, {}), "full 5e-5": ({"name": "full"}, {"lr": 5e-5}),
             "lora auto": ({"name": "lora"}, {}), "lora 5e-4": ({"name": "lora"}, {"lr": 5e-4}),
             "head_only exact": ({"name": "head_only"}, {})}
IMAGE_RUNS = {"full old defaults": ({"name": "full"}, {"name": "adamw", "lr": 5e-5}),
              "full sgd 0.01": ({"name": "full"}, {"lr": 0.01}), "full auto": ({"name": "full"}, {}),
              "head_only exact": ({"name": "head_only"}, {}), "scratch auto": ({"name": "scratch"}, {})}


def write(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return str(path)


def rt_polarity_rows(shared: Path) -> list[tuple[str, str]]:
    """The corpus's sentences (positive, then negative; latin-1, stripped, empty lines left out) shuffled with
    random.Random(0): the order sets A (rows 0-2,999) and B (3,000-5,999) are cut from."""
    rows = [(line.strip(), label) for label in ("pos", "neg")
            for line in (shared / "rt-polarity" / f"rt-polarity.{label}").read_text(encoding="latin-1").splitlines()
            if line.strip()]
    random.Random(0).shuffle(rows)
    return rows


def text_set_b(shared: Path, out: Path) -> dict[str, str]:
    rows = rt_polarity_rows(shared)
    return {"train": write(out / "rt_b.csv", ("text", "label"), rows[3000:5000]),
            "test": write(out / "rt_b_test.csv", ("text", "label"), rows[5000:6000])}


def vehicles(shared: Path, out: Path) -> dict[str, str]:
    def listed(split: str) -> str:
        rows = [(str(p), p.parent.name) for p in sorted((shared / "cifar10-mini" / split).glob("*/*.jpg"))
                if p.parent.name in VEHICLES]
        return write(out / f"vehicles_{split}.csv", ("image", "label"), rows)

    return {"train": listed("train"), "test": listed("test")}


def run(tree: dict, name: str, seed: int) -> dict:
    record = graft.train(tree, overwrite=True)
    result = {"run": name, "seed": seed, "lr": record["optim"]["lr"],
              "test_accuracy": record["metrics"]["test"]["accuracy"]}
    print(json.dumps(result), flush=True)
    return result


def main(shared: Path, out: Path, seeds: int = 3, epoch_scale: float = 1.0,
         parts: tuple[str, ...] = ("text", "vehicles")) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    text, images = text_set_b(shared, out), vehicles(shared, out)
    split = {"split": [0.85, 0.15, 0.0]}  # validation carved from train; the test files are given
    results = []
    for seed in range(seeds):
        for name, (strategy, optim) in TEXT_RUNS.items() if "text" in parts else ():
            tree = {"model": {"name": "minilm", "max_length": 64}, "data": {**text, **split}, "strategy": strategy,
                    "optim": optim, "train": {"epochs": max(1, round(3 * epoch_scale)), "batch_size": 32, "seed": seed},
                    "output": {"dir": str(out / "runs" / f"text-{name.replace(' ', '-')}-{seed}"),
                               "tensorboard": False}}
            results.append(run(tree, f"text {name}", seed))
        for name, (strategy, optim) in IMAGE_RUNS.items() if "vehicles" in parts else ():
            tree = {"task": "image_classification",
                    "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                              "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th")},
                    "data": {**images, **split, "image_size": 32, "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225]},
                    "strategy": strategy, "optim": optim,
                    "train": {"epochs": max(1, round(5 * epoch_scale)), "seed": seed},
                    "output": {"dir": str(out / "runs" / f"vehicles-{name.replace(' ', '-')}-{seed}"),
                               "tensorboard": False}}
            results.append(run(tree, f"vehicles {name}", seed))
    for name in dict.fromkeys(r["run"] for r in results):
        accuracies = [r["test_accuracy"] for r in results if r["run"] == name]
        print(f"{name:<28} {' / '.join(f'{a:.3f}' for a in accuracies)}  mean {statistics.fmean(accuracies):.3f}")
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/defaults-heldout"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         float(sys.argv[4]) if len(sys.argv) > 4 else 1.0,
         tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else ("text", "vehicles"))
