"""The benchmarks: each a function of a `Size`, returning what it measured (ratios side by side, same machine,
same run). `run.py` runs them and writes the results; the smoke test runs them at a tiny size."""

from __future__ import annotations

import contextlib
import cProfile
import csv
import io
import json
import math
import os
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED, per_step, repeat, rt_polarity, spread, uniform_texts, write_csv


@dataclass(frozen=True)
class Size:
    model: str = "minilm"
    steps: int = 20
    warmup: int = 3
    repeats: int = 3
    batch: int = 16
    max_length: int = 64
    n_train: int = 1000
    n_test: int = 500
    matmul: int = 1024
    real_data: bool = True


FULL = Size()


def _model_dir(name: str) -> str:
    from graft.models.hf import resolve_model_name

    return resolve_model_name(name)


def _tokenizer(size: Size) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_dir(size.model))


def _recipe(size: Size, train_file: Path, test_file: Path, out: Path, **sections: Any) -> dict[str, Any]:
    tree = {"model": {"name": size.model, "max_length": size.max_length},
            "data": {"train": str(train_file), "validation": str(test_file), "test": str(test_file),
                     "leakage": "warn"},
            "optim": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01},
            "schedule": {"name": "constant", "warmup_ratio": 0.0},
            "train": {"epochs": 1, "batch_size": size.batch, "log_every": 10},
            "output": {"dir": str(out), "tensorboard": False}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def _labelled(texts: list[str], seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(t, rng.choice(["pos", "neg"])) for t in texts]


def _real_or_synthetic(size: Size, tmp: Path) -> tuple[Path, Path, bool]:
    if size.real_data and (SHARED / "rt-polarity").is_dir():
        train, test = rt_polarity(size.n_train, size.n_test)
        return write_csv(tmp / "train.csv", train), write_csv(tmp / "test.csv", test), True
    tok = _tokenizer(size)
    rows = _labelled(uniform_texts(tok, size.n_train + size.n_test, 12))
    return write_csv(tmp / "train.csv", rows[: size.n_train]), write_csv(tmp / "test.csv", rows[size.n_train:]), False


