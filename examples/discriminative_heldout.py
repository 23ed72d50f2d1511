"""Discriminative learning rates and gradual unfreezing: how fast, and from when, should the lower layers learn?
The README's numbers, reproduced.

    .venv/bin/python examples/discriminative_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SETS] [SEEDS] [RUNS]

all-MiniLM-L6-v2 (`minilm`, 7 backbone groups) on rt-polarity, the corpus's sentences (positive, then negative;
latin-1, stripped, empty lines left out) shuffled with random.Random(0): set A is rows 0-1,999 to train and
2,000-2,999 to test (what the rule was chosen on), set B rows 3,000-4,999 and 5,000-5,999 (held out). 15% of train
is the validation split; 3 epochs, batch 32, `optim.lr: auto`. Runs `full`, `discriminative` with ULMFiT's fixed
÷2.6 per group (the old default), and with the bottom group at a tenth of the top (÷1.468 per group here, the
default since); `gradual_unfreeze` with one group per epoch (the old default: 2 of 7 groups join in 3 epochs) and
with `unfreeze_every: auto` (the top 3, then all). SETS: A,B; SEEDS: 0,1,2; RUNS: names of RUNS below, comma-
separated (default: all). Prints one JSON line per run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from defaults_heldout import rt_polarity_rows  # beside this script

import graft

RUNS = {"full": {"name": "full"}, "discriminative 2.6": {"name": "discriminative", "lr_decay": 2.6},
        "discriminative auto": {"name": "discriminative"},
        "gradual 1": {"name": "gradual_unfreeze", "unfreeze_every": 1}, "gradual auto": {"name": "gradual_unfreeze"}}


def write(path: Path, rows: list[tuple[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return str(path)


def main(shared: Path, out: Path, sets: list[str], seeds: list[int], runs: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = rt_polarity_rows(shared)
    files = {"A": {"train": write(out / "a.csv", rows[:2000]), "test": write(out / "a_test.csv", rows[2000:3000])},
             "B": {"train": write(out / "b.csv", rows[3000:5000]), "test": write(out / "b_test.csv", rows[5000:6000])}}
    for seed in seeds:
        for name in sets:
            for run in runs:
                strategy = RUNS[run]
                tree = {"model": {"name": "minilm", "max_length": 64},
                        "data": {**files[name], "split": [0.85, 0.15, 0.0]}, "strategy": strategy,
                        "train": {"epochs": 3, "batch_size": 32, "seed": seed},
                        "output": {"dir": str(out / "runs" / f"{name}-{run.replace(' ', '-')}-{seed}"), "trackers": []}}
                record = graft.train(tree, overwrite=True)
                print(json.dumps({"set": name, "run": run, "seed": seed, "lr": record["optim"]["lr"],
                                  "test_accuracy": record["metrics"]["test"]["accuracy"]}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/discriminative-heldout"),
         sys.argv[3].split(",") if len(sys.argv) > 3 else ["A", "B"],
         [int(s) for s in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0, 1, 2],
         sys.argv[5].split(",") if len(sys.argv) > 5 else list(RUNS))
