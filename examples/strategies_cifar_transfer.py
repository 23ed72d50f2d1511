"""Does transfer help on a new image task? The CIFAR-10 ResNet-20 moved to "animal or vehicle?", four ways.

    .venv/bin/python examples/strategies_cifar_transfer.py [SHARED_DATA_DIR] [OUTPUT_DIR] [scratch,head_only,...] [SEED]

Needs `cifar10-mini/` (100 train / 50 test JPEGs per class) and the `cifar10-resnet20/` checkpoint. The target
labels are not CIFAR-10's, so no head row is copied: the new head starts from scratch on every strategy. Train and
test are CSV lists of image paths (the images stay where they are). Same data, epochs, batch and seed for every
strategy; each is a normal run directory. Prints a Markdown table.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import graft

HERE = Path(__file__).resolve().parent
VEHICLES = {"airplane", "automobile", "ship", "truck"}
STRATEGIES = {  # name: (strategy section, optim.lr)
    "scratch": ({"name": "scratch"}, 0.05),
    "head_only (cached)": ({"name": "head_only"}, 0.05),
    "head_only (uncached)": ({"name": "head_only", "feature_cache": False}, 0.05),
    "full": ({"name": "full"}, 0.01),
    "discriminative": ({"name": "discriminative"}, 0.01),
}


def write_list(folder: Path, path: Path) -> Path:
    rows = [(str(image.resolve()), "vehicle" if image.parent.name in VEHICLES else "animal")
            for image in sorted(folder.glob("*/*.jpg"))]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    return path


def main(shared: Path, out: Path, only: list[str] | None = None, seed: int = 0) -> None:
    mini = shared / "cifar10-mini"
    out.mkdir(parents=True, exist_ok=True)
    train, test = write_list(mini / "train", out / "train.csv"), write_list(mini / "test", out / "test.csv")
    lines = ["| strategy | lr | test accuracy | macro-F1 | trainable params | backbone pass (cache) | train time | "
             "per epoch |", "|---|---|---|---|---|---|---|---|"]
    for label, (strategy, lr) in STRATEGIES.items():
        if only and label.split(" ")[0] not in only:
            continue
        record = graft.train({
            "task": "image_classification",
            "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                      "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th")},
            "data": {"train": str(train), "test": str(test), "image_size": 32,
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                     "augment": {"crop_scale": [0.6, 1.0], "hflip": True}},
            "strategy": strategy,
            "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_ratio": 0.0},
            "train": {"epochs": 10, "batch_size": 64, "seed": seed},
            "output": {"dir": str(out / (label.split(" ")[0] + ("_uncached" if "uncached" in label else ""))),
                       "tensorboard": False},
        }, overwrite=True)
        m, t = record["metrics"]["test"], record["timings"]
        lines.append(f"| {label} | {lr:g} | {m['accuracy']:.3f} | {m['f1_macro']:.3f} | "
                     f"{record['params']['trainable']:,} | {t['feature_cache_s']:.1f} s | {t['train_s']:.1f} s | "
                     f"{t['train_s_per_epoch']:.2f} s |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/strategies-cifar-transfer"),
         sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] != "all" else None,
         int(sys.argv[4]) if len(sys.argv) > 4 else 0)
