"""Strategy × model family: what trains, when, at which LR, and what stays put.

Two tiers. The fast one builds every pair through `graft.setup` (no training, no files) and checks the plan against
the strategy's definition, worked out here on its own: the groups cover every parameter exactly once, each group
starts when the strategy says, the optimiser gets only what trains, at the LR ratios the recipe says. The training
tier proves what only training can: after each epoch, groups not yet trained are bit-identical to the pretrained
weights (BatchNorm statistics included) and trained ones moved. It runs every strategy on the plain CNN (BatchNorm,
the fastest), and on the Hugging Face models the strategies that freeze something part of the run.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.data.images import load_image_splits
from graft.models.build import load_model
from graft.recipe import load_recipe
from tests.conftest import (
    PLAIN_NETS,
    image_recipe,
    make_label_sets,
    make_tagged,
    make_texts,
    tiny_recipe,
    write_conll,
    write_csv,
)
from tests.test_regression import regression_recipe, scored_texts, write_scores

EPOCHS = 3
STRATEGIES = {
    "full": {},
    "discriminative": {},
    "head_only": {"feature_cache": False},
    "freeze": {"freeze_groups": 1},
    "two_phase": {"phase_epochs": 1},
    "gradual_unfreeze": {"unfreeze_every": 1},
    "scratch": {},
}
PER_GROUP = {"discriminative", "two_phase", "gradual_unfreeze"}


def expected_start(strategy: str, n_backbone: int, i: int) -> int | None:
    """When backbone group i (0 = nearest the input) starts training, by the strategy's definition."""
    if strategy in ("full", "discriminative", "scratch"):
        return 0
    if strategy == "head_only":
        return None
    if strategy == "freeze":
        return None if i == 0 else 0
    if strategy == "two_phase":
        return 1
    start = n_backbone - i  # gradual_unfreeze: top group after 1 epoch, the next after 2, ...
    return start if start < EPOCHS else None


