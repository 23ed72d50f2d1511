"""How well does `graft inspect` find wrong labels? A corpus with a share of its training labels flipped.

    .venv/bin/python examples/inspect_noise_heldout.py [SHARED_DATA_DIR] [OUTPUT_DIR] [ROWS] [detect|train|ceiling]
                                                       [rt-polarity|intents] [SEEDS]

rt-polarity (the default): its first ROWS sentences (shuffled with seed 0, as the other held-out scripts cut them;
default 10,000), where frozen MiniLM features separate the classes poorly (a probe is ~75% right); intents: graft's
demo data (480 support messages, 6 classes), where they separate them well (~94%). The rows are split 5:1 into
train and test; 10% and then 20% of the train labels are flipped to another class (seeded, SEEDS draws, default 1).
`detect` runs graft inspect with the packaged MiniLM on each noisy train file and prints, against the known flips:
the recall and precision of the rows confident learning flags, precision and recall at k = the number flipped (the
top k of the ranking by self-confidence), and points of the precision-recall curve along the ranking. `train`
(slow) also trains `head_only` and `full` on the noisy file, on `graft inspect --fix`'s cleaned copy, and on the
clean labels, and prints their test accuracy: does cleaning pay? `ceiling` asks what these features could find at
best: the same probe fitted (out of fold) on the CLEAN labels ranks the noisy ones by the probability it gives them,
so no noise is learned; its precision at k bounds what any probe on these features reaches.
"""

from __future__ import annotations

import csv
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from defaults_heldout import rt_polarity_rows, write  # beside this script

import graft

