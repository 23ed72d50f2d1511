"""Which strategy transfers best? all-MiniLM-L6-v2 on rt-polarity movie reviews, five ways, one budget.

    .venv/bin/python examples/strategies_rt_polarity.py [SHARED_DATA_DIR] [OUTPUT_DIR] [scratch,head_only,...]

Needs the rt-polarity corpus (`rt-polarity/rt-polarity.pos` / `.neg`); 2,000 training and 1,000 test sentences,
3 epochs, batch 32, seed 0 for every strategy. Prints a Markdown table; each strategy is a normal run directory.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import graft

STRATEGIES = {  # name: (strategy section, optim.lr)
    "scratch": ({"name": "scratch"}, 1e-4),
    "head_only (cached)": ({"name": "head_only"}, 1e-2),
    "head_only (uncached)": ({"name": "head_only", "feature_cache": False}, 1e-2),
    "full": ({"name": "full"}, 5e-5),
    "discriminative": ({"name": "discriminative"}, 5e-5),
}


def write_split(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def main(shared: Path, out: Path, only: list[str] | None = None) -> None:
    corpus = shared / "rt-polarity"
    rows = [(line.strip(), label) for label in ("pos", "neg")
            for line in (corpus / f"rt-polarity.{label}").read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]
    rows = list(dict.fromkeys(rows))
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    train, test = write_split(out / "train.csv", rows[:2000]), write_split(out / "test.csv", rows[2000:3000])
    lines = ["| strategy | lr | test accuracy | macro-F1 | trainable params | backbone pass (cache) | train time | "
             "per epoch |", "|---|---|---|---|---|---|---|---|"]
    for label, (strategy, lr) in STRATEGIES.items():
        if only and label.split(" ")[0] not in only:
            continue
        record = graft.train({
            "model": {"name": "minilm", "max_length": 64},
            "data": {"train": str(train), "test": str(test)},
            "strategy": strategy,
            "optim": {"lr": lr},
            "train": {"epochs": 3, "batch_size": 32},
            "output": {"dir": str(out / label.replace(" ", "_").strip("()").replace("(", "").replace(")", "")),
                       "tensorboard": False},
        }, overwrite=True)
        m, t = record["metrics"]["test"], record["timings"]
        lines.append(f"| {label} | {lr:g} | {m['accuracy']:.3f} | {m['f1_macro']:.3f} | "
                     f"{record['params']['trainable']:,} | {t['feature_cache_s']:.1f} s | {t['train_s']:.1f} s | "
                     f"{t['train_s_per_epoch']:.2f} s |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/strategies-rt-polarity"),
         sys.argv[3].split(",") if len(sys.argv) > 3 else None)
