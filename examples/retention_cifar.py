"""What does fine-tuning cost the old task, and what keeps it? The CIFAR-10 ResNet-20 moved to "animal or vehicle?",
its 10-way CIFAR-10 skill measured and guarded all along.

    .venv/bin/python examples/retention_cifar.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS] [all|full,full+distill,...]

Needs `cifar10-mini/` (100 train / 50 test JPEGs per class) and the `cifar10-resnet20/` checkpoint.

The new task: the cifar10-mini train images labelled animal or vehicle (CSV lists of image paths, carved 70/15/15),
at SGD's learning rate 0.1, the one CIFAR ResNets are trained with and so the one a naive fine-tune reuses. Every
strategy learns it to ~0.95, so the strategies' retention is compared at equal new-task accuracy. (A harder task,
"which way is up?" from seeded quarter turns, was tried first: 5 epochs on 700 images taught it to ~0.45, too little
and too noisy to compare anything at.)

The source data: the cifar10-mini test images with their 10 CIFAR-10 labels (500, none of them in the new task's
splits), scored by the pretrained head kept beside the new one (`retention.data`). `graft.compare` runs every
strategy on the same splits, seeds and budget and writes OUTPUT/compare/compare.html; this prints new-task accuracy
and retention side by side.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from strategies_cifar_transfer import write_list  # beside this script

import graft
from graft.compare import format_table

HERE = Path(__file__).resolve().parent
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STRATEGIES = [
    {"label": "full", "strategy": {"name": "full"}},
    # The head at the base LR (two_phase's default 10x would put it at 1.0), the body joining after one epoch.
    {"label": "two_phase", "strategy": {"name": "two_phase", "head_lr_mult": 1}},
    {"label": "lora", "strategy": {"name": "lora"}},
    *({"label": f"full+{guard}", "strategy": {"name": "full"}, "retention": {"guard": guard}}
      for guard in ("distill", "replay", "l2sp", "ewc")),
    {"label": "full+freeze_bn", "strategy": {"name": "full"}, "retention": {"freeze_bn": True}},
]


def main(shared: Path, out: Path, seeds: int = 3, only: list[str] | None = None, epochs: int = 5) -> dict:
    mini = shared / "cifar10-mini"
    out.mkdir(parents=True, exist_ok=True)
    recipe = {
        "task": "image_classification",
        "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                  "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th"),
                  "source_labels": CIFAR10, "head": {"path": "linear"}},
        "data": {"train": str(write_list(mini / "train", out / "train.csv")), "image_size": 32,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_ratio": 0.0},
        "eval": {"metric": "accuracy"},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 0},
        "retention": {"data": str(mini / "test"), "ewc": {"examples": 200}},
        "output": {"dir": str(out / "compare"), "trackers": []},
    }
    result = graft.compare(recipe, [s for s in STRATEGIES if not only or s["label"] in only], seeds=seeds)
    print(format_table(result))
    for row in result["strategies"]:
        ratios = [r["metrics"]["retention"]["ratio"] for r in result["records"][row["label"]]]
        spread = f" ± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""
        print(f"{row['label']:<16} new task: test accuracy {row['accuracy']:.3f} ± {row['accuracy_std']:.3f}   "
              f"source task: retention {row['retention']:.3f}{spread}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/retention-cifar"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] != "all" else None)
