"""graft compare: the verdict logic on known numbers, and whole comparisons whose ordering is known by construction.

The target task: three colours with the same channel sum, so only hue tells them apart. A backbone "pretrained on
a related source" was trained by graft on the same kind of images; one "pretrained on an unrelated source" sees
only luminance (its first convolution weighs the three channels alike, as a network pretrained on greyscale
images would): its features cannot tell the colours apart, so a frozen probe on it must lose to scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.compare import format_table, judge
from tests.conftest import IMAGE_MEAN, IMAGE_STD, PLAIN_NETS

HUES = {"red": (200, 60, 60), "green": (60, 200, 60), "blue": (60, 60, 200)}  # every channel sum is 320


def hue_images(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in HUES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def recipe(images: Path, out: Path, checkpoint: Path | None, **sections) -> dict:
    model = {"name": f"{PLAIN_NETS}:small_cnn", "kwargs": {"num_classes": 3}}
    if checkpoint is not None:
        model["checkpoint"] = str(checkpoint)
    tree = {"task": "image_classification", "model": model,
            "data": {"train": str(images), "image_size": 16, "mean": IMAGE_MEAN, "std": IMAGE_STD,
                     "augment": {"crop_scale": None, "hflip": False, "translate": 0}},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
            "train": {"epochs": 4, "batch_size": 8, "log_every": 4},
            "eval": {"metric": "accuracy"},
            "output": {"dir": str(out), "tensorboard": False}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return hue_images(tmp_path_factory.mktemp("hues") / "train", per_class=24, seed=1)


@pytest.fixture(scope="module")
def related(tmp_path_factory) -> Path:
    """small_cnn trained by graft on other images of the same hues: a related source."""
    root = tmp_path_factory.mktemp("related")
    source = hue_images(root / "source" / "train", per_class=24, seed=9)
    graft.train(recipe(source, root / "run", None, optim={"lr": 1e-2}, train={"epochs": 8}))
    return root / "run" / "model" / "model.safetensors"


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory) -> Path:
    """small_cnn whose first convolution weighs R, G and B alike: it sees luminance only."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_nets_compare", PLAIN_NETS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.small_cnn(num_classes=3)
    with torch.no_grad():
        net.conv1.weight.copy_(net.conv1.weight.mean(dim=1, keepdim=True).expand_as(net.conv1.weight))
    path = tmp_path_factory.mktemp("unrelated") / "grey.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_transfer_from_a_related_source_wins(target, related, tmp_path):
    # One epoch: from a related source a probe is there at once, from scratch the network has barely started.
    result = graft.compare(recipe(target, tmp_path / "cmp", related, train={"epochs": 1}), ["scratch", "head_only"])
    rows = {r["label"]: r for r in result["strategies"]}
    print("related source:", {k: round(r["accuracy"], 3) for k, r in rows.items()})
    assert rows["head_only"]["accuracy"] > rows["scratch"]["accuracy"]
    assert result["transfer_helped"] is True and result["winner"] == "head_only"
    assert result["negative_transfer"] == []
    assert (tmp_path / "cmp" / "compare.html").is_file() and (tmp_path / "cmp" / "head_only" / "run.json").is_file()


def test_an_unrelated_source_shows_negative_transfer(target, unrelated, tmp_path):
    result = graft.compare(recipe(target, tmp_path / "cmp", unrelated, optim={"lr": 1e-2}), ["scratch", "head_only"])
    rows = {r["label"]: r for r in result["strategies"]}
    print("unrelated source:", {k: round(r["accuracy"], 3) for k, r in rows.items()})
    assert rows["head_only"]["accuracy"] < 0.6 < rows["scratch"]["accuracy"]  # chance is 1/3
    assert result["negative_transfer"] == ["head_only"] and result["transfer_helped"] is False
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "negative transfer" in page and page.count("<svg") == 2


def test_every_strategy_sees_the_same_splits_and_an_interrupted_comparison_resumes(target, related, tmp_path):
    strategies = ["head_only", {"label": "full-slow", "strategy": {"name": "full"}, "optim": {"lr": 1e-4}}]
    first = graft.compare(recipe(target, tmp_path / "cmp", related, train={"epochs": 1}), strategies)
    runs = {r["label"]: Path(r["runs"][0]) for r in first["strategies"]}
    records = {label: json.loads((d / "run.json").read_text()) for label, d in runs.items()}
    assert {r["data"]["sources"]["test"] for r in records.values()} == {"test.csv"}
    assert records["full-slow"]["recipe"]["optim"]["lr"] == 1e-4  # the fragment's own LR, not a preset's
    assert records["head_only"]["recipe"]["optim"]["lr"] == pytest.approx(0.1)  # 100x the recipe's, as preset

    kept = (runs["head_only"] / "run.json").stat().st_mtime_ns
    broken = records["full-slow"]
    broken["status"] = "interrupted"
    (runs["full-slow"] / "run.json").write_text(json.dumps(broken))
    again = graft.compare(recipe(target, tmp_path / "cmp", related, train={"epochs": 1}), strategies)
    assert (runs["head_only"] / "run.json").stat().st_mtime_ns == kept  # finished: not trained again
    assert json.loads((runs["full-slow"] / "run.json").read_text())["status"] == "completed"
    assert again["strategies"][0]["accuracy"] == first["strategies"][0]["accuracy"]


