"""Does temperature scaling calibrate a fine-tune on data graft has not seen? The README's calibration numbers.

    .venv/bin/python examples/calibration_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS]

all-MiniLM-L6-v2 (`minilm`, the packaged model), `full` fine-tune on rt-polarity "set B": the corpus's sentences
(positive, then negative; latin-1, stripped, empty lines left out) shuffled with random.Random(0), rows 3,000-4,999
to train (15% of them carved off as the validation split the temperature is fitted on) and rows 5,000-5,999 to test.
3 epochs, batch 32, seeds 0..SEEDS-1. Prints one JSON line per run (test accuracy, the temperature, test ECE / NLL /
Brier before and after scaling, the surest half's accuracy, the suggested threshold) and a summary; the target of
issue 16 is test ECE after scaling at most half of before.

Beside each ECE it prints the ECE a perfectly calibrated model with the same confidences would show on this many
test examples (labels drawn right with probability = confidence, 500 draws): the estimator's own floor. A run
directory that already holds a completed run is read, not trained again (give a fresh OUTPUT_DIR to retrain).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from defaults_heldout import text_set_b  # beside this script: the same set B files

import graft
from graft.evaluation.calibration import binned, ece_of_bins

HERE = Path(__file__).resolve().parent




def ece_floor(confidence: np.ndarray, draws: int = 500, seed: int = 0) -> float:
    """The mean ECE of a perfectly calibrated model with these confidences: each example right with probability equal
    to its confidence. An ECE near this is as low as this many examples can show."""
    rng = np.random.default_rng(seed)
    return float(np.mean([ece_of_bins(binned(confidence, rng.random(len(confidence)) < confidence))
                          for _ in range(draws)]))


def run(data: dict[str, str], out: Path, seed: int) -> dict:
    run_dir = out / "runs" / f"full-{seed}"
    tree = {"model": {"name": "minilm", "max_length": 64}, "data": {**data, "split": [0.85, 0.15, 0.0]},
            "strategy": {"name": "full"}, "train": {"epochs": 3, "batch_size": 32, "seed": seed},
            "output": {"dir": str(run_dir), "tensorboard": False}}
    done = run_dir / "run.json"
    if done.is_file() and json.loads(done.read_text()).get("status") == "completed":
        record = json.loads(done.read_text())
    else:
        record = graft.train(tree, overwrite=True)
    c = record["calibration"]
    floors = {when: ece_floor(np.array([r["score"] for r in graft.predict(run_dir, data["test"], raw=raw)]))
              for when, raw in (("before", True), ("after", False))}
    result = {"seed": seed, "test_accuracy": record["metrics"]["test"]["accuracy"], "temperature": c["temperature"],
              "validation_n": c["fitted_on"]["n"], "test_n": record["metrics"]["test"]["n"],
              **{f"{m}_{when}": c[when][m] for m in ("ece", "nll", "brier") for when in ("before", "after")},
              "top_half_accuracy": c["top_half"]["accuracy"], "top_half_margin": c["top_half"]["margin"],
              "threshold": c["threshold"]["value"], "threshold_test": c["threshold"]["test"], "note": c["note"],
              "ece_floor_before": floors["before"], "ece_floor_after": floors["after"]}
    print(json.dumps(result), flush=True)
    return result


def main(shared: Path, out: Path, seeds: int = 1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    data = text_set_b(shared, out)
    results = [run(data, out, seed) for seed in range(seeds)]
    for r in results:
        ratio = r["ece_after"] / r["ece_before"]
        print(f"seed {r['seed']}: accuracy {r['test_accuracy']:.3f}  T {r['temperature']:.3f}  test ECE "
              f"{r['ece_before']:.4f} -> {r['ece_after']:.4f} ({ratio:.2f}x; target <= 0.50x: "
              f"{'met' if ratio <= 0.5 else 'NOT met'}; a calibrated model would show {r['ece_floor_before']:.4f} / "
              f"{r['ece_floor_after']:.4f})  NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}  "
              f"Brier {r['brier_before']:.4f} -> {r['brier_after']:.4f}  surest half {r['top_half_accuracy']:.3f} "
              f"(+{r['top_half_margin']:.3f})")
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/calibration-heldout"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 1)
