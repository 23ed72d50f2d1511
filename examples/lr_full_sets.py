"""Is the measured LR (`optim.lr: auto`) a good one for a full fine-tune of MiniLM? The README's three-set table.

    .venv/bin/python examples/lr_full_sets.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS] [SETS] [LRS]

`full` at the range test's pick against fixed LRs (default: auto and 5e-5) on three disjoint sets of rt-polarity
sentences (the corpus shuffled with seed 0, as examples/defaults_heldout.py cuts it): A = rows 0-2,999 (what the
range test's rule was chosen on), B = 3,000-5,999, C = 6,000-8,999 (touched by nothing else). Each: 2,000 train
(15% carved off for validation), 1,000 test, 3 epochs, batch 32, max_length 64. One JSON line per run, then a table.
About a minute a run on 2 cores with native bf16.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

from defaults_heldout import rt_polarity_rows, run, write

HERE = Path(__file__).resolve().parent
CUTS = {"A": 0, "B": 3000, "C": 6000}


def main(shared: Path, out: Path, seeds: int = 3, sets: tuple[str, ...] = ("A", "B", "C"),
         lrs: tuple[str, ...] = ("auto", "5e-5")) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = rt_polarity_rows(shared)
    results = []
    for name in sets:
        start = CUTS[name]
        data = {"train": write(out / f"rt_{name}.csv", ("text", "label"), rows[start:start + 2000]),
                "test": write(out / f"rt_{name}_test.csv", ("text", "label"), rows[start + 2000:start + 3000]),
                "split": [0.85, 0.15, 0.0]}
        for seed in range(seeds):
            for lr in lrs:
                folder = out / "runs" / f"{name}-{lr}-{seed}"
                tree = {"model": {"name": "minilm", "max_length": 64}, "data": data, "strategy": {"name": "full"},
                        "optim": {} if lr == "auto" else {"lr": float(lr)},
                        "train": {"epochs": 3, "batch_size": 32, "seed": seed},
                        "output": {"dir": str(folder), "tensorboard": False}}
                results.append({**run(tree, f"set {name} lr {lr}", seed), "set": name, "asked": lr})
                shutil.rmtree(folder, ignore_errors=True)  # 0.4 GB a run; the numbers are what is kept
    for name in sets:
        for lr in lrs:
            got = [r for r in results if r["set"] == name and r["asked"] == lr]
            accuracies = " / ".join(f"{r['test_accuracy']:.3f}" for r in got)
            picked = " / ".join(f"{r['lr']:.2g}" for r in got) if lr == "auto" else lr
            mean = statistics.fmean(r["test_accuracy"] for r in got)
            print(f"set {name}  lr {picked:<24} {accuracies}  mean {mean:.3f}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/lr-full-sets"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ("A", "B", "C"),
         tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else ("auto", "5e-5"))
