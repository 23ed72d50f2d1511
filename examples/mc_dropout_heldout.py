"""Is MC dropout's calibration no worse than the deterministic model's? On the runs examples/calibration_heldout.py
trained (MiniLM `full` on rt-polarity set B), their 1,000 test sentences:

    .venv/bin/python examples/mc_dropout_heldout.py [OUTPUT_DIR of calibration_heldout.py] [PASSES]

Prints, per run, test accuracy and ECE (15 bins) of the deterministic model and of the mean of PASSES dropout passes,
each raw and scaled by the run's fitted temperature.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

import graft
from graft.evaluation.calibration import expected_calibration_error


def scores(rows: list[dict], labels: list[str], truth: list[str]) -> dict[str, float]:
    probs = np.array([[r["probabilities"][n] for n in labels] for r in rows])
    ids = np.array([labels.index(t) for t in truth])
    return {"accuracy": float((probs.argmax(1) == ids).mean()), "ece": expected_calibration_error(probs, ids)}


def main(out: Path, passes: int) -> None:
    with (out / "rt_b_test.csv").open(newline="", encoding="utf-8") as f:
        truth = [row["label"] for row in csv.DictReader(f)]
    for run in sorted((out / "runs").iterdir()):
        labels = graft.Predictor(run).labels
        result = {"run": run.name, "passes": passes}
        for raw in (True, False):
            scaled = "raw" if raw else "scaled"
            one = graft.predict(run, out / "rt_b_test.csv", raw=raw)
            mc = graft.predict(run, out / "rt_b_test.csv", raw=raw, mc_dropout=passes)
            result[f"deterministic_{scaled}"] = scores(one, labels, truth)
            result[f"mc_{scaled}"] = scores(mc, labels, truth)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/calibration-heldout"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 10)
