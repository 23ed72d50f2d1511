"""PEFT strategies: a table of cases (method x model family) run against the same shared checks.

Each case trains a few epochs through `graft.train`, then: the loss fell; every pretrained weight is bit-identical
to where it started; the run reloads to the very model that was evaluated; for peft's methods the adapter graft
saved loads in peft itself and gives the same logits, graft's trainable count is peft's own, and (LoRA, IA³) the
merged export gives the logits of the unmerged model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.evaluation.predictions import collect_logits
from graft.models.build import load_model
from graft.recipe import load_recipe
from graft.setup import load_splits
from graft.strategy.peft import MERGEABLE, attach
from graft.trained import batches, open_run
from graft.training.checkpoint import weights_digest
from tests.conftest import (
    PLAIN_NETS,
    SPECIALS,
    build_tiny_bert,
    image_recipe,
    make_label_sets,
    make_texts,
    tiny_recipe,
    write_csv,
)

LOGIT_TOL = 1e-5
"""fp32 logits of the same weights computed through two code paths."""
MERGE_TOL = 1e-4
"""Merging folds B·A into W: one rounding of a sum, so a little looser."""

CASES = {
    "lora-bert": ("bert", {"name": "lora", "lora": {"r": 4}}),
    "lora-bert-multilabel": ("bert_multilabel", {"name": "lora", "lora": {"r": 4}}),
    "dora-bert": ("bert", {"name": "lora", "lora": {"r": 4, "use_dora": True}}),
    "rslora-bert": ("bert", {"name": "lora", "lora": {"r": 4, "use_rslora": True}}),
    "ia3-bert": ("bert", {"name": "ia3"}),
    "prompt-bert": ("bert", {"name": "prompt", "prompt": {"num_virtual_tokens": 4}}, 0.1),
    "ptuning-bert": ("bert", {"name": "ptuning", "prompt": {"num_virtual_tokens": 4, "encoder_hidden_size": 16}}),
    "prefix-bert": ("bert", {"name": "prefix", "prompt": {"num_virtual_tokens": 4}}),
    "houlsby-bert": ("bert", {"name": "adapter", "adapter": {"kind": "houlsby", "reduction": 4}}),
    "pfeiffer-bert": ("bert", {"name": "adapter", "adapter": {"kind": "pfeiffer", "reduction": 4}}),
    "lora-llama": ("llama", {"name": "lora", "lora": {"r": 4}}),
    "prompt-llama": ("llama", {"name": "prompt", "prompt": {"num_virtual_tokens": 4}}, 0.1),
    "prefix-llama": ("llama", {"name": "prefix", "prompt": {"num_virtual_tokens": 4}}),
    "lora-resnet": ("resnet", {"name": "lora", "lora": {"r": 2}}),
    "lora-cnn": ("cnn", {"name": "lora", "lora": {"r": 2}}),
    "ia3-cnn": ("cnn", {"name": "ia3"}),
}


def build_tiny_llama(path: Path, bert_dir: Path) -> Path:
    """A 2-layer Llama classifier base sharing the tiny BERT's vocabulary (its tokenizer, without token types)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(bert_dir, model_input_names=["input_ids", "attention_mask"])
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=SPECIALS.index("[PAD]"))
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_resnet, image_folder, plain_checkpoint):
    root = tmp_path_factory.mktemp("peft")
    bert = build_tiny_bert(root / "bert", dropout=0.0)
    llama = build_tiny_llama(root / "llama", bert)
    texts = write_csv(root / "train.csv", make_texts(90, seed=7))
    sets = write_csv(root / "sets.csv", make_label_sets(90, seed=7))
    cnn = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    return {
        "bert": lambda run: tiny_recipe(bert, texts, run, optim={"lr": 5e-2}, train={"epochs": 6}),
        "bert_multilabel": lambda run: {**tiny_recipe(bert, sets, run, optim={"lr": 5e-2}, train={"epochs": 6}),
                                        "task": "multilabel_classification"},
        "llama": lambda run: tiny_recipe(llama, texts, run, optim={"lr": 5e-2}, train={"epochs": 6}),
        "resnet": lambda run: image_recipe({"name": str(tiny_resnet)}, image_folder, run, train={"epochs": 4}),
        "cnn": lambda run: image_recipe(cnn, image_folder, run, train={"epochs": 4}),
    }