def loop_overhead(size: Size) -> dict[str, Any]:
    """Steps per second of one model, data, batch, precision and step count: graft vs a plain PyTorch loop vs the
    Hugging Face Trainer. Every text is cut to the same token length, so padding plays no part."""
    import graft

    tok = _tokenizer(size)
    n = size.batch * (size.steps + 1)
    rows = _labelled(uniform_texts(tok, n, size.max_length * 2))
    times: dict[str, list[float]] = {"graft": [], "plain_pytorch": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        train, test = write_csv(Path(tmp) / "train.csv", rows), write_csv(Path(tmp) / "test.csv", rows[: size.batch])
        for i in range(size.repeats):
            stamps: list[float] = []
            recipe = _recipe(size, train, test, Path(tmp) / f"graft-{i}", train={"max_steps": size.steps},
                             data={"group_by_length": False})
            graft.train(recipe, hooks=[lambda e, s=stamps: s.append(time.perf_counter()) if e.kind == "step" else None])
            times["graft"].append(per_step(stamps, size.warmup))
            times["plain_pytorch"].append(_plain_loop(size, tok, [t for t, _ in rows]))
            times["hf_trainer"].append(_trainer(size, tok, [t for t, _ in rows], Path(tmp) / f"trainer-{i}"))
    steps_per_s = {k: spread([1 / t for t in v]) for k, v in times.items()}
    ratios = {f"graft_vs_{k}": spread([b / a for a, b in zip(times["graft"], v, strict=True)])
              for k, v in times.items() if k != "graft"}
    return {"setup": {"model": size.model, "batch": size.batch, "tokens": size.max_length, "steps": size.steps,
                      "warmup_steps_left_out": size.warmup, "precision": "fp32"},
            "steps_per_s": steps_per_s, "ratios": ratios,
            "targets": {"graft_vs_plain_pytorch": ">= 0.97", "graft_vs_hf_trainer": ">= 1.0"}}


def _plain_loop(size: Size, tok: Any, texts: list[str]) -> float:
    """The loop a careful person writes by hand: forward, backward, clip, AdamW step."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(_model_dir(size.model), num_labels=2)
    enc = tok(texts, truncation=True, max_length=size.max_length, padding="max_length", return_tensors="pt")
    labels = torch.randint(0, 2, (len(texts),))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    model.train()
    stamps = []
    for i in range(size.steps):
        s = slice(i * size.batch, (i + 1) * size.batch)
        out = model(**{k: v[s] for k, v in enc.items()}, labels=labels[s])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return per_step(stamps, size.warmup)


def _trainer(size: Size, tok: Any, texts: list[str], out: Path) -> float:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(_model_dir(size.model), num_labels=2)
    enc = tok(texts, truncation=True, max_length=size.max_length)
    ds = datasets.Dataset.from_dict({**enc, "labels": [random.Random(i).randint(0, 1) for i in range(len(texts))]})
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=size.batch, max_steps=size.steps,
                             learning_rate=5e-5, weight_decay=0.01, lr_scheduler_type="constant",
                             logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its own metrics
        Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                callbacks=[Stamp()]).train()
    return per_step(stamps, size.warmup)


def mixed_precision(size: Size) -> dict[str, Any]:
    """bf16 autocast against fp32 on the same run: step time and test accuracy (rt-polarity where present)."""
    import graft

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        for precision in ("fp32", "bf16"):
            record = graft.train(_recipe(size, train, test, Path(tmp) / precision, train={"precision": precision}))
            out[precision] = {"step_s": 1 / record["timings"]["steps_per_s"],
                              "test_accuracy": record["metrics"]["test"]["accuracy"],
                              "peak_memory_mb": record["peak_memory_mb"]}
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "n_train": size.n_train,
                      "epochs": 1, "batch": size.batch},
            **out, "speedup_bf16": out["fp32"]["step_s"] / out["bf16"]["step_s"],
            "accuracy_change": out["bf16"]["test_accuracy"] - out["fp32"]["test_accuracy"]}


def padding(size: Size) -> dict[str, Any]:
    """Long-tailed text lengths: pad to max_length vs dynamic padding vs dynamic padding in length-grouped batches.
    Share of real tokens, and samples per second of forward + backward + step."""
    import datasets
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from graft.tasks import text

    tok = _tokenizer(size)
    rng = random.Random(0)
    lengths = [min(4 * size.max_length, max(3, int(rng.lognormvariate(math.log(12), 0.8)))) for _ in range(
        size.batch * size.steps)]
    words = uniform_texts(tok, 1, 4 * size.max_length)[0].split()
    ds = datasets.Dataset.from_dict({"text": [" ".join(words[:n]) for n in lengths],
                                     "label": [rng.randint(0, 1) for _ in lengths]})
    tokenized = text.tokenize(ds, tok, size.max_length)
    loaders = {
        "pad_to_max": DataLoader(tokenized, batch_size=size.batch, shuffle=False, collate_fn=DataCollatorWithPadding(
            tok, padding="max_length", max_length=size.max_length)),
        "dynamic": text.train_loader(tokenized, tok, size.batch, 0, group_by_length=False),
        "dynamic_grouped": text.train_loader(tokenized, tok, size.batch, 0, group_by_length=True),
    }
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(_model_dir(size.model), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    out: dict[str, Any] = {}
    for name, loader in loaders.items():
        batches = list(loader)
        real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

        def run(batches: list = batches) -> float:
            started = time.perf_counter()
            for b in batches:
                model(**b).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return len(lengths) / (time.perf_counter() - started)

        out[name] = {"real_token_share": real, "samples_per_s": repeat(run, size.repeats)}
    return {"setup": {"model": size.model, "batch": size.batch, "max_length": size.max_length,
                      "lengths": "lognormal, median 12 words"},
            **out, "speedup_grouped_vs_pad_to_max": out["dynamic_grouped"]["samples_per_s"]["median"]
            / out["pad_to_max"]["samples_per_s"]["median"]}


def feature_cache(size: Size) -> dict[str, Any]:
    """head_only with and without the frozen-backbone cache: time per epoch and test accuracy."""
    import graft

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        for cached in (True, False):
            record = graft.train(_recipe(size, train, test, Path(tmp) / f"cache-{cached}", train={"epochs": 3},
                                         strategy={"name": "head_only", "feature_cache": cached, "probe": "sgd"},
                                         optim={"lr": 1e-2}))
            t = record["timings"]
            out["cached" if cached else "uncached"] = {
                "train_s_per_epoch": t["train_s_per_epoch"], "backbone_pass_s": t["feature_cache_s"],
                "test_accuracy": record["metrics"]["test"]["accuracy"]}
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "epochs": 3},
            **out, "speedup_per_epoch": out["uncached"]["train_s_per_epoch"] / out["cached"]["train_s_per_epoch"],
            "target": ">= 10x per epoch at identical accuracy"}


def partial_cache(size: Size) -> dict[str, Any]:
    """`freeze_groups` at 2, 4 and 6 of the model's groups (MiniLM: the embeddings, then layers), with and without
    the cache of the frozen groups' outputs: time per epoch (the cache's one pass counted apart), and accuracy."""
    import graft
    from graft.recipe import load_recipe

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        groups = len(graft.setup(load_recipe(_recipe(size, train, test, Path(tmp) / "probe"))).plan.groups) - 1
        for frozen in [k for k in (2, 4, 6) if k < groups]:
            row: dict[str, Any] = {}
            for cached in (False, True):
                record = graft.train(_recipe(size, train, test, Path(tmp) / f"{frozen}-{cached}", train={"epochs": 2},
                                             strategy={"name": "freeze", "freeze_groups": frozen,
                                                       "feature_cache": cached}))
                t = record["timings"]
                row["cached" if cached else "uncached"] = {
                    "train_s_per_epoch": t["train_s_per_epoch"], "cache_pass_s": t["feature_cache_s"],
                    "test_accuracy": record["metrics"]["test"]["accuracy"]}
            row["speedup_per_epoch"] = row["uncached"]["train_s_per_epoch"] / row["cached"]["train_s_per_epoch"]
            rows[str(frozen)] = row
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "epochs": 2,
                      "n_train": size.n_train, "backbone_groups": groups}, "freeze_groups": rows}


def defaults_vs_trainer(size: Size) -> dict[str, Any]:
    """Time to accuracy with each tool's defaults, same model, data and epochs: `graft train` with only data and
    model in the recipe (its LR range test, pooling, precision included in its time) against the Hugging Face
    Trainer with its own defaults (AdamW 5e-5, batch 8, linear decay, fp32 on CPU). Both from the loaded model to
    the trained one; test accuracy of each, one row per seed. graft carves 15% of train for validation (what a
    default run does); the Trainer trains on all of it."""
    epochs = 3
    runs: dict[str, list[dict[str, Any]]] = {"graft": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        for seed in range(size.repeats):
            runs["graft"].append(_graft_defaults(size, train, test, epochs, seed, Path(tmp) / f"graft-{seed}"))
            runs["hf_trainer"].append(_trainer_defaults(size, train, test, epochs, seed, Path(tmp) / f"hf-{seed}"))
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "n_train": size.n_train,
                      "n_test": size.n_test, "epochs": epochs, "seeds": list(range(size.repeats))},
            "runs": runs, "test_accuracy": {k: spread([r["test_accuracy"] for r in v]) for k, v in runs.items()},
            "speedup": spread([t["train_s"] / g["train_s"] for g, t in
                               zip(runs["graft"], runs["hf_trainer"], strict=True)]),
            "accuracy_gap": spread([g["test_accuracy"] - t["test_accuracy"] for g, t in
                                    zip(runs["graft"], runs["hf_trainer"], strict=True)]),
            "target": ">= 1.5x faster at equal or better accuracy"}


def _graft_defaults(size: Size, train: Path, test: Path, epochs: int, seed: int, out: Path) -> dict[str, Any]:
    import graft

    tree = {"model": {"name": size.model, "max_length": size.max_length},
            "data": {"train": str(train), "test": str(test), "split": [0.85, 0.15, 0.0]},
            "train": {"epochs": epochs, "seed": seed}, "output": {"dir": str(out), "tensorboard": False}}
    record = graft.train(tree)
    t = record["timings"]
    return {"test_accuracy": record["metrics"]["test"]["accuracy"],
            "train_s": t["train_s"] + t["eval_s"] + record["optim"].get("lr_sweep_s", 0),
            "lr": record["optim"]["lr"], "precision": record["precision"]["used"]}


def _trainer_defaults(size: Size, train: Path, test: Path, epochs: int, seed: int, out: Path) -> dict[str, Any]:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(_model_dir(size.model))
    rows = {}
    for name, path in (("train", train), ("test", test)):
        with path.open(encoding="utf-8") as f:
            rows[name] = list(csv.reader(f))[1:]
    names = sorted({label for _, label in rows["train"]})

    def encode(split: str) -> Any:
        texts, labels = zip(*rows[split], strict=True)
        enc = tok(list(texts), truncation=True, max_length=size.max_length)
        return datasets.Dataset.from_dict({**enc, "labels": [names.index(x) for x in labels]})

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(_model_dir(size.model), num_labels=len(names))
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, report_to=[], save_strategy="no",
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=encode("train"), data_collator=DataCollatorWithPadding(tok))
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        predicted = trainer.predict(encode("test"))
    return {"test_accuracy": float((predicted.predictions.argmax(-1) == predicted.label_ids).mean()),
            "train_s": seconds, "lr": args.learning_rate, "batch": args.per_device_train_batch_size}


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def resnet20_vs_plain(size: Size) -> dict[str, Any]:
    """Time to accuracy on images: `graft train` with only data and model in the recipe (the CIFAR-10 ResNet-20 on
    cifar10-mini's ten classes) against a careful plain-PyTorch loop (SGD with momentum 0.9 and weight decay 5e-4,
    0.01 for the body and 0.1 for the new head, cosine decay, random crops and flips), same epochs and batch.
    graft carves 15% of train for validation (what a default run does); the plain loop trains on all of it and
    has no validation. graft's time includes its LR range test and evaluations. One row per seed."""
    import graft

    epochs, batch = 5, 32
    seeds = list(range(size.repeats))
    runs: dict[str, list[dict[str, Any]]] = {"graft": [], "plain_pytorch": []}
    with tempfile.TemporaryDirectory() as tmp:
        lists, checkpoint, real = _cifar_mini(size, Path(tmp))
        for seed in seeds:
            tree = {"task": "image_classification",
                    "model": {"name": f"{EXAMPLES / 'cifar_resnet.py'}:resnet20", "checkpoint": str(checkpoint)},
                    "data": {**lists, "split": [0.85, 0.15, 0.0], "image_size": 32, **IMAGENET},
                    "train": {"epochs": epochs, "seed": seed},
                    "output": {"dir": str(Path(tmp) / f"graft-{seed}"), "tensorboard": False}}
            record = graft.train(tree)
            t = record["timings"]
            runs["graft"].append({"test_accuracy": record["metrics"]["test"]["accuracy"],
                                  "train_s": t["train_s"] + t["eval_s"] + record["optim"].get("lr_sweep_s", 0),
                                  "optimizer": record["optim"]["name"], "lr": record["optim"]["lr"],
                                  "precision": record["precision"]["used"]})
            runs["plain_pytorch"].append(_plain_cifar_loop(lists, checkpoint, epochs, batch, seed))
    accuracy = {k: spread([r["test_accuracy"] for r in v]) for k, v in runs.items()}
    seconds = {k: spread([r["train_s"] for r in v]) for k, v in runs.items()}
    return {"setup": {"model": "CIFAR-10 ResNet-20" if real else "random ResNet-20", "epochs": epochs,
                      "batch": batch, "data": "cifar10-mini (10 classes)" if real else "synthetic", "seeds": seeds},
            "runs": runs, "test_accuracy": accuracy, "train_s": seconds,
            "speedup": spread([p["train_s"] / g["train_s"] for g, p in
                               zip(runs["graft"], runs["plain_pytorch"], strict=True)]),
            "accuracy_gap": spread([g["test_accuracy"] - p["test_accuracy"] for g, p in
                                    zip(runs["graft"], runs["plain_pytorch"], strict=True)]),
            "target": "within one point of the plain loop's accuracy"}


