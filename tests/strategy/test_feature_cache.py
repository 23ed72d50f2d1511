"""The frozen-backbone feature cache gives the uncached run's results, and says when it is off and why."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.recipe import load_recipe
from tests.conftest import PLAIN_NETS, image_recipe, make_label_sets, make_texts, tiny_recipe, write_csv
from tests.strategy.test_matrix import initial_state


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_bert, tiny_resnet, image_folder, plain_checkpoint):
    texts = write_csv(tmp_path_factory.mktemp("text") / "train.csv", make_texts(60, seed=5))
    sets = write_csv(tmp_path_factory.mktemp("sets") / "train.csv", make_label_sets(60, seed=5))
    cnn = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    return {
        "tiny_bert": lambda run: tiny_recipe(tiny_bert, texts, run),  # its head has dropout: same RNG draws
        "tiny_bert_multilabel": lambda run: {**tiny_recipe(tiny_bert, sets, run), "task": "multilabel_classification"},
        "hf_resnet": lambda run: image_recipe({"name": str(tiny_resnet)}, image_folder, run),
        "plain_cnn": lambda run: image_recipe(cnn, image_folder, run),
        "plain_cnn_declared_head": lambda run: image_recipe(
            {**cnn, "head": {"input_from": "block2", "pool": "avgmax", "batchnorm": True, "dropout": 0.2}},
            image_folder, run),
    }


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    model_dir = run_dir / "model"
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_bert_multilabel", "hf_resnet", "plain_cnn",
                                    "plain_cnn_declared_head"])
def test_cached_and_uncached_head_training_agree(family, recipes, tmp_path):
    records, weights = {}, {}
    for cache in (True, False):
        run = tmp_path / f"cache-{cache}"
        tree = recipes[family](run)
        tree["strategy"] = {"name": "head_only", "feature_cache": cache, "probe": "sgd"}  # the loop both ways
        if tree.get("task") == "image_classification":  # the cache stands for un-augmented inputs
            tree["data"]["augment"] = {"crop_scale": None, "hflip": False, "translate": 0}
        recipe = load_recipe(tree)
        state, _ = initial_state(recipe)
        initial = {k.removeprefix("net."): v for k, v in state.items()}  # a plain model is saved as its net
        records[cache] = graft.train(recipe)
        weights[cache] = _final_weights(run)
    assert records[True]["strategy"]["feature_cache"].startswith("on")
    assert records[False]["strategy"]["feature_cache"] is None
    assert weights[True].keys() == weights[False].keys()
    for key in weights[True]:
        torch.testing.assert_close(weights[True][key], weights[False][key], rtol=1e-4, atol=1e-5, msg=key)
    moved = [k for k in weights[True] if not torch.equal(weights[True][k], initial[k])]
    assert moved and all(k.startswith(("classifier", "fc")) for k in moved)  # the head trained, nothing else
    scored = "f1_micro" if records[True]["recipe"]["task"] == "multilabel_classification" else "accuracy"
    for name in ("loss", scored):
        assert records[True]["metrics"]["test"][name] == pytest.approx(records[False]["metrics"]["test"][name],
                                                                     rel=1e-4, abs=1e-5)
    train_loss = [[h["loss"] for h in r["metrics"]["history"] if h["split"] == "train"] for r in records.values()]
    assert train_loss[0] == pytest.approx(train_loss[1], rel=1e-4)


def test_cache_is_not_used_when_the_backbone_trains(recipes, tmp_path):
    tree = recipes["plain_cnn"](tmp_path / "run")
    tree["strategy"] = {"name": "two_phase", "phase_epochs": 1}
    record = graft.train(load_recipe(tree))
    assert record["strategy"]["feature_cache"] is None


def test_cache_is_refused_with_a_reason_when_the_head_is_not_a_plain_chain(tmp_path, tiny_bert):
    """DistilBERT's head applies a ReLU between its modules in forward(): the cache must notice and stay off."""
    from transformers import DistilBertConfig, DistilBertModel

    from tests.conftest import build_tiny_bert

    model_dir = tmp_path / "distil"
    config = DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64)
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(model_dir)
    vocab_source = build_tiny_bert(tmp_path / "bert-vocab")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((vocab_source / name).read_bytes())
    texts = write_csv(tmp_path / "train.csv", make_texts(60, seed=5))
    tree = tiny_recipe(model_dir, texts, tmp_path / "run", strategy={"name": "head_only"}, train={"epochs": 1})
    record = graft.train(load_recipe(tree))
    assert record["strategy"]["feature_cache"].startswith("off: ")
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["strategy"]["feature_cache"] == record["strategy"]["feature_cache"]