def _untrained(recipe):
    """The model as graft builds it before training: base weights loaded, the method attached (same seed)."""
    from accelerate.utils import set_seed

    set_seed(recipe.train.seed)
    splits = load_splits(recipe)
    loaded = load_model(recipe.model, recipe.task, splits.labels, recipe.data)
    base_state = {k: v.detach().clone() for k, v in loaded.root.named_parameters()}
    base_names = {id(p): n for n, p in loaded.root.named_parameters()}
    attached = attach(loaded.model, loaded.root, loaded.head_modules, recipe.strategy, recipe.task,
                      recipe.model.groups)
    # A parameter keeps its identity when peft wraps its layer: map new names to the base model's.
    return loaded, attached, base_state, {n: base_names.get(id(p)) for n, p in attached.root.named_parameters()}


def _logits(run_dir: Path, model=None) -> torch.Tensor:
    run = open_run(run_dir)
    accelerator, own, loader = batches(run, load_splits(run.recipe).test)
    if model is not None:
        own = accelerator.prepare(model)
    return torch.from_numpy(collect_logits(accelerator, own, loader)[0])


@pytest.mark.parametrize("case", list(CASES))
def test_peft_case(case, recipes, tmp_path):
    family, strategy, *lr = CASES[case]
    run_dir = tmp_path / "run"
    tree = recipes[family](run_dir)
    tree["strategy"] = strategy
    if lr:  # prompt tuning moves a handful of embeddings: it needs a larger step
        tree["optim"] = {**tree["optim"], "lr": lr[0]}
    recipe = load_recipe(tree)
    _, untrained, base_state, base_names = _untrained(recipe)
    record = graft.train(recipe)

    # The loss fell: the method learns on a learnable task (means over the first and last third of the logs).
    losses = [h["loss"] for h in record["metrics"]["history"] if h["split"] == "train"]
    third = max(1, len(losses) // 3)
    assert sum(losses[-third:]) < sum(losses[:third]), losses

    # Only the method's parameters and the head trained; the table says how many.
    groups = {g["name"]: g for g in record["groups"]}
    assert record["params"]["trainable"] == sum(p.numel() for n, p in untrained.root.named_parameters()
                                                if n in untrained.trains)
    assert 0 < record["params"]["trainable"] < record["params"]["total"] / 2 or family == "llama"
    assert groups["head"]["trainable"] > 0

    # The best checkpoint holds what trained; every pretrained weight is left out of it, with a digest of the values
    # it had when saved, which are the untrained model's: bit-identical.
    best = run_dir / "checkpoints" / "best"
    left_out = json.loads((best / "best.json").read_text())["left_out"]
    prefix = "" if untrained.model is untrained.root else "net."
    frozen = [prefix + n for n in base_names if n not in untrained.trains and base_names[n] is not None]
    assert len(frozen) >= len(base_state) // 2
    assert set(frozen) <= set(left_out["names"])
    assert not set(left_out["names"]) & set(load_file(best / "model.safetensors"))
    assert weights_digest(untrained.model, left_out["names"]) == left_out["sha256"]

    # The saved run rebuilds to the model that was evaluated at the end of training.
    assert graft.evaluate(run_dir, raw=True)["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-6)

    method = strategy["name"]
    if untrained.peft_model is None:
        return
    # peft itself loads graft's adapter onto a fresh base and gives the same logits.
    from peft import PeftConfig, PeftModel, get_peft_model

    fresh = load_model(recipe.model, recipe.task, record["data"]["labels"], recipe.data)
    config = PeftConfig.from_pretrained(run_dir / "model")
    config.inference_mode = False
    counted = get_peft_model(fresh.root, config).get_nb_trainable_parameters()
    assert record["params"]["trainable"] == counted[0]
    loaded = load_model(recipe.model, recipe.task, record["data"]["labels"], recipe.data)
    peft_model = PeftModel.from_pretrained(loaded.root, run_dir / "model")
    ours = _logits(run_dir)
    theirs = _logits(run_dir, peft_model if loaded.model is loaded.root else _plain(loaded, peft_model))
    torch.testing.assert_close(theirs, ours, atol=LOGIT_TOL, rtol=0)

    if method in MERGEABLE:
        out = graft.export(run_dir, tmp_path / "merged", merge=True)
        merged = _reload_merged(out, family)
        torch.testing.assert_close(_logits(run_dir, merged), ours, atol=MERGE_TOL, rtol=0)


def _plain(loaded, peft_model):
    from graft.models.plain import PlainClassifier

    return PlainClassifier(peft_model.get_base_model(), loaded.model.head_path, loaded.model.input_from)


def _reload_merged(folder: Path, family: str):
    if family == "cnn":
        from graft.models.build import load_trained

        return load_trained(folder, "image_classification", None).model
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    auto = AutoModelForImageClassification if family == "resnet" else AutoModelForSequenceClassification
    return auto.from_pretrained(folder)


def test_peft_with_a_head_at_ten_times_the_lr(recipes, tmp_path):
    tree = recipes["bert"](tmp_path / "run")
    tree["strategy"] = {"name": "lora", "head_lr_mult": 10}
    record = graft.train(tree)
    lrs = {g["name"]: g["lr"] for g in record["groups"]}
    assert lrs["head"] == pytest.approx(10 * tree["optim"]["lr"])
    assert lrs["bert.encoder.layer.0"] == pytest.approx(tree["optim"]["lr"])


@pytest.mark.parametrize(("strategy", "message"), [
    ({"name": "lora", "freeze_groups": 1}, "already keeps every pretrained weight frozen"),
])
def test_combinations_that_make_no_sense_are_refused(strategy, message, recipes, tmp_path):
    tree = recipes["bert"](tmp_path / "run")
    tree["strategy"] = strategy
    with pytest.raises(graft.GraftError, match=message):
        load_recipe(tree)


@pytest.mark.parametrize(("family", "method", "message"), [
    ("cnn", "prompt", "virtual tokens are for text transformers"),
    ("cnn", "adapter", "no transformer block outputs found"),
])
def test_methods_that_do_not_fit_the_model_are_refused(family, method, message, recipes, tmp_path):
    tree = recipes[family](tmp_path / "run")
    tree["strategy"] = {"name": method}
    with pytest.raises(graft.GraftError, match=message):
        graft.train(tree)
    assert not (tmp_path / "run").exists()


def test_merge_is_refused_for_methods_that_add_layers(recipes, tmp_path):
    tree = recipes["bert"](tmp_path / "run")
    tree["strategy"] = {"name": "adapter"}
    tree["train"] = {**tree["train"], "epochs": 1}
    graft.train(tree)
    with pytest.raises(graft.GraftError, match="adds layers and cannot be merged"):
        graft.export(tmp_path / "run", tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()
    copied = graft.export(tmp_path / "run", tmp_path / "out")  # without --merge: the run's model as it is
    assert (copied / "graft_peft.json").is_file()


def test_adapters_start_as_the_identity(recipes, tmp_path):
    """Up-projections start at zero: with adapters added, the model computes what it computed before."""
    recipe = load_recipe({**recipes["bert"](tmp_path / "run"), "strategy": {"name": "adapter"}})
    splits = load_splits(recipe)
    loaded = load_model(recipe.model, recipe.task, splits.labels, recipe.data)
    batch = {"input_ids": torch.randint(5, 20, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    loaded.model.eval()
    before = loaded.model(**batch).logits
    attached = attach(loaded.model, loaded.root, loaded.head_modules, recipe.strategy, recipe.task, None)
    assert any("_adapter." in n for n in attached.trains)
    assert torch.equal(attached.model(**batch).logits, before)


def test_prefix_that_attends_nowhere_changes_nothing(recipes, tmp_path):
    """Graft's encoder prefix rides in the attention cache; masked out, the model is exactly the base model."""
    from graft.strategy.prefix import PrefixTuned

    recipe = load_recipe(recipes["bert"](tmp_path / "run"))
    loaded = load_model(recipe.model, recipe.task, load_splits(recipe).labels, recipe.data)
    loaded.model.eval()
    ids = torch.randint(5, 20, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    wrapped = PrefixTuned(loaded.model, 3)
    base = loaded.model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():  # a prefix whose mask is zero: reuse forward with a mask we build by hand
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (k, v) in enumerate(wrapped.prefix):
            cache.update(k.unsqueeze(0).expand(2, -1, -1, -1), v.unsqueeze(0).expand(2, -1, -1, -1), layer)
        masked = loaded.model(input_ids=ids, attention_mask=torch.cat([torch.zeros(2, 3, dtype=mask.dtype), mask], 1),
                              position_ids=torch.arange(6).expand(2, -1), cache=cache).logits
        attended = wrapped(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(masked, base, atol=1e-6, rtol=0)
    assert not torch.allclose(attended, base, atol=1e-4)  # attended to, the prefix does change the output


def test_export_through_the_cli(recipes, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from graft.cli import app

    tree = recipes["bert"](tmp_path / "run")
    tree["strategy"] = {"name": "lora"}
    tree["train"] = {**tree["train"], "epochs": 1}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tree))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(tmp_path / "recipe.yaml")]).exit_code == 0
    done = runner.invoke(app, ["export", str(tmp_path / "run"), "--output", str(tmp_path / "out"), "--merge"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "adapter_config.json").exists()
    again = runner.invoke(app, ["export", str(tmp_path / "run"), "--output", str(tmp_path / "out"), "--merge"])
    assert isinstance(again.exception, graft.GraftError) and "already exists" in str(again.exception)
