"""Shared fixtures: a tiny random BERT with its own vocabulary, and seeded synthetic text data.

Nothing here touches the network: models are built from configs, data is generated.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Each class is marked by its own keywords among shared filler words: learnable in a few dozen steps.
KEYWORDS = {
    "billing": ["invoice", "charge", "refund", "price", "card"],
    "delivery": ["parcel", "courier", "tracking", "shipped", "arrive"],
    "login": ["password", "account", "locked", "reset", "email"],
}
FILLER = ["my", "the", "is", "not", "please", "help", "today", "again", "why", "still", "a", "with", "on", "for",
          "this", "was", "order", "need", "can", "you", "very", "late", "it", "we", "they", "and", "or", "so"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_texts(n: int, seed: int, labels: tuple[str, ...] = tuple(KEYWORDS)) -> list[tuple[str, str]]:
    """`n` (text, label) pairs, balanced over `labels`, lengths from 3 to 20 words, all texts distinct."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = labels[len(rows) % len(labels)]
        words = rng.choices(FILLER, k=rng.randint(2, 18)) + rng.sample(KEYWORDS[label], k=rng.randint(1, 2))
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def error_of(call, *args, **kwargs) -> str:
    """Call, expect a GraftError, check its message is one line, return it."""
    from graft.errors import GraftError

    with pytest.raises(GraftError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def build_tiny_bert(path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-wide BERT encoder (no classification head) with a WordPiece vocabulary of our words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + sorted({w for ws in KEYWORDS.values() for w in ws} | set(FILLER))
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", make_texts(120, seed=1))


def tiny_recipe(model_dir: Path, train_file: Path, run_dir: Path, **sections: dict) -> dict:
    """A recipe tree that trains the tiny BERT in seconds; `sections` merge over the defaults."""
    tree = {
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {"train": str(train_file)},
        "optim": {"lr": 3e-3},
        "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 3, "batch_size": 8, "log_every": 2},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree
