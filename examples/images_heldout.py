"""Image defaults on classes they were not chosen on: the README's vehicles / animals table, reproduced.

    .venv/bin/python examples/images_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS] [vehicles,animals] [RUNS]

The CIFAR-10 ResNet-20 on cifar10-mini's four vehicle classes (what image defaults were chosen on) and its six
animal classes (held out): `full` with nothing but data and model in the recipe, 5 epochs, 15% of train carved
for validation, against the same with one augmentation default changed. RUNS: names of RUNS below, comma-separated
(default: all). Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from defaults_heldout import VEHICLES, write  # beside this script

import graft

HERE = Path(__file__).resolve().parent
RUNS = {"defaults": {}, "flips only": {"translate": 0}, "crops [0.35, 1]": {"crop_scale": [0.35, 1.0], "translate": 0}}


def class_lists(shared: Path, out: Path, part: str) -> dict[str, str]:
    def listed(split: str) -> str:
        rows = [(str(p), p.parent.name) for p in sorted((shared / "cifar10-mini" / split).glob("*/*.jpg"))
                if (p.parent.name in VEHICLES) == (part == "vehicles")]
        return write(out / f"{part}_{split}.csv", ("image", "label"), rows)

    return {"train": listed("train"), "test": listed("test")}


def main(shared: Path, out: Path, seeds: int, parts: list[str], runs: list[str]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for part in parts:
        lists = class_lists(shared, out, part)
        for seed in range(seeds):
            for name in runs:
                tree = {"task": "image_classification",
                        "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                                  "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th")},
                        "data": {**lists, "split": [0.85, 0.15, 0.0], "image_size": 32,
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "augment": RUNS[name]},
                        "train": {"epochs": 5, "seed": seed},
                        "output": {"dir": str(out / "runs" / f"{part}-{name.replace(' ', '-')}-{seed}"),
                                   "trackers": []}}
                record = graft.train(tree, overwrite=True)
                results.append({"part": part, "run": name, "seed": seed, "lr": record["optim"]["lr"],
                                "test_accuracy": record["metrics"]["test"]["accuracy"]})
                print(json.dumps(results[-1]), flush=True)
    for key in dict.fromkeys((r["part"], r["run"]) for r in results):
        accuracies = [r["test_accuracy"] for r in results if (r["part"], r["run"]) == key]
        print(f"{' '.join(key):<32} {' / '.join(f'{a:.3f}' for a in accuracies)}  "
              f"mean {statistics.fmean(accuracies):.3f}")
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/images-heldout"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         sys.argv[4].split(",") if len(sys.argv) > 4 else ["vehicles", "animals"],
         sys.argv[5].split(",") if len(sys.argv) > 5 else list(RUNS))