def _cifar_mini(size: Size, tmp: Path) -> tuple[dict[str, str], Path, bool]:
    """Image lists (train, test) and a ResNet-20 checkpoint: cifar10-mini and the CIFAR-10 weights where
    ../shared/data has them, else coloured noise in three classes and random weights."""
    real = size.real_data and (SHARED / "cifar10-mini").is_dir()
    lists = {}
    if real:
        for split in ("train", "test"):
            rows = [(str(p), p.parent.name) for p in sorted((SHARED / "cifar10-mini" / split).glob("*/*.jpg"))]
            lists[split] = str(write_csv(tmp / f"{split}.csv", rows, ("image", "label")))
        return lists, SHARED / "cifar10-resnet20" / "resnet20-12fca82f.th", True
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (200, 50, 40), "green": (50, 190, 60), "blue": (40, 60, 200)}
    for split, n in (("train", size.n_train), ("test", size.n_test)):
        rows = []
        for i in range(n):
            name = list(colours)[i % 3]
            path = tmp / split / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(np.array(colours[name]) + rng.normal(0, 60, (32, 32, 3)), 0, 255)
                            .astype("uint8")).save(path)
            rows.append((str(path), name))
        lists[split] = str(write_csv(tmp / f"{split}.csv", rows, ("image", "label")))
    checkpoint = tmp / "resnet20.pt"
    torch.save({"state_dict": _resnet20().state_dict()}, checkpoint)
    return lists, checkpoint, False


