"""Multi-label classification on real sentences: all-MiniLM-L6-v2 from scratch, head_only and full, side by side.

    .venv/bin/python examples/multilabel_rt.py [SHARED_DATA_DIR] [OUTPUT_DIR]

The data is built from the rt-polarity corpus (`rt-polarity/rt-polarity.pos` / `.neg`, real movie-review sentences)
by a seeded rule, so every label is a fact about the text:

- the sentences (latin-1, stripped, empty lines left out) are shuffled with random.Random(0); the first 1,200 make
  the training examples, the next 1,000 the test examples (the punctuation labels are rare: a larger test set
  gives them some support);
- each example is one sentence, or (a coin flip of random.Random(1)) the next two joined by a space;
- its labels: `pos` when a sentence of it is from rt-polarity.pos, `neg` when one is from rt-polarity.neg (a pair
  can have both), `question` when it holds a `?`, `exclaims` when it holds a `!`.

So the polarity labels need the meaning of the sentences, and the punctuation labels are rare (a few percent) but
written in the text. Validation is carved from train (15%); thresholds are tuned on it. max_length 80 (two
sentences rarely pass it), 2 epochs, batch 32, seed 0 (small enough for a shared two-core CPU: about half an hour
for the three runs). Prints a Markdown table of test metrics at the tuned
thresholds, with micro-F1 at 0.5 beside them, and each label's test F1.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import graft

STRATEGIES = {"head_only": 1e-2, "full": 5e-5, "scratch": 1e-4}
LABELS = ("pos", "neg", "question", "exclaims")


def sentences(shared: Path) -> list[tuple[str, str]]:
    rows = [(line.strip(), polarity) for polarity in ("pos", "neg")
            for line in (shared / "rt-polarity" / f"rt-polarity.{polarity}").read_text(encoding="latin-1")
            .splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    return rows


def examples(rows: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """One or two sentences an example, in order, each with the labels its text has."""
    coin, out, i = random.Random(seed), [], 0
    while i < len(rows):
        take = rows[i:i + (2 if coin.random() < 0.5 else 1)]
        i += len(take)
        text = " ".join(sentence for sentence, _ in take)
        labels = {polarity for _, polarity in take}
        labels |= {name for name, mark in (("question", "?"), ("exclaims", "!")) if mark in text}
        out.append((text, ",".join(label for label in LABELS if label in labels)))
    return out


def write(path: Path, rows: list[tuple[str, str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "labels"), *rows])
    return str(path)


def main(shared: Path, out: Path) -> None:
    rows = sentences(shared)
    out.mkdir(parents=True, exist_ok=True)
    train = write(out / "train.csv", examples(rows[:1200], 1))
    test = write(out / "test.csv", examples(rows[1200:2200], 1))
    lines = ["| strategy | micro-F1 | micro-F1 at 0.5 | macro-F1 | subset accuracy | Hamming loss | mAP | ROC-AUC | "
             + " | ".join(f"F1 {name}" for name in LABELS) + " | train time |",
             "|---" * (9 + len(LABELS)) + "|"]
    for name, lr in STRATEGIES.items():
        record = graft.train({
            "task": "multilabel_classification",
            "model": {"name": "minilm", "max_length": 80},
            "data": {"train": train, "test": test, "label_column": "labels"},
            "strategy": {"name": name},
            "optim": {"lr": lr},
            "train": {"epochs": 2, "batch_size": 32, "seed": 0},
            "output": {"dir": str(out / name), "tensorboard": False},
        }, overwrite=True)
        m, half = record["metrics"]["test"], record["thresholds"]["test"]["at_0.5"]
        per = " | ".join(f"{m['per_label'][label]['f1']:.3f}" for label in LABELS)
        lines.append(f"| {name} | {m['f1_micro']:.3f} | {half['f1_micro']:.3f} | {m['f1_macro']:.3f} | "
                     f"{m['subset_accuracy']:.3f} | {m['hamming_loss']:.3f} | {m['average_precision']:.3f} | "
                     f"{m['roc_auc']:.3f} | {per} | {record['timings']['train_s']:.0f} s |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/multilabel-rt"))
