"""Which strategy transfers best? all-MiniLM-L6-v2 on rt-polarity movie reviews, many ways, one budget.

    .venv/bin/python examples/strategies_rt_polarity.py [SHARED_DATA_DIR] [OUTPUT_DIR] [scratch,head_only,...]

Needs the rt-polarity corpus (`rt-polarity/rt-polarity.pos` / `.neg`); 2,000 training and 1,000 test sentences,
3 epochs, batch 32, seed 0 for every strategy. Each strategy runs in a process of its own, so its peak memory is
its own. Prints a Markdown table; each strategy is a normal run directory.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import graft

STRATEGIES = {  # name: (strategy section, optim.lr)
    "scratch": ({"name": "scratch"}, 1e-4),
    "head_only (cached)": ({"name": "head_only"}, 1e-2),
    "head_only (uncached)": ({"name": "head_only", "feature_cache": False}, 1e-2),
    "full": ({"name": "full"}, 5e-5),
    "discriminative": ({"name": "discriminative"}, 5e-5),
    "lora": ({"name": "lora", "lora": {"r": 8, "alpha": 16}}, 5e-4),
    "ia3": ({"name": "ia3"}, 5e-3),
    "prompt": ({"name": "prompt", "prompt": {"num_virtual_tokens": 20}}, 1e-2),
    "prefix": ({"name": "prefix", "prompt": {"num_virtual_tokens": 20}}, 5e-3),
    "adapter": ({"name": "adapter", "adapter": {"kind": "houlsby", "reduction": 16}}, 1e-3),
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
    write_split(out / "train.csv", rows[:2000])
    write_split(out / "test.csv", rows[2000:3000])
    lines = ["| strategy | lr | test accuracy | macro-F1 | trainable params | backbone pass (cache) | train time | "
             "per epoch | step time | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, (_, lr) in STRATEGIES.items():
        if only and label.split(" ")[0] not in only:
            continue
        done = subprocess.run([sys.executable, __file__, "--one", label, str(out)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1])
        m, t = record["metrics"]["test"], record["timings"]
        lines.append(f"| {label} | {lr:g} | {m['accuracy']:.3f} | {m['f1_macro']:.3f} | "
                     f"{record['params']['trainable']:,} | {t['feature_cache_s']:.1f} s | {t['train_s']:.1f} s | "
                     f"{t['train_s_per_epoch']:.2f} s | {1000 / t['steps_per_s']:.0f} ms | "
                     f"{record['peak_memory_mb']:,.0f} MB |")
        print("\n".join(lines), flush=True)


def run_one(label: str, out: Path) -> None:
    strategy, lr = STRATEGIES[label]
    record = graft.train({
        "model": {"name": "minilm", "max_length": 64},
        "data": {"train": str(out / "train.csv"), "test": str(out / "test.csv")},
        "strategy": strategy,
        "optim": {"lr": lr},
        "train": {"epochs": 3, "batch_size": 32},
        "output": {"dir": str(out / label.replace(" ", "_").replace("(", "").replace(")", "")), "tensorboard": False},
    }, overwrite=True)
    print(json.dumps({k: record[k] for k in ("metrics", "timings", "params", "peak_memory_mb")}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        run_one(sys.argv[2], Path(sys.argv[3]))
        sys.exit(0)
    here = Path(__file__).resolve().parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/strategies-rt-polarity"),
         sys.argv[3].split(",") if len(sys.argv) > 3 else None)