def _resnet20() -> torch.nn.Module:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cifar_resnet", EXAMPLES / "cifar_resnet.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.resnet20()


def _plain_cifar_loop(lists: dict[str, str], checkpoint: Path, epochs: int, batch: int, seed: int) -> dict[str, Any]:
    """The loop a careful person writes for fine-tuning a BatchNorm CNN, timed from the loaded data and model."""
    import numpy as np
    from PIL import Image

    def load(split: str, names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        with open(lists[split], encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        names = names or sorted({label for _, label in rows})
        pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p, _ in rows])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
        mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        return (x - mean) / std, torch.tensor([names.index(label) for _, label in rows]), names

    torch.manual_seed(seed)
    x, y, names = load("train")
    xt, yt, _ = load("test", names)
    net = _resnet20()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    net.linear = torch.nn.Linear(net.linear.in_features, len(names))
    head = set(net.linear.parameters())
    optimizer = torch.optim.SGD([{"params": [p for p in net.parameters() if p not in head], "lr": 0.01},
                                 {"params": list(head), "lr": 0.1}], momentum=0.9, weight_decay=5e-4)
    steps = epochs * math.ceil(len(y) / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for i in torch.randperm(len(y)).split(batch):
            xb = torch.nn.functional.pad(x[i], (4, 4, 4, 4), mode="reflect")
            dx, dy = torch.randint(0, 9, (2,)).tolist()
            xb = xb[:, :, dy:dy + 32, dx:dx + 32]
            flip = torch.rand(len(i)) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), y[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    train_s = time.perf_counter() - started
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(b).argmax(1) for b in xt.split(256)])
    return {"test_accuracy": float((predicted == yt).float().mean()), "train_s": train_s}