@pytest.fixture(scope="module")
def family_recipes(tmp_path_factory, tiny_bert, tiny_resnet, image_folder, plain_checkpoint):
    texts = write_csv(tmp_path_factory.mktemp("text") / "train.csv", make_texts(60, seed=5))
    sets = write_csv(tmp_path_factory.mktemp("sets") / "train.csv", make_label_sets(60, seed=5))
    scores = write_scores(tmp_path_factory.mktemp("scores") / "train.csv", scored_texts(60, seed=5))
    tagged = write_conll(tmp_path_factory.mktemp("tagged") / "train.conll", make_tagged(60, seed=5))
    return {
        "tiny_bert": lambda run: tiny_recipe(tiny_bert, texts, run),
        "tiny_bert_multilabel": lambda run: {**tiny_recipe(tiny_bert, sets, run), "task": "multilabel_classification"},
        "tiny_bert_regression": lambda run: regression_recipe(tiny_bert, scores, run,
                                                              data={"target_columns": ["score", "count"]}),
        "tiny_bert_tokens": lambda run: {**tiny_recipe(tiny_bert, tagged, run), "task": "token_classification"},
        "hf_resnet": lambda run: image_recipe({"name": str(tiny_resnet)}, image_folder, run),
        "plain_cnn": lambda run: image_recipe({"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)},
                                              image_folder, run),
    }


FAMILIES = ["tiny_bert", "tiny_bert_multilabel", "tiny_bert_regression", "tiny_bert_tokens", "hf_resnet", "plain_cnn"]
TRAINED = [(s, "plain_cnn") for s in STRATEGIES] + [
    (s, f) for f in ("tiny_bert", "tiny_bert_regression", "tiny_bert_tokens", "hf_resnet")
    for s in ("head_only", "freeze", "two_phase", "gradual_unfreeze")] + [
    (s, "tiny_bert_multilabel") for s in ("head_only", "two_phase")]
"""Pairs the training tier runs: on the Hugging Face models, only strategies that keep something frozen a while."""


def matrix_recipe(family_recipes, strategy: str, family: str, run_dir):
    tree = family_recipes[family](run_dir)
    tree["strategy"] = {"name": strategy, **STRATEGIES[strategy]}
    tree["train"] = {**tree["train"], "epochs": EPOCHS}
    tree["checkpoint"] = {"keep_last": 10}
    tree["optim"] = {**tree["optim"], "weight_decay": 0.0}  # a parameter moves only through its gradient
    return load_recipe(tree)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_plan_of_strategy_on_family(strategy, family, family_recipes, tmp_path):
    from graft.strategy.plan import apply_plan
    from graft.training.optim import param_groups

    recipe = matrix_recipe(family_recipes, strategy, family, tmp_path / "run")
    run = graft.setup(recipe)
    assert not (tmp_path / "run").exists()  # setup writes nothing
    table = run.plan.table(run.root, recipe.optim.lr)
    names = [n for n, _ in run.root.named_parameters()]

    # Groups cover every parameter exactly once.
    covered = [p for g in run.plan.groups for p in g.params]
    assert sorted(covered) == sorted(names) and len(covered) == len(set(covered))
    assert table[-1]["name"] == "head"

    # Each group starts when the strategy says; trainable counts follow.
    backbone = table[:-1]
    starts = [expected_start(strategy, len(backbone), i) for i in range(len(backbone))] + [0]
    assert [g["from_epoch"] for g in table] == starts
    assert sum(g["trainable"] for g in table) == sum(g["params"] for g, s in zip(table, starts, strict=True)
                                                     if s is not None)

    # At each epoch exactly the started groups require grad.
    for epoch in range(EPOCHS):
        apply_plan(run.root, run.plan, epoch)
        grad = {n for n, p in run.root.named_parameters() if p.requires_grad}
        assert grad == {p for g, s in zip(run.plan.groups, starts, strict=True) if s is not None and s <= epoch
                        for p in g.params}

    # The optimiser gets only what ever trains, at the LR ratios the strategy says.
    groups = param_groups(run.root, run.plan, recipe.optim.lr, recipe.optim.weight_decay)
    handed = {id(p) for g in groups for p in g["params"]}
    assert handed == {id(p) for n, p in run.root.named_parameters() if run.plan.ever_trains(n)}
    lrs = {g["name"].partition("/")[0]: g["lr"] for g in groups}
    trained = [g["name"] for g, s in zip(table, starts, strict=True) if s is not None]
    assert list(lrs) == trained
    decay, head_mult = (10 ** (1 / (len(table) - 2)), 10.0) if strategy in PER_GROUP else (1.0, 1.0)
    for lower, upper in itertools.pairwise(trained[:-1]):
        assert lrs[upper] / lrs[lower] == pytest.approx(decay)
    if len(trained) > 1:
        assert lrs["head"] / lrs[trained[-2]] == pytest.approx(head_mult)


@pytest.mark.parametrize(("strategy", "family"), TRAINED)
def test_training_moves_only_what_the_plan_trains(strategy, family, family_recipes, tmp_path):
    recipe = matrix_recipe(family_recipes, strategy, family, tmp_path / "run")
    initial, names = initial_state(recipe)
    record = graft.train(recipe)
    groups = record["groups"]
    backbone = [g for g in groups if g["name"] != "head"]
    assert sum(g["params"] for g in groups) == record["params"]["total"] == sum(initial[n].numel() for n in names)
    starts = [expected_start(strategy, len(backbone), i) for i in range(len(backbone))] + [0]
    assert [g["from_epoch"] for g in groups] == starts
    lrs = next(h for h in record["metrics"]["history"] if h["split"] == "train")["lr"]
    assert list(lrs) == [g["name"] for g, s in zip(groups, starts, strict=True) if s is not None]

    # After each epoch: groups not yet trained are bit-identical to the start, trained ones have moved.
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == EPOCHS
    # A checkpoint leaves out the weights that never train (left_out.json names them): only those may be missing.
    for epoch, ckpt in enumerate(checkpoints, start=1):
        weights = load_file(str(ckpt / "model.safetensors"))
        left_out = set(json.loads((ckpt / "left_out.json").read_text())[0]["names"])
        for group, start in zip(groups, starts, strict=True):
            keys = _group_keys(group["name"], {**weights, **dict.fromkeys(left_out)}, recipe)
            assert keys, group["name"]
            if left_out & set(keys):
                assert start is None, f"{group['name']} trains from epoch {start}, yet its weights were left out"
            moved = [k for k in keys if k not in left_out and not torch.equal(weights[k], initial[k])]
            if start is None or start >= epoch:
                assert moved == [], f"epoch {epoch}: {group['name']} should be frozen"
            else:
                assert moved, f"epoch {epoch}: {group['name']} should have trained"


def initial_state(recipe) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights a run starts from, built the way train() builds them (same seed), and the parameter names."""
    from accelerate.utils import set_seed

    from graft.setup import load_splits

    set_seed(recipe.train.seed)
    labels = load_splits(recipe).labels
    loaded = load_model(recipe.model, recipe.task, labels, recipe.data, scratch=recipe.strategy.name == "scratch")
    state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    return state, [n for n, _ in loaded.model.named_parameters()]


def _group_keys(group: str, weights: dict[str, torch.Tensor], recipe) -> list[str]:
    """State keys (parameters and buffers) of a group, by its module path; the head by the model's head modules."""
    plain = recipe.model.is_factory
    if group == "head":
        heads = ["net.fc"] if plain else (["classifier"] if recipe.task == "image_classification" else
                                          ["classifier", "dropout"])
        return [k for k in weights if any(k.startswith(h + ".") for h in heads)]
    prefix = f"net.{group}." if plain else f"{group}."
    nested = [k for k in weights if k.startswith(prefix)]
    if group.endswith(("encoder", "transformer")):  # the owner of the block list holds only what is outside it
        return []
    return nested


def test_run_record_lists_groups(tmp_path, family_recipes):
    record = graft.train(load_recipe(family_recipes["plain_cnn"](tmp_path / "run")))
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [g["name"] for g in saved["groups"]] == ["conv1", "bn1", "block1", "block2", "head"]
    assert saved["groups"] == record["groups"]
    assert all(set(g) == {"name", "params", "trainable", "from_epoch", "lr"} for g in saved["groups"])


def test_image_splits_fixture_is_what_the_matrix_trains_on(image_folder):
    splits = load_image_splits(image_folder, None, None, split=(0.7, 0.15, 0.15), seed=0)
    assert splits.labels == ["blue", "green", "red"] and len(splits.train) == 30