HERE = Path(__file__).resolve().parent
RATES = (0.1, 0.2)
TRAINED = ("head_only", "full")
"""What `train` trains on the noisy, the cleaned and the clean file."""
MODEL = {"name": "minilm", "max_length": 64}
CURVE_AT = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Points of the precision-recall curve: the top k of the ranking for k = these multiples of the number flipped."""


def flipped(rows: list[tuple[str, str]], rate: float, seed: int = 0) -> tuple[list[tuple[str, str]], set[int]]:
    """`rows` with a `rate` share of labels moved to another class, drawn at random; the 1-based rows that were."""
    rng = random.Random(seed)
    picked = set(rng.sample(range(len(rows)), round(rate * len(rows))))
    classes = sorted({label for _, label in rows})
    return [(text, rng.choice([c for c in classes if c != label]) if i in picked else label)
            for i, (text, label) in enumerate(rows)], {i + 1 for i in picked}


def intents_rows() -> list[tuple[str, str]]:
    """graft's demo data, shuffled with random.Random(0)."""
    with (HERE.parent / "src" / "graft" / "demo" / "intents.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    random.Random(0).shuffle(rows)
    return rows


def detection(report: dict, flips: set[int]) -> dict:
    """Recall and precision of the flagged rows, at k = len(flips), and along the ranking."""
    flagged = {r["row"] for r in report["label_issues"] if r["split"] == "train"}
    scores = report["label_scores"]["train"]
    ranking = [row for _, row in sorted(zip(scores["scores"], scores["rows"], strict=True), key=lambda p: -p[0])]
    k = len(flips)

    def at(n: int) -> dict:
        hits = len(set(ranking[:n]) & flips)
        return {"k": n, "precision": round(hits / n, 3), "recall": round(hits / k, 3)}

    hits = len(flagged & flips)
    return {"flipped": k, "flagged": len(flagged), "flagged_precision": round(hits / max(1, len(flagged)), 3),
            "flagged_recall": round(hits / k, 3), "at_k": at(k), "curve": [at(round(m * k)) for m in CURVE_AT],
            "probe": report["probe"]}


def recipe(train: str, test: str, out: Path, name: str, strategy: str = "head_only") -> dict:
    return {"model": MODEL, "data": {"train": train, "test": test, "split": [0.85, 0.15, 0.0]},
            "strategy": {"name": strategy}, "train": {"epochs": 3, "batch_size": 32},
            "output": {"dir": str(out / "runs" / name), "tensorboard": False}}


def main(shared: Path, out: Path, rows: int = 10_000, parts: str = "detect", corpus_name: str = "rt-polarity",
         seeds: int = 1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    corpus = (intents_rows() if corpus_name == "intents" else rt_polarity_rows(shared))[:rows]
    cut = len(corpus) * 5 // 6
    train, test = corpus[:cut], corpus[cut:]
    clean = write(out / "train_clean.csv", ("text", "label"), train)
    test_file = write(out / "test.csv", ("text", "label"), test)
    results = []
    for rate, seed in ((rate, seed) for rate in RATES for seed in range(seeds)):
        noisy, flips = flipped(train, rate, seed)
        name = f"noise{round(rate * 100)}-seed{seed}"
        noisy_file = write(out / f"train_{name}.csv", ("text", "label"), noisy)
        started = time.perf_counter()
        fixed = out / f"fixed_{name}"
        report = graft.inspect(recipe(noisy_file, test_file, out, name), output=out / f"inspect_{name}",
                               fix=fixed if "train" in parts and not fixed.exists() else None)
        result = {"rate": rate, "seed": seed, "rows": len(train), "seconds": round(time.perf_counter() - started, 1),
                  **detection(report, flips)}
        print(json.dumps(result), flush=True)
        if "ceiling" in parts:
            result["ceiling_at_k"] = ceiling(recipe(noisy_file, test_file, out, name), train, noisy, flips)
            print(json.dumps({"rate": rate, "seed": seed, "ceiling_at_k": result["ceiling_at_k"]}), flush=True)
        if "train" in parts:
            result["accuracy"] = {}
            for strategy in TRAINED:
                for what, file in (("noisy", noisy_file), ("fixed", str(fixed / "train.csv")), ("clean", clean)):
                    run = graft.train(recipe(file, test_file, out, f"{name}-{strategy}-{what}", strategy),
                                      overwrite=True)
                    result["accuracy"][f"{strategy} {what}"] = run["metrics"]["test"]["accuracy"]
            print(json.dumps({"rate": rate, "accuracy": result["accuracy"]}), flush=True)
        results.append(result)
    for rate in RATES:
        print(summary(corpus_name, rate, [r for r in results if r["rate"] == rate]))
    return results


def ceiling(noisy_recipe: dict, clean: list[tuple[str, str]], noisy: list[tuple[str, str]], flips: set[int]) -> float:
    """Precision at k = #flipped of the noisy labels ranked by a probe fitted out of fold on the clean ones: the
    ranking's bound on these features (see the module's docstring)."""
    import numpy as np

    from graft.doctor.examples import read_examples
    from graft.doctor.features import frozen_features
    from graft.doctor.labels import probe_probabilities
    from graft.recipe import load_recipe

    examples = read_examples(load_recipe(noisy_recipe))
    features, _ = frozen_features(load_recipe(noisy_recipe), examples)
    ids = {c: i for i, c in enumerate(examples.classes)}
    truth = np.array([ids[label] for _, label in clean])
    given = np.array([ids[label] for _, label in noisy])
    probs = probe_probabilities({"train": features[:len(clean)]}, {"train": truth}, len(ids)).probs["train"]
    ranking = np.argsort(probs[np.arange(len(given)), given], kind="stable")[:len(flips)] + 1
    return round(len(set(ranking.tolist()) & flips) / len(flips), 3)


def summary(corpus_name: str, rate: float, results: list[dict]) -> str:
    """One line: the means over seeds."""
    def mean(get: Callable[[dict], float]) -> float:
        return statistics.fmean(get(r) for r in results)

    return (f"{corpus_name}, {rate:.0%} flipped ({results[0]['flipped']} of {results[0]['rows']}), mean of "
            f"{len(results)} seed(s): flagged {mean(lambda r: r['flagged']):.0f} at precision "
            f"{mean(lambda r: r['flagged_precision']):.3f}, recall {mean(lambda r: r['flagged_recall']):.3f}; at k = "
            f"flipped: precision {mean(lambda r: r['at_k']['precision']):.3f}; probe agreement "
            f"{mean(lambda r: r['probe']['agreement']['train']):.3f}"
            + (f"; ceiling at k {mean(lambda r: r['ceiling_at_k']):.3f}" if "ceiling_at_k" in results[0] else "")
            + f"; inspect took "
            f"{mean(lambda r: r['seconds']):.0f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/inspect-noise-heldout"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 10_000,
         sys.argv[4] if len(sys.argv) > 4 else "detect",
         sys.argv[5] if len(sys.argv) > 5 else "rt-polarity",
         int(sys.argv[6]) if len(sys.argv) > 6 else 1)