def linear_probe(size: Size) -> dict[str, Any]:
    """head_only with graft's defaults (cached features, the exact L-BFGS probe, its L2 strength picked by
    validation loss among 7) against scikit-learn's LogisticRegression on the very same features, its C picked by
    validation loss among 7 on the same split: test accuracy and fit time of each (imports paid before either)."""
    import sklearn.linear_model  # noqa: F401  (imported before either is timed)

    import graft
    from graft.training.probe import STRENGTHS

    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        tree = _recipe(size, train, test, Path(tmp) / "probe", strategy={"name": "head_only"},
                       data={"validation": None, "split": [0.85, 0.15, 0.0]})
        del tree["optim"]  # graft's defaults: the probe needs no optimiser settings
        record = graft.train(tree)
        features = _probe_features(graft.load_recipe(tree))
    (xt, yt), (xv, yv), (xs, ys) = features
    sklearn_runs = [_sklearn_probe(xt, yt, xv, yv) for _ in range(size.repeats)]
    graft_runs = [_graft_probe(xt, yt, xv, yv) for _ in range(size.repeats)]  # what graft.train ran, timed alone
    sklearn_s, graft_s = spread([t for t, _ in sklearn_runs]), spread(graft_runs)
    model = sklearn_runs[0][1]
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "n_train": len(yt),
                      "n_validation": len(yv), "n_test": len(ys), "strengths": len(STRENGTHS)},
            "graft": {"test_accuracy": record["metrics"]["test"]["accuracy"], "fit_s": graft_s,
                      "fit_s_in_the_run": record["timings"]["train_s"], "l2": record["strategy"]["probe"]["l2"]},
            "sklearn": {"test_accuracy": float(model.score(xs, ys)), "fit_s": sklearn_s, "C": model.C},
            "time_ratio_sklearn_over_graft": sklearn_s["median"] / graft_s["median"],
            "target": "accuracy >= scikit-learn's, in no more time"}


def _sklearn_probe(xt: Any, yt: Any, xv: Any, yv: Any) -> tuple[float, Any]:
    """scikit-learn's LogisticRegression at 7 values of C, the lowest validation log-loss kept; seconds and model."""
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    started, best = time.perf_counter(), None
    for c in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):  # as many as graft tries, picked the same way
        model = LogisticRegression(C=c, max_iter=1000).fit(xt, yt)
        score = log_loss(yv, model.predict_proba(xv), labels=model.classes_)
        if best is None or score < best[0]:
            best = (score, model)
    return time.perf_counter() - started, best[1]


def _graft_probe(xt: Any, yt: Any, xv: Any, yv: Any) -> float:
    """Seconds of graft's exact probe on the same features (its own clock, as the run records it)."""
    from graft.training.probe import fit_probe

    f = partial(torch.tensor, dtype=torch.float32)
    layer = torch.nn.Linear(xt.shape[1], int(yt.max()) + 1)
    return fit_probe(layer, (f(xt), torch.tensor(yt)), (f(xv), torch.tensor(yv))).seconds


def _probe_features(recipe: Any) -> list[tuple[Any, Any]]:
    """(features, labels) of train, validation and test as the cached head sees them, as numpy arrays."""
    from graft.setup import setup
    from graft.training.feature_cache import compute_features, feature_fn, in_order

    run = setup(recipe)
    run.loaded.model.eval()
    features = feature_fn(run.loaded.model, run.loaded.root, run.loaded.head_modules)
    out = []
    for loader in (in_order(run.train_loader), run.val_loader, run.test_loader):
        data = compute_features(features, loader, "cpu")
        out.append((data.features.numpy(), data.labels.numpy()))
    return out


def lora_vs_full(size: Size) -> dict[str, Any]:
    """Full fine-tuning against LoRA (r 8 on query/value): step time, peak RSS, optimiser state."""
    import graft

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train, test, _ = _real_or_synthetic(size, Path(tmp))
        for name, strategy, lr in (("full", {"name": "full"}, 5e-5), ("lora", {"name": "lora"}, 5e-4)):
            record = graft.train(_recipe(size, train, test, Path(tmp) / name, strategy=strategy, optim={"lr": lr},
                                         train={"max_steps": size.steps}))
            trainable = record["params"]["trainable"]
            out[name] = {"step_s": 1 / record["timings"]["steps_per_s"], "peak_rss_mb": record["peak_memory_mb"],
                         "trainable": trainable, "optimizer_state_mb": trainable * 2 * 4 / 2**20}  # AdamW: 2 fp32
    return {"setup": {"model": size.model, "steps": size.steps, "batch": size.batch}, **out,
            "lora_step_time_ratio": out["lora"]["step_s"] / out["full"]["step_s"],
            "lora_peak_rss_ratio": out["lora"]["peak_rss_mb"] / out["full"]["peak_rss_mb"]}


