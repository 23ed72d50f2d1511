"""Does graft advise answer before training what compare answers after? The README's advise numbers, reproduced.

    .venv/bin/python examples/advise_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [text,animals,vehicles]

Text: all-MiniLM-L6-v2 on the rt-polarity sentences no other example uses (rows 6,000 onwards of the corpus shuffled
with seed 0: 4,662 sentences; sets A and B, rows 0-5,999, are what graft's defaults and these rules were set on),
the recipe's defaults otherwise. Images: the CIFAR-10 ResNet-20 on cifar10-mini, "animal or vehicle?" and the four
vehicle classes. For each: the recommendation, the runner-up, the time, and Kendall's tau between LogME and the
probe's validation accuracy over every feature source that has both (each layer group and pooling of the pretrained
model, and the random initialisation's head sources). Prints one JSON line per dataset.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from defaults_heldout import rt_polarity_rows, vehicles, write
from scipy.stats import kendalltau
from strategies_cifar_transfer import write_list

import graft

HERE = Path(__file__).resolve().parent


def tau(result: dict) -> tuple[float, int]:
    """Kendall's tau between LogME and probe accuracy over the sources that have both."""
    pairs = [(r["logme"], r["probe"]) for r in result["sources"]]
    pairs += [(r["random"]["logme"], r["random"]["probe"]) for r in result["sources"]
              if r["random"] and r["random"]["probe"] is not None]
    return float(kendalltau(*zip(*pairs, strict=True)).statistic), len(pairs)


def summary(name: str, result: dict) -> dict:
    rec, s = result["recommendation"], result.get("similarity", {})
    correlation, n = tau(result)
    line = {"data": name, "strategy": rec["strategy"], "runner_up": rec["runner_up"]["strategy"],
            "quadrant": rec["quadrant"], "probe": s.get("probe"), "random_probe": s.get("random_probe"),
            "best_source": s.get("best_source"), "kendall_tau": round(correlation, 3), "sources": n,
            "sample": result["sample"], "timings": result["timings"]}
    print(json.dumps(line), flush=True)
    return line


def main(shared: Path, out: Path, parts: tuple[str, ...] = ("text", "animals", "vehicles")) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if "text" in parts:
        rows = rt_polarity_rows(shared)[6000:]
        tree = {"model": {"name": "minilm"}, "data": {"train": write(out / "rt_heldout.csv", ("text", "label"), rows)},
                "output": {"dir": str(out / "runs" / "rt-heldout")}}
        lines.append(summary(f"rt-polarity, {len(rows):,} sentences", graft.advise(tree)))
    images = {"task": "image_classification",
              "model": {"name": f"{HERE / 'cifar_resnet.py'}:resnet20",
                        "checkpoint": str(shared / "cifar10-resnet20" / "resnet20-12fca82f.th")},
              "data": {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "split": [0.85, 0.15, 0.0]}}
    if "animals" in parts:
        mini = shared / "cifar10-mini"
        data = {"train": str(write_list(mini / "train", out / "animals_train.csv")),
                "test": str(write_list(mini / "test", out / "animals_test.csv"))}
        tree = {**images, "data": {**images["data"], **data}, "output": {"dir": str(out / "runs" / "animals")}}
        lines.append(summary("cifar10-mini, animal or vehicle", graft.advise(tree)))
    if "vehicles" in parts:
        tree = {**images, "data": {**images["data"], **vehicles(shared, out)},
                "output": {"dir": str(out / "runs" / "vehicles")}}
        lines.append(summary("cifar10-mini, four vehicles", graft.advise(tree)))
    return lines


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/advise-heldout"),
         tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("text", "animals", "vehicles"))
