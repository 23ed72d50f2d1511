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


def pytest_report_header(config: pytest.Config) -> str:
    """The free disk where tests write, first in the log: a full disk fails fixtures everywhere at once."""
    import shutil
    import tempfile

    where = Path(config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    return f"disk: {shutil.disk_usage(where).free / 2**30:.1f} GiB free under {where} (the suite needs about 2 GiB)"

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


def make_label_sets(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` distinct (text, label set) pairs for multi-label classification: each class of KEYWORDS is a label, its
    keywords in the text at 40% (so some texts have none, some two or three); the set joined by commas."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        labels = [label for label in KEYWORDS if rng.random() < 0.4]
        words = rng.choices(FILLER, k=rng.randint(2, 8))
        words += [word for label in labels for word in rng.sample(KEYWORDS[label], 2)]
        rng.shuffle(words)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            rows.append((text, ",".join(labels)))
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
        # fp32 pinned: these tests compare runs bit for bit, and bf16 (auto on some CPUs) rounds differently
        "train": {"epochs": 3, "batch_size": 8, "log_every": 2, "precision": "fp32"},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def trained_text_run(model_dir: Path, root: Path, **sections: dict) -> Path:
    """`root`/run: the tiny BERT trained for 2 epochs on 90 texts (`sections` merge over the recipe)."""
    import graft

    train = write_csv(root / "train.csv", make_texts(90, seed=1))
    record = graft.train(tiny_recipe(model_dir, train, root / "run", **{"train": {"epochs": 2}, **sections}))
    assert record["status"] == "completed"
    return root / "run"


# Images: each class is a dominant colour under seeded noise, learnable by a tiny CNN in a few steps.
COLOURS = {"blue": (40, 60, 200), "green": (50, 190, 60), "red": (200, 50, 40)}
IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
PLAIN_NETS = Path(__file__).resolve().parent / "plain_nets.py"


def make_images(root: Path, per_class: int, seed: int, size: int = 16) -> Path:
    """`root/<colour>/<i>.png` for each class in COLOURS."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 60, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def build_tiny_resnet(path: Path, seed: int = 0, labels: tuple[str, ...] | None = None) -> Path:
    """A 2-stage, 8/16-channel HF ResNet classifier; with `labels`, its head names those classes."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    extra = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=len(labels) if labels else 2, **extra)
    torch.manual_seed(seed)
    ResNetForImageClassification(config).save_pretrained(path)
    return path


def save_plain_checkpoint(path: Path, seed: int = 0) -> Path:
    """A SmallCNN checkpoint as multi-GPU training leaves one: nested under state_dict, keys prefixed `module.`."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("plain_nets_for_checkpoint", PLAIN_NETS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    net = module.small_cnn(num_classes=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so "unchanged" means something
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "best_prec1": 50.0}, path)
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images") / "train", per_class=14, seed=3)


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_plain_checkpoint(tmp_path_factory.mktemp("plain") / "cnn.pt")


def image_recipe(model: dict, train_dir: Path, run_dir: Path, **sections: dict) -> dict:
    """A recipe tree for a tiny image model on the colour images; `sections` merge over the defaults."""
    tree = {
        "task": "image_classification",
        "model": model,
        "data": {"train": str(train_dir), "image_size": 16, "mean": IMAGE_MEAN, "std": IMAGE_STD},
        "optim": {"lr": 1e-2},
        "train": {"epochs": 3, "batch_size": 8, "log_every": 2, "precision": "fp32"},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def trained_image_run(image_folder: Path, checkpoint: Path, root: Path, epochs: int) -> Path:
    """`root`/run: the plain small CNN fine-tuned on the colour folders for `epochs` epochs."""
    import graft

    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(checkpoint)}
    record = graft.train(image_recipe(model, image_folder, root / "run", train={"epochs": epochs}))
    assert record["status"] == "completed"
    return root / "run"


# Tagged sentences: the keywords are entities of their class's type among filler words (token classification).
def make_tagged(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """`n` (words, BIO tags) sentences of 3 to 12 parts, a part a filler word or a one- or two-word entity."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 12)):
            if rng.random() < 0.25:
                kind = rng.choice(list(KEYWORDS))
                entity = rng.sample(KEYWORDS[kind], k=rng.randint(1, 2))
                words += entity
                tags += [f"B-{kind.upper()}"] + [f"I-{kind.upper()}"] * (len(entity) - 1)
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    """A CoNLL-style file: a `-DOCSTART-` line, then a token and its tag a line, a blank line after each sentence."""
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(words, tags, strict=True)) for words, tags in sentences]
    path.write_text("-DOCSTART- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path