def matmul_limit(size: Size) -> dict[str, Any]:
    """The machine's matmul rate (fp32, bf16) and a MiniLM training step's achieved FLOP/s as a share of it."""
    n = size.matmul
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):  # wake the thread pool and the clocks
            a @ b

        def once(a: torch.Tensor = a, b: torch.Tensor = b) -> float:
            started = time.perf_counter()
            for _ in range(10):
                a @ b
            return 10 * 2 * n**3 / (time.perf_counter() - started)

        rates[str(dtype).removeprefix("torch.")] = repeat(once, max(5, size.repeats))
    step = loop_overhead(Size(**{**size.__dict__, "repeats": 1}))
    model = _parameters(size)
    tokens = size.batch * size.max_length
    flops = 6 * model * tokens  # forward 2N, backward 4N per token (attention's own FLOPs left out: small at 64)
    achieved = flops * step["steps_per_s"]["graft"]["median"]
    return {"matmul_flops_per_s": rates, "training_step": {"non_embedding_params": model, "tokens": tokens,
                                                           "flops": flops, "achieved_flops_per_s": achieved},
            "share_of_fp32_peak": achieved / rates["float32"]["max"]}  # the peak: the best the machine did


def _parameters(size: Size) -> int:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(_model_dir(size.model), num_labels=2)
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def profile(size: Size) -> dict[str, Any]:
    """Where the time of graft's training steps goes, from cProfile over `graft.train`: the shares of the loop's
    time in data loading, forward, backward, clipping, optimiser and graft's own bookkeeping."""
    import graft

    tok = _tokenizer(size)
    rows = _labelled(uniform_texts(tok, size.batch * (size.steps + 1), size.max_length * 2))
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        train, test = write_csv(Path(tmp) / "train.csv", rows), write_csv(Path(tmp) / "test.csv", rows[:size.batch])
        recipe = _recipe(size, train, test, Path(tmp) / "run", train={"max_steps": size.steps})
        profiler.enable()
        graft.train(recipe)
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def cumulative(match: Callable[[str, str], bool]) -> float:
        return max((v[3] for (file, _, fn), v in stats.items() if match(file, fn)), default=0.0)

    fit = cumulative(lambda f, fn: f.endswith("graft/training/loop.py") and fn == "fit")
    parts = {
        "forward": cumulative(lambda f, fn: "modeling_bert" in f and fn == "forward"),
        "backward": cumulative(lambda f, fn: f.endswith("accelerate/accelerator.py") and fn == "backward"),
        "clip_grad_norm": cumulative(lambda f, fn: f.endswith("accelerate/accelerator.py") and fn == "clip_grad_norm_"),
        "optimizer_step": cumulative(lambda f, fn: f.endswith("accelerate/optimizer.py") and fn == "step"),
        "after_step (log, eval, checkpoint)": cumulative(lambda f, fn: f.endswith("graft/training/loop.py")
                                                         and fn == "_after_step"),
        "data": cumulative(lambda f, fn: f.endswith("accelerate/data_loader.py") and fn == "__iter__"),
    }
    known = sum(parts.values())
    return {"setup": {"model": size.model, "steps": size.steps, "batch": size.batch},
            "fit_s": fit, "seconds": parts, "shares_of_fit": {k: v / fit for k, v in parts.items()} if fit else {},
            "unaccounted_share": max(0.0, 1 - known / fit) if fit else None}


