"""Token classification on real sentences: which words of a movie review were tampered with? all-MiniLM-L6-v2
trained from scratch, head_only and full, side by side.

    .venv/bin/python examples/token_classification_rt.py [SHARED_DATA_DIR] [OUTPUT_DIR] [scratch,head_only,full]

The data is built from rt-polarity's real review sentences (already lower-cased and split into words), shuffled
with random.Random(0) as `defaults_heldout.rt_polarity_rows` does, repeats dropped; sentences 0-1,999 train,
2,000-2,499 validate, 2,500-2,999 test. Each sentence is tampered with by a rule seeded with 0 (see `tamper`):
walking its words, a span starts with probability 0.04 as a SWAP (two adjacent different words exchanged: B-SWAP
I-SWAP) and with probability 0.08 as a REPL (one word, or two with probability 0.3, replaced by a run of words from
another sentence of the split: B-REPL [I-REPL]; a replacement equal to the original is left untagged). About 17% of
words end up tagged, as in ELECTRA's replaced-token detection. Train is written as JSON lines (tokens, tags),
validation and test as CoNLL files. Every run: max_length 64, 3 epochs, batch 32, seed 0. Prints one JSON line per
run and a Markdown table of the test metrics.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from defaults_heldout import rt_polarity_rows  # beside this script

import graft

HERE = Path(__file__).resolve().parent

RUNS = {"scratch": ({"name": "scratch"}, 5e-4), "head_only": ({"name": "head_only"}, 1e-2),
        "full": ({"name": "full"}, 1e-4)}
SWAP, REPL, TWO_WORDS = 0.04, 0.08, 0.3


def tamper(words: list[str], donors: list[list[str]], rng: random.Random) -> tuple[list[str], list[str]]:
    """The sentence with some spans swapped or replaced, and the BIO tags that mark them."""
    out, tags, i = [], [], 0
    while i < len(words):
        draw = rng.random()
        if draw < SWAP and i + 1 < len(words) and words[i] != words[i + 1]:
            out += [words[i + 1], words[i]]
            tags += ["B-SWAP", "I-SWAP"]
            i += 2
        elif draw < SWAP + REPL:
            n = min(2 if rng.random() < TWO_WORDS else 1, len(words) - i)
            donor = rng.choice([d for d in donors if len(d) >= n])
            start = rng.randrange(len(donor) - n + 1)
            new = donor[start:start + n]
            out += new
            tags += ["O"] * n if new == words[i:i + n] else ["B-REPL"] + ["I-REPL"] * (n - 1)
            i += n
        else:
            out.append(words[i])
            tags.append("O")
            i += 1
    return out, tags


def build(shared: Path, out: Path) -> dict[str, str]:
    """The three files: train.jsonl, validation.conll, test.conll (donors for replacements from the same split)."""
    texts = list(dict.fromkeys(text for text, _ in rt_polarity_rows(shared)))  # the corpus repeats a few sentences
    sentences = [text.split() for text in texts[:3000]]
    rng = random.Random(0)
    parts = {"train": sentences[:2000], "validation": sentences[2000:2500], "test": sentences[2500:3000]}
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, part in parts.items():
        others = [s for s in part if s]
        tampered = [tamper(words, others, rng) for words in part]
        if name == "train":
            path = out / "train.jsonl"
            path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in tampered),
                            encoding="utf-8")
        else:
            path = out / f"{name}.conll"
            blocks = ["\n".join(f"{a}\t{b}" for a, b in zip(w, t, strict=True)) for w, t in tampered]
            path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        files[name] = str(path)
    return files


def main(shared: Path, out: Path, only: list[str] | None = None) -> None:
    files = build(shared, out)
    lines = ["| strategy | lr | entity F1 | precision | recall | F1 REPL | F1 SWAP | token accuracy | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in only or list(RUNS):  # in the order asked
        strategy, lr = RUNS[name]
        record = graft.train({
            "task": "token_classification",
            "model": {"name": "minilm", "max_length": 64},
            "data": files,
            "strategy": strategy,
            "optim": {"lr": lr},
            "train": {"epochs": 3, "batch_size": 32, "seed": 0},
            "output": {"dir": str(out / name), "tensorboard": False},
        }, overwrite=True)
        m = record["metrics"]["test"]
        per = m["per_entity"]
        print(json.dumps({"run": name, "lr": lr, **{k: m[k] for k in ("f1", "precision", "recall", "token_accuracy")},
                          "per_entity": per, "train_s": record["timings"]["train_s"]}), flush=True)
        lines.append(f"| {name} | {lr:g} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{per.get('REPL', {}).get('f1', 0):.3f} | {per.get('SWAP', {}).get('f1', 0):.3f} | "
                     f"{m['token_accuracy']:.3f} | {record['timings']['train_s']:.0f} s |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/token-classification-rt"),
         sys.argv[3].split(",") if len(sys.argv) > 3 else None)
