"""Does transfer help on a new image task? The CIFAR-10 ResNet-20 moved to "animal or vehicle?", four ways.

    .venv/bin/python examples/strategies_cifar_transfer.py [SHARED_DATA_DIR] [OUTPUT_DIR] [all|scratch,...] [SEEDS]

Needs `cifar10-mini/` (100 train / 50 test JPEGs per class) and the `cifar10-resnet20/` checkpoint. The target
labels are not CIFAR-10's, so no head row is copied: the new head starts from scratch on every strategy. Train and
test are CSV lists of image paths (the images stay where they are). `graft.compare` runs every strategy on the
same splits, seeds and budget and writes OUTPUT/compare/compare.html; this prints its table.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import graft
from graft.compare import format_table

HERE = Path(__file__).resolve().parent
VEHICLES = {"airplane", "automobile", "ship", "truck"}
STRATEGIES = [  # recipe fragments, each with its own learning rate (SGD with momentum)
    {"label": "scratch", "strategy": {"name": "scratch"}, "optim": {"lr": 0.05}},
    {"label": "head_only", "strategy": {"name": "head_only"}, "optim": {"lr": 0.05}},
    {"label": "head_only-uncached", "strategy": {"name": "head_only", "feature_cache": False}, "optim": {"lr": 0.05}},
    {"label": "full", "strategy": {"name": "full"}, "optim": {"lr": 0.01}},
    {"label": "discriminative", "strategy": {"name": "discriminative"}, "optim": {"lr": 0.01}},
]


def write_list(folder: Path, path: Path) -> Path:
    rows = [(str(image.resolve()), "vehicle" if image.parent.name in VEHICLES else "animal")
            for image in sorted(folder.glob("*/*.jpg"))]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    return path


def main(shared: Path, out: Path, only: list[str] | None = None, seeds: int = 1) -> dict:
    mini = shared / "cifar10-mini"
    out.mkdir(parents=True, exist_ok=True)
    train, test = write_list(mini / "train", out / "train.csv"), write_list(mini / "test", out / "test.csv")
    recipe = {
        "task": "image_classification",
        "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                  "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th")},
        "data": {"train": str(train), "test": str(test), "image_size": 32,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "augment": {"crop_scale": [0.6, 1.0], "hflip": True}},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_ratio": 0.0},
        "eval": {"metric": "accuracy"},
        "train": {"epochs": 10, "batch_size": 64, "seed": 0},
        "output": {"dir": str(out / "compare"), "tensorboard": False},
    }
    strategies = [s for s in STRATEGIES if not only or s["label"].split("-")[0] in only]
    result = graft.compare(recipe, strategies, seeds=seeds)
    print(format_table(result))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/strategies-cifar-transfer"),
         sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] != "all" else None,
         int(sys.argv[4]) if len(sys.argv) > 4 else 1)