def mc_dropout(size: Size) -> dict[str, Any]:
    """MC-dropout prediction (N passes, batched: each example repeated N times in a forward of at most `MAX_ROWS`
    rows) against N times one deterministic pass over the same batches, on graft's text classifier of `size.model`
    (its pooling, an untrained head: timing only). Each repeat times a single pass just before and just after the MC
    prediction and compares with their mean, so load on the machine falls on both sides; the ratio is per repeat."""
    import datasets

    from graft.evaluation.mc_dropout import MAX_ROWS, mc_dropout_predict
    from graft.evaluation.predictions import loader_logits
    from graft.models.build import load_model
    from graft.recipe import DataSpec, ModelSpec, TrainSpec
    from graft.tasks import text

    if size.real_data and (SHARED / "rt-polarity").is_dir():
        texts, real = [t for t, _ in rt_polarity(0, size.n_test)[1]], True
    else:
        texts, real = uniform_texts(_tokenizer(size), size.n_test, 20), False
    spec = ModelSpec(name=size.model, max_length=size.max_length)
    torch.manual_seed(0)
    loaded = load_model(spec, "text_classification", ["neg", "pos"], DataSpec(train=Path("unused.csv")))
    model, tok, batch = loaded.model, loaded.processor, TrainSpec().eval_batch
    tokenized = text.tokenize(datasets.Dataset.from_dict({"text": texts}), tok, spec.max_length)
    batches = list(text.eval_loader(tokenized, tok, batch, 0))
    device = torch.device("cpu")

    def single() -> float:
        started = time.perf_counter()
        loader_logits(model, batches, device)
        return time.perf_counter() - started

    def mc(n: int) -> float:
        started = time.perf_counter()
        mc_dropout_predict(model, batches, n)
        return time.perf_counter() - started

    single()  # warm the thread pool and the allocator
    load = [os.getloadavg()[0]]  # other work on the machine slows both sides, not their ratio (timed in turn)
    rows: dict[str, Any] = {}
    for n, repeats in ((10, size.repeats), (30, 1)):
        times = [(single(), mc(n), single()) for _ in range(repeats)]
        rows[str(n)] = {"single_pass_s": spread([t for a, _, c in times for t in (a, c)]),
                        "mc_s": spread([b for _, b, _ in times]),
                        "ratio_mc_over_n_single": spread([b / (n * (a + c) / 2) for a, b, c in times])}
    load.append(os.getloadavg()[0])
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "examples": len(texts),
                      "tokens": tokens, "max_length": spec.max_length, "eval_batch": batch, "max_rows": MAX_ROWS,
                      "attention": model.config._attn_implementation, "precision": "fp32",
                      "load_average_1min": {"before": load[0], "after": load[1]}},
            "passes": rows, "target": "MC time <= 1.1x N single passes"}


def serving(size: Size) -> dict[str, Any]:
    """Prediction on the CPU at batch 1 and batch 32: the fine-tuned run's PyTorch model (fp32), its ONNX export run
    by onnxruntime (fp32), the int8 export, and a student with half the run's layers cut from it and distilled from
    it for the same epoch (PyTorch fp32), with each one's test accuracy beside it (from the exports' own records and
    the student's: the run's test split, rt-polarity where present). The same tokenised batches for each, timed in
    turn within each repeat so load on the machine falls on all four; throughput is examples per second over all the
    batches, latency the median time of one batch."""
    import graft
    from graft.models.onnx_graph import MODEL_FILE, OnnxModel
    from graft.tasks import text
    from graft.trained import open_run

    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        run = Path(tmp) / "run"
        record = graft.train(_recipe(size, train, test, run))
        exports = {q: graft.export(run, Path(tmp) / f"onnx-{q}", format="onnx", quantize=q) for q in (None, "int8")}
        trained = open_run(run)
        layers = max(1, trained.model.config.num_hidden_layers // 2)
        student = graft.train(_recipe(size, train, test, Path(tmp) / "student", model={"name": "teacher"},
                                      strategy={"name": "distill", "teacher": str(run), "distill": {"layers": layers}}))
        models = {"pytorch_fp32": trained.model.eval(), "onnxruntime_fp32": OnnxModel(exports[None] / MODEL_FILE),
                  "onnxruntime_int8": OnnxModel(exports["int8"] / MODEL_FILE),
                  "distilled_student_fp32": open_run(Path(tmp) / "student").model.eval()}
        meta = {q: json.loads((path / "export.json").read_text()) for q, path in exports.items()}
        with open(test, newline="", encoding="utf-8") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        tokenized = text.tokenize(_dataset(texts), trained.processor, size.max_length)
        batches = {n: list(text.eval_loader(tokenized, trained.processor, n))[: 4 * size.steps if n == 1 else None]
                   for n in (1, 32)}
        load = [os.getloadavg()[0]]
        times: dict[str, dict[int, list[list[float]]]] = {m: {1: [], 32: []} for m in models}
        with torch.inference_mode():
            for model in models.values():  # warm each: thread pools, allocators, onnxruntime's first-run planning
                model(**batches[32][0])
            for _ in range(size.repeats):
                for n, chunk in batches.items():
                    for name, model in models.items():
                        times[name][n].append(_batch_times(model, chunk))
        load.append(os.getloadavg()[0])
    examples = {n: sum(len(b["input_ids"]) for b in chunk) for n, chunk in batches.items()}
    rows = {name: {f"batch_{n}": {"examples_per_s": spread([examples[n] / sum(t) for t in per]),
                                  "latency_ms": spread([1000 * statistics.median(t) for t in per])}
                   for n, per in by_batch.items()} for name, by_batch in times.items()}
    test_scores = meta["int8"]["test"]
    accuracy = {"pytorch_fp32": test_scores["pytorch"]["accuracy"],
                "onnxruntime_fp32": test_scores["onnx_fp32"]["accuracy"],
                "onnxruntime_int8": test_scores["onnx_int8"]["accuracy"],
                "distilled_student_fp32": student["metrics"]["test"]["accuracy"]}
    for name in rows:
        rows[name]["test_accuracy"] = accuracy[name]
    rows["onnxruntime_int8"]["same_labels_as_pytorch"] = test_scores["onnx_int8"]["same_labels_as_pytorch"]

    def speedup(name: str, n: int) -> float:
        return (rows[name][f"batch_{n}"]["examples_per_s"]["median"]
                / rows["pytorch_fp32"][f"batch_{n}"]["examples_per_s"]["median"])

    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "n_train": size.n_train,
                      "n_test": len(texts), "epochs": 1, "max_length": size.max_length,
                      "examples_timed": {f"batch_{n}": e for n, e in examples.items()},
                      "torch_threads": torch.get_num_threads(), "repeats": size.repeats,
                      "train_s": record["timings"]["train_s"], "max_abs_diff_fp32": meta[None]["check"]["max_abs_diff"],
                      "student": {"layers": layers, "of_layers": trained.model.config.num_hidden_layers,
                                  "train_s": student["timings"]["train_s"],
                                  "params": student["distill"]["student"]["params"],
                                  "teacher_params": student["distill"]["teacher"]["params"]},
                      "megabytes": meta["int8"]["megabytes"],
                      "load_average_1min": {"before": load[0], "after": load[1]}},
            **rows,
            "speedup_vs_pytorch": {name: {f"batch_{n}": speedup(name, n) for n in (1, 32)} for name in rows
                                   if name != "pytorch_fp32"},
            "int8_accuracy_change": test_scores["accuracy_change"],
            "target": "int8 ONNX >= 2x PyTorch fp32 throughput at batch 1, accuracy within one point; the distilled "
                      "student >= 97% of the run's accuracy at half its latency"}


