"""The real path: the packaged all-MiniLM-L6-v2 fine-tuned on real movie reviews (rt-polarity).

Uses ../shared/data (CI has it, users do not): skipped only when the folder is absent. Slow (minutes on 2 cores).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import graft
from tests.conftest import SHARED_DATA, write_csv

RT = SHARED_DATA / "rt-polarity"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not RT.is_dir(), reason=f"{RT} is absent (shared data only)")]


def rt_polarity(n_train: int, n_test: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rows = [(line.strip(), label) for label in ("pos", "neg")
            for line in (RT / f"rt-polarity.{label}").read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]
    rows = list(dict.fromkeys(rows))  # the corpus repeats a few sentences
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_test]


def test_minilm_learns_movie_review_sentiment(tmp_path: Path) -> None:
    train, test = rt_polarity(2000, 1000, seed=0)
    recipe = {
        "model": {"name": "minilm", "max_length": 64},
        "data": {"train": str(write_csv(tmp_path / "train.csv", train)),
                 "test": str(write_csv(tmp_path / "test.csv", test))},
        "optim": {"lr": 5.0e-5},
        "train": {"epochs": 3, "batch_size": 32},
        "output": {"dir": str(tmp_path / "run")},
    }
    record = graft.train(recipe)
    test_metrics = record["metrics"]["test"]
    print(f"rt-polarity: test accuracy {test_metrics['accuracy']:.4f}, f1_macro {test_metrics['f1_macro']:.4f}, "
          f"train {record['timings']['train_s']:.0f}s, total {record['timings']['total_s']:.0f}s")
    assert test_metrics["n"] == 1000
    # Measured 0.791 (seed 0, 2 cores, 113 s of training); 0.77 leaves room for float differences between CPUs
    # while still failing a run that learned little (chance is 0.5).
    assert test_metrics["accuracy"] >= 0.77
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "model")("a fine film")["input_ids"]