def test_seeds_give_a_spread_and_the_cli_prints_the_table(target, related, tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe(target, tmp_path / "cmp", related,
                                                                train={"epochs": 1})))
    (tmp_path / "variants.yaml").write_text(yaml.safe_dump({"probe-slow": {"strategy": {"name": "head_only"},
                                                                           "optim": {"lr": 1e-3}}}))
    done = CliRunner().invoke(app, ["compare", str(tmp_path / "recipe.yaml"), "--strategies", "head_only,probe-slow",
                                    "--seeds", "2", "--variants", str(tmp_path / "variants.yaml")])
    assert done.exit_code == 0, done.output
    assert " ± " in done.output and "report: " in done.output and "compare.html" in done.output
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["seeds"] == [0, 1] and all(len(r["runs"]) == 2 for r in result["strategies"])
    assert (tmp_path / "cmp" / "head_only-seed1" / "run.json").is_file()


def test_unknown_strategy_is_one_line(target, tmp_path):
    with pytest.raises(graft.GraftError, match="unknown strategy 'lorra'; presets: scratch, full"):
        graft.compare(recipe(target, tmp_path / "cmp", None), ["full", "lorra"])


def _row(label, strategy, accuracy, n=1000, std=0.0, runs=1):
    return {"label": label, "strategy": strategy, "accuracy": accuracy, "accuracy_std": std, "n_test": n,
            "runs": ["x"] * runs}


def test_judge_names_a_winner_a_tie_and_negative_transfer():
    clear = judge([_row("scratch", "scratch", 0.70), _row("full", "full", 0.90), _row("probe", "head_only", 0.60)],
                  "accuracy")
    assert clear["winner"] == "full" and clear["ties"] == [] and clear["transfer_helped"] is True
    assert clear["negative_transfer"] == ["probe"]
    assert any("negative transfer: scratch beats probe" in line for line in clear["verdict"])

    # 0.90 vs 0.89 on 1,000 examples: ~1.4 standard errors apart, a tie.
    tie = judge([_row("full", "full", 0.90), _row("lora", "lora", 0.89)], "accuracy")
    assert tie["winner"] is None and tie["leader"] == "full" and tie["ties"] == ["lora"]
    assert tie["verdict"][0].startswith("tie on test accuracy between full, lora")

    # A large spread over seeds makes a gap a tie too.
    noisy = judge([_row("full", "full", 0.90, std=0.05, runs=3), _row("scratch", "scratch", 0.84, std=0.05, runs=3)],
                  "accuracy")
    assert noisy["transfer_helped"] is None and noisy["negative_transfer"] == []


def test_one_test_example_tells_no_strategies_apart():
    """A score on one example has no sampling error to measure (a language model's loss over one conversation
    reported 0): even all against nothing is a tie, said as such."""
    verdict = judge([_row("full", "full", 1.0, n=1), _row("scratch", "scratch", 0.0, n=1)], "accuracy")
    assert verdict["winner"] is None and verdict["ties"] == ["scratch"] and verdict["transfer_helped"] is None
    assert any("the test split holds one example" in line for line in verdict["verdict"])
    assert judge([_row("full", "full", 1.0, n=2), _row("scratch", "scratch", 0.0, n=2)], "accuracy")["winner"] == "full"


def test_cost_counts_the_feature_cache_pass(target, tmp_path):
    """A head-only run caches the frozen backbone's outputs before it trains (timings.feature_cache_s, outside
    train_s): its cost in the comparison is both, or the cheapest-looking strategy is not the cheapest."""
    seconds = {"head_only": (2.0, 5.0), "full": (6.0, 0.0)}  # (train_s, feature_cache_s)

    def fake_train(run_recipe, overwrite):
        tree = run_recipe.dump()
        train_s, cache_s = seconds[tree["strategy"]["name"]]
        return {"recipe": tree, "optim": {"lr": 1e-3}, "params": {"trainable": 10, "total": 100},
                "peak_memory_mb": 50.0, "metrics": {"test": {"accuracy": 0.9, "f1_macro": 0.9, "n": 50},
                                                    "history": [{"split": "validation", "epoch": 1, "step": 9,
                                                                 "loss": 0.4, "accuracy": 0.9}]},
                "timings": {"train_s": train_s, "train_s_per_epoch": train_s, "feature_cache_s": cache_s}}

    result = graft.compare(recipe(target, tmp_path / "cmp", None, train={"epochs": 1}), ["head_only", "full"],
                           train=fake_train)
    rows = {r["label"]: r for r in result["strategies"]}
    assert rows["head_only"]["cost_s"] == pytest.approx(7.0) and rows["full"]["cost_s"] == pytest.approx(6.0)
    assert rows["head_only"]["train_s"] == pytest.approx(2.0)  # training alone is still there, under its name
    table = format_table(result).splitlines()
    assert "cost s" in table[0] and "feature-cache pass" in "\n".join(table)
    assert " 7.0 " in next(line for line in table if line.startswith("head_only"))
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "cost: training + feature cache" in page and "7.0 s <small>(5.0 s cache)</small>" in page