def sweep_overhead(size: Size) -> dict[str, Any]:
    """What a sweep adds to each trial: single runs (their test skipped, as a trial's is) and the trials of a sweep
    whose space has one value (every trial that same run), each size.steps steps on the same data, run in turn. Per
    trial, what the sweep adds around the run: a trial's time (Optuna's, from ask to tell) less its run's own
    total_s, against a single run's time less its total_s (what both pay after total_s is taken: the report, the
    model card), so what is left is sampling, the study's SQLite writes and the trial's recipe, immune to the
    machine's load changing between runs; once per sweep, what it spends outside its trials (the splits, the study,
    testing the best trial, importances, the page)."""
    import graft
    from graft.rundir import read_record

    with tempfile.TemporaryDirectory() as tmp:
        train, test, real = _real_or_synthetic(size, Path(tmp))
        single, single_tail = [], []
        for i in range(size.repeats):
            recipe = _recipe(size, train, test, Path(tmp) / f"single-{i}", train={"max_steps": size.steps})
            started = time.perf_counter()
            record = graft.train(recipe, test=False)
            single.append(time.perf_counter() - started)
            single_tail.append(single[-1] - record["timings"]["total_s"])
        recipe = _recipe(size, train, test, Path(tmp) / "sweep", train={"max_steps": size.steps})
        started = time.perf_counter()
        result = graft.sweep(recipe, {"train.seed": {"choices": [0]}}, size.repeats)
        sweep_s = time.perf_counter() - started
        runs = [read_record(Path(t["run_dir"]))["timings"]["total_s"] for t in result["trials"]]
    trials = [t["duration_s"] for t in result["trials"]]
    added = [t - r - statistics.median(single_tail) for t, r in zip(trials, runs, strict=True)]
    return {"setup": {"model": size.model, "data": "rt-polarity" if real else "synthetic", "steps": size.steps,
                      "batch": size.batch, "trials": len(trials), "load_average_1min": os.getloadavg()[0]},
            "single_run_s": spread(single), "trial_s": spread(trials), "trial_run_s": spread(runs),
            "added_per_trial_s": spread(added),
            "added_share_of_trial": statistics.median(added) / statistics.median(trials),
            "sweep_outside_trials_s": sweep_s - sum(trials)}


def _batch_times(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Seconds for each batch's forward pass."""
    out = []
    for batch in batches:
        started = time.perf_counter()
        model(**batch)
        out.append(time.perf_counter() - started)
    return out


def _dataset(texts: list[str]) -> Any:
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"text": texts})


BENCHMARKS: dict[str, Callable[[Size], dict[str, Any]]] = {
    "loop_overhead": loop_overhead,
    "mixed_precision": mixed_precision,
    "padding": padding,
    "feature_cache": feature_cache,
    "partial_cache": partial_cache,
    "linear_probe": linear_probe,
    "defaults_vs_trainer": defaults_vs_trainer,
    "resnet20_vs_plain": resnet20_vs_plain,
    "lora_vs_full": lora_vs_full,
    "matmul_limit": matmul_limit,
    "profile": profile,
    "mc_dropout": mc_dropout,
    "serving": serving,
    "sweep_overhead": sweep_overhead,
}
