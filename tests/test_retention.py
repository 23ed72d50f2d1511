"""Forgetting, measured and guarded: the guards' maths known by construction, replay's batch shares, retention
exactly 1 when nothing moves, each guard's curve in the logs, bit-exact resume with every guard on, and bad input
refused in one line before anything is loaded or written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import graft
from graft.compare import format_table
from graft.recipe import load_recipe
from graft.retention.fisher import FISHER_FILE, fisher_diagonal
from graft.retention.guards import distillation_loss, l2sp_penalty
from graft.retention.source import SourceHead, Tap
from graft.setup import Setup, setup
from graft.training.loop import MIXED
from tests.conftest import (
    COLOURS,
    KEYWORDS,
    PLAIN_NETS,
    build_tiny_bert,
    error_of,
    image_recipe,
    make_images,
    make_texts,
    tiny_recipe,
    write_csv,
)
from tests.e2e.test_resume import StopAt, assert_identical, weights

SOURCE = list(KEYWORDS)
"""The source head's classes: the tiny BERT classifier below knows billing, delivery and login."""


@pytest.fixture(scope="module")
def source_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a classifier whose config names its head's rows (random, as the whole model is)."""
    from transformers import BertForSequenceClassification

    path = build_tiny_bert(tmp_path_factory.mktemp("source-bert"))
    model = BertForSequenceClassification.from_pretrained(path, num_labels=len(SOURCE),
                                                          id2label=dict(enumerate(SOURCE)),
                                                          label2id={n: i for i, n in enumerate(SOURCE)})
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A new task (is it about money?) and source data in the source head's classes."""
    folder = tmp_path_factory.mktemp("retention-texts")
    new = [(text, "money" if label == "billing" else "other") for text, label in make_texts(72, seed=5)]
    return SimpleNamespace(new=write_csv(folder / "new.csv", new),
                           source=write_csv(folder / "source.csv", make_texts(30, seed=9)))


def text_recipe(model: Path, texts: SimpleNamespace, run_dir: Path, retention: dict | None = None,
                **sections: dict) -> dict:
    train = {"epochs": 2, "batch_size": 8, "log_every": 3, **sections.pop("train", {})}
    tree = tiny_recipe(model, texts.new, run_dir, train=train, **sections)
    tree["retention"] = {"data": str(texts.source), "ewc": {"examples": 8}, **(retention or {})}
    return tree


def history(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# The guards' maths, known by construction.

def test_l2sp_is_zero_at_the_start_and_pulls_back_in_proportion():
    torch.manual_seed(0)
    start = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    trained = {n: v.clone().requires_grad_(True) for n, v in start.items()}
    head = {"h": torch.randn(2, 4, requires_grad=True)}
    assert l2sp_penalty(trained, start, head, 0.1, 0.0).item() == 0.0
    with torch.no_grad():
        for p in trained.values():
            p.add_(torch.randn_like(p))
    penalty = l2sp_penalty(trained, start, head, 0.1, 0.01)
    penalty.backward()
    for name, p in trained.items():
        torch.testing.assert_close(p.grad, 0.1 * (p.detach() - start[name]))
    torch.testing.assert_close(head["h"].grad, 0.01 * head["h"].detach())


def test_distillation_from_oneself_is_zero_with_zero_gradient():
    logits = torch.randn(5, 4, requires_grad=True)
    loss = distillation_loss(logits, logits.detach().clone(), temperature=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert logits.grad.abs().max().item() < 1e-7


def test_distillation_is_t_squared_times_the_kl_divergence():
    torch.manual_seed(1)
    student, teacher, t = torch.randn(6, 3), torch.randn(6, 3), 3.0
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    expected = t * t * (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)


class LinearSoftmax(nn.Module):
    """Logits W x + b, read by an identity source head through the tap on `reads`: a softmax regression in W."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.body = nn.Linear(d, k)
        self.reads = nn.Identity()

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.reads(self.body(x)))


def test_fisher_of_a_softmax_regression_is_the_analytic_one():
    torch.manual_seed(2)
    d, k, n = 5, 3, 40
    model = LinearSoftmax(d, k)
    identity = nn.Linear(k, k)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(k))
        identity.bias.zero_()
    head = SourceHead(identity, ["a", "b", "c"], Tap(model.reads))
    x = torch.randn(n, d)
    batches = [{"x": x[:25], "labels": torch.zeros(25)}, {"x": x[25:], "labels": torch.zeros(15)}]
    params = {n_: p.detach().clone() for n_, p in model.named_parameters()}
    fisher = fisher_diagonal(model, head, batches, params, limit=n)
    # d log p_y / d W[c, j] = (1[c = y] - p_c) x_j, so E_y over p of its square is p_c (1 - p_c) x_j^2.
    p = torch.softmax(x @ params["body.weight"].T + params["body.bias"], dim=1).double()
    expected_w = (p * (1 - p)).T @ x.double().square() / n
    expected_b = (p * (1 - p)).mean(0)
    torch.testing.assert_close(fisher["body.weight"].double(), expected_w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fisher["body.bias"].double(), expected_b, rtol=1e-5, atol=1e-7)
    first = fisher_diagonal(model, head, batches, params, limit=10)  # the first 10 examples only
    q = p[:10]
    torch.testing.assert_close(first["body.bias"].double(), (q * (1 - q)).mean(0), rtol=1e-5, atol=1e-7)


# Replay's share of every batch.

@pytest.mark.parametrize("share", [0.25, 0.5])
def test_replay_batches_hold_exactly_the_configured_share(share: float, source_bert, texts, tmp_path):
    run = setup(load_recipe(text_recipe(source_bert, texts, tmp_path / "run", {"guard": "replay",
                                                                               "replay": {"share": share}})))
    k = round(share * 8)
    batches = list(run.train_loader)
    assert all(len(b[MIXED]["labels"]) == k for b in batches)
    assert all(len(b["labels"]) == 8 - k for b in batches[:-1])
    assert sum(len(b["labels"]) for b in batches) == len(run.splits.train)  # every new-task example, once
    replayed = [int(y) for b in batches for y in b[MIXED]["labels"]]
    assert set(replayed) <= set(range(len(SOURCE)))  # in the source head's classes
    assert not (tmp_path / "run").exists()


# Retention measured.

def freeze_by_learning_rate(run: Setup) -> None:
    """Every group at LR 0: no weight moves (optim.lr cannot be 0 in a recipe)."""
    run.plan.lr_scale = dict.fromkeys(run.plan.lr_scale, 0.0)


def test_nothing_trained_retains_exactly_everything(source_bert, texts, tmp_path):
    record = graft.train(text_recipe(source_bert, texts, tmp_path / "run"), prepare=freeze_by_learning_rate)
    retention = record["metrics"]["retention"]
    assert retention["ratio"] == 1.0 and retention["before"] == retention["after"]
    assert [h["ratio"] for h in retention["history"]] == [1.0] * 3  # before training, after each of 2 epochs
    assert retention["n"] == 15 and retention["guarded_n"] == 15 and retention["labels"] == SOURCE  # half held out
    assert retention["feature_cosine"] == pytest.approx(1.0)  # the features never moved
    assert retention["refit"]["after"] == retention["refit"]["before"] is not None


def test_retention_is_recorded_and_reported(source_bert, texts, tmp_path):
    record = graft.train(text_recipe(source_bert, texts, tmp_path / "run"))
    retention = record["metrics"]["retention"]
    rows = history(tmp_path / "run", "retention")
    validation = history(tmp_path / "run", "validation")
    assert [r["step"] for r in rows] == [0, *(r["step"] for r in validation)]
    assert retention["before"] == rows[0]["accuracy"]
    assert retention["ratio"] == pytest.approx(retention["after"] / retention["before"])
    assert [h["accuracy"] for h in retention["history"]] == [r["accuracy"] for r in rows]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Forgetting" in page and "retention" in page


def test_every_guard_adds_its_own_curve(source_bert, texts, tmp_path):
    guards = ["replay", "distill", "l2sp", "ewc"]
    record = graft.train(text_recipe(source_bert, texts, tmp_path / "run", {"guard": guards}))
    logged = history(tmp_path / "run", "train")
    assert logged and all({f"loss_{g}" for g in [*guards, "task"]} <= set(r) for r in logged)
    for r in logged:
        assert r["loss"] == pytest.approx(sum(r[f"loss_{g}"] for g in [*guards, "task"]), rel=1e-5)
        assert r["loss_replay"] > 0 and r["loss_distill"] >= 0
    assert logged[0]["loss_l2sp"] > 0  # the head's plain L2, from the first step
    assert record["metrics"]["retention"]["guards"] == ["distill", "replay", "l2sp", "ewc"]
    assert record["optim"]["weight_decay"] == 0.0  # l2sp replaces it
    assert (tmp_path / "run" / FISHER_FILE).is_file()


def test_resume_is_exact_with_every_guard_on(source_bert, texts, tmp_path, monkeypatch):
    guards = {"guard": ["replay", "distill", "l2sp", "ewc"], "replay": {"share": 0.5}}  # 4 + 4: whole batches
    every3 = {"checkpoint": {"every_steps": 3}}
    graft.train(text_recipe(source_bert, texts, tmp_path / "whole", guards, **every3))
    broken = text_recipe(source_bert, texts, tmp_path / "broken", guards, **every3)
    with pytest.raises(KeyboardInterrupt):
        graft.train(broken, hooks=[StopAt(7)])
    fisher = weights(tmp_path / "broken", FISHER_FILE)

    def computed_again(*args, **kwargs):
        raise AssertionError("the Fisher information was computed again on resume")

    monkeypatch.setattr("graft.retention.fisher.fisher_diagonal", computed_again)
    resumed = graft.train(broken, resume=True)
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "broken"))
    assert_identical(weights(tmp_path / "whole", FISHER_FILE), fisher)
    untimed = [[{k: v for k, v in r.items() if k != "samples_per_s"} for r in history(tmp_path / d, "train")]
               for d in ("whole", "broken")]
    assert untimed[0] == untimed[1]
    whole = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert resumed["metrics"]["retention"] == whole["metrics"]["retention"]


# Images: a plain CNN, its BatchNorm statistics, replay into augmented batches.

@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("retention-images")
    return SimpleNamespace(new=make_images(folder / "train", per_class=10, seed=3),
                           source=make_images(folder / "source", per_class=6, seed=8))


def cnn_recipe(checkpoint: Path, colours: SimpleNamespace, run_dir: Path, retention: dict) -> dict:
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(checkpoint),
             "source_labels": [*COLOURS, "yellow"]}  # the checkpoint's 4 rows
    return image_recipe(model, colours.new, run_dir, optim={"name": "sgd", "lr": 0.05},
                        train={"epochs": 2, "batch_size": 8, "log_every": 2, "precision": "fp32"},
                        retention={"data": str(colours.source), **retention})


def test_kept_batchnorm_statistics_retain_exactly_everything(plain_checkpoint, colours, tmp_path):
    kept = graft.train(cnn_recipe(plain_checkpoint, colours, tmp_path / "kept", {"freeze_bn": True}),
                       prepare=freeze_by_learning_rate)
    retention = kept["metrics"]["retention"]
    assert retention["after"] == retention["before"]  # the random head scores 0 here, so the ratio is undefined
    assert retention["loss"] == history(tmp_path / "kept", "retention")[0]["loss"]
    graft.train(cnn_recipe(plain_checkpoint, colours, tmp_path / "moved", {}), prepare=freeze_by_learning_rate)
    saved = torch.load(plain_checkpoint, weights_only=True)["state_dict"]
    start = {k.removeprefix("module."): v for k, v in saved.items()}
    statistics = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert statistics
    # No weight moved at LR 0; BatchNorm statistics follow the new data unless they are kept.
    assert all(torch.equal(weights(tmp_path / "kept")[k], start[k]) for k in statistics)
    assert not any(torch.equal(weights(tmp_path / "moved")[k], start[k]) for k in statistics)


def test_guards_train_a_plain_cnn_on_augmented_images(plain_checkpoint, colours, tmp_path):
    guards = ["replay", "distill", "ewc"]
    record = graft.train(cnn_recipe(plain_checkpoint, colours, tmp_path / "run", {"guard": guards, "freeze_bn": True}))
    logged = history(tmp_path / "run", "train")
    assert all({"loss_replay", "loss_distill", "loss_ewc"} <= set(r) for r in logged)
    retention = record["metrics"]["retention"]
    assert retention["n"] == 9 and 0 <= retention["after"] <= 1


# Bad input: one line, before anything is loaded or written.

@pytest.mark.parametrize(("retention", "sections", "expected"), [
    ({"guard": "replay", "data": None}, {}, r"retention.guard: guard replay .* set retention.data"),
    ({}, {"strategy": {"name": "scratch"}}, "no pretrained skill to retain"),
    ({"guard": "l2sp"}, {"strategy": {"name": "head_only"}}, "nothing can be forgotten"),
    ({"guard": "replay"}, {"train": {"batch_size": 1}}, "batch_size must be 2 or more"),
])
def test_a_recipe_that_cannot_retain_is_refused(retention, sections, expected, source_bert, texts, tmp_path):
    assert re.search(expected, error_of(graft.train, text_recipe(source_bert, texts, tmp_path / "run", retention,
                                                                 **sections)))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("model", "expected"), [
    ({"checkpoint": None}, "without model.checkpoint has no pretrained head"),
    ({"head": {"input_from": "block1", "pool": "avg"}}, "model.head.input_from feeds the new head"),
])
def test_a_plain_module_whose_head_cannot_be_kept_is_refused(model, expected, plain_checkpoint, colours, tmp_path):
    tree = cnn_recipe(plain_checkpoint, colours, tmp_path / "run", {})
    tree["model"] = {**tree["model"], **model}
    assert expected in error_of(graft.train, tree)
    assert not (tmp_path / "run").exists()


def test_source_labels_the_head_does_not_know_are_refused_before_the_model_loads(source_bert, texts, tmp_path,
                                                                                 monkeypatch):
    foreign = write_csv(tmp_path / "foreign.csv", [*make_texts(6, seed=2), ("my parcel is late", "shipping")])
    monkeypatch.setattr("graft.models.build.load_classifier", lambda *a, **k: pytest.fail("the model was loaded"))
    message = error_of(graft.train, text_recipe(source_bert, texts, tmp_path / "run", {"data": str(foreign)}))
    assert message.startswith("retention.data:") and "'shipping'" in message
    assert not (tmp_path / "run").exists()


def test_a_head_named_but_not_in_the_checkpoint_is_refused(tiny_bert, texts, tmp_path):
    bare = text_recipe(tiny_bert, texts, tmp_path / "run")
    bare["model"]["source_labels"] = SOURCE  # named, but the bare encoder's checkpoint has no head
    assert "has no output layer at classifier to keep" in error_of(graft.train, bare)
    assert not (tmp_path / "run").exists()


def test_an_encoder_without_a_head_is_measured_by_a_probe(tiny_bert, texts, tmp_path):
    """A bare encoder (its config names no classes): a probe fitted on its original features of the guarded half
    is the source head; nothing trained, it reads exactly what it read before."""
    record = graft.train(text_recipe(tiny_bert, texts, tmp_path / "run"), prepare=freeze_by_learning_rate)
    retention = record["metrics"]["retention"]
    assert retention["probe"] is True and retention["labels"] == SOURCE  # the data's own classes
    assert retention["ratio"] == 1.0 and retention["before"] > 1 / 3  # the probe learnt something of the task
    assert retention["refit"]["after"] == retention["refit"]["before"]


def test_guards_never_see_the_examples_retention_is_measured_on(source_bert, texts, tmp_path):
    from graft.retention.source import read_source
    from graft.tasks import get_task

    recipe = load_recipe(text_recipe(source_bert, texts, tmp_path / "run", {"guard": ["replay", "ewc"]}))
    source = read_source(recipe, get_task(recipe.task))
    measured, guarded = set(source.measured["text"]), set(source.guarded["text"])
    assert not measured & guarded and len(measured) + len(guarded) == 30
    for label in range(len(SOURCE)):  # stratified: every class split in half
        assert source.measured["label"].count(label) == source.guarded["label"].count(label)
    run = setup(recipe)
    assert len(run.train_loader.dataset.second) == len(guarded)  # replay draws from the guarded half only
    assert len(run.evaluations[0].loader.dataset) == len(measured)


def test_a_head_with_other_rows_than_the_classes_named_is_refused(plain_checkpoint, colours, tmp_path):
    tree = cnn_recipe(plain_checkpoint, colours, tmp_path / "run", {})
    tree["model"]["source_labels"] = list(COLOURS)
    assert "has 4 output rows, but 3 source classes are named" in error_of(graft.train, tree)
    assert not (tmp_path / "run").exists()


def test_retention_data_in_a_recipe_file_is_relative_to_it(tmp_path):
    (tmp_path / "r.yaml").write_text("data: {train: new.csv}\nretention: {data: old/, guard: [distill, replay]}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.retention.data == tmp_path / "old" and recipe.retention.guard == ["distill", "replay"]
    assert load_recipe(tmp_path / "r.yaml", ["retention.guard=none"]).retention.guard == []


# Compare: a retention column, words, and the trade-off chart.

def test_compare_sets_retention_beside_new_task_accuracy(source_bert, texts, tmp_path):
    scores = {"full": (0.90, 0.60), "distill": (0.89, 0.95), "l2sp": (0.80, 0.90)}  # (accuracy, retention)

    def fake_train(run_recipe, overwrite):
        tree = run_recipe.dump()
        accuracy, ratio = scores[Path(tree["output"]["dir"]).name]
        test = {"accuracy": accuracy, "f1_macro": accuracy, "n": 1000}
        return {"recipe": tree, "optim": {"lr": 1e-3}, "params": {"trainable": 10, "total": 100},
                "peak_memory_mb": 50.0, "metrics": {"test": test, "history": [], "retention": {"ratio": ratio}},
                "timings": {"train_s": 1.0, "train_s_per_epoch": 1.0, "feature_cache_s": 0.0}}

    strategies = ["full", *({"label": g, "strategy": {"name": "full"}, "retention": {"guard": g}} for g in scores
                            if g != "full")]
    result = graft.compare(text_recipe(source_bert, texts, tmp_path / "cmp"), strategies, train=fake_train)
    assert {r["label"]: r["retention"] for r in result["strategies"]} == {"full": 0.60, "distill": 0.95, "l2sp": 0.90}
    assert "forgetting: distill keeps the most of the source task (retention 0.950), full the least (0.600)" \
        in result["verdict"]
    # 0.90 and 0.89 on 1,000 test examples are level; of those two, distill keeps more.
    assert "of the strategies level on the new task (full, distill), distill keeps the most of the source task " \
           "(0.950)" in result["verdict"]
    assert "retention" in format_table(result).splitlines()[0]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "retention (source task)" in page and "top right is best" in page and page.count("<svg") == 1


# Under torchrun: the same guarded training on 2 processes as on 1.

@pytest.mark.distributed
def test_guards_train_the_same_on_two_processes(tmp_path):
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification

    model = build_tiny_bert(tmp_path / "bert", dropout=0.0)
    BertForSequenceClassification.from_pretrained(model, num_labels=3, id2label=dict(enumerate(SOURCE)),
                                                  label2id={n: i for i, n in enumerate(SOURCE)}).save_pretrained(model)
    rows = [(text, "money" if label == "billing" else "other") for text, label in make_texts(88, seed=5)]
    data = SimpleNamespace(new=write_csv(tmp_path / "train.csv", rows[:64]),  # 8 whole batches of 8
                           source=write_csv(tmp_path / "source.csv", make_texts(20, seed=9)))
    splits = {"validation": str(write_csv(tmp_path / "val.csv", rows[64:76])),
              "test": str(write_csv(tmp_path / "test.csv", rows[76:]))}
    guards = {"guard": ["replay", "distill", "l2sp", "ewc"], "replay": {"share": 0.5}}  # 4 + 4: whole batches

    def tree(run_dir: Path) -> dict:
        # SGD: Adam would turn the float noise in the attention key biases' gradient (0 in exact arithmetic: softmax
        # ignores them) into whole steps, which differ between 1 and 2 processes.
        recipe = text_recipe(model, data, run_dir, guards, data=splits, checkpoint={"every_steps": 4},
                             optim={"name": "sgd", "lr": 0.05})
        recipe["data"]["train"] = str(data.new)
        return recipe

    single = graft.train(tree(tmp_path / "one"))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tree(tmp_path / "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(sys.executable).parent / "graft"), "train", str(tmp_path / "recipe.yaml")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["environment"]["num_processes"] == 2
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    # Gathered over both processes, each held-out example counted once (11 of 20: half of each class, rounded).
    assert record["metrics"]["retention"]["n"] == single["metrics"]["retention"]["n"] == 11
    assert record["metrics"]["retention"]["after"] == pytest.approx(single["metrics"]["retention"]["after"])


# A causal language model: its perplexity on retain conversations.

def test_a_language_model_retains_its_perplexity_and_is_guarded(tmp_path):
    from tests.test_causal_lm import PAIRS, build_tiny_lm, lm_recipe

    model = build_tiny_lm(tmp_path / "lm", "gpt2")
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS[:2] * 4))
    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS[2:] * 2))
    tree = lm_recipe(model, new, tmp_path / "still", train={"epochs": 2}, retention={"data": str(retain)})
    still = graft.train(tree, prepare=freeze_by_learning_rate)["metrics"]["retention"]
    assert still["metric"] == "perplexity" and still["ratio"] == 1.0 and still["n"] == 2  # half of 4, held out
    tree = lm_recipe(model, new, tmp_path / "guarded", train={"epochs": 2},
                     retention={"data": str(retain), "guard": ["replay", "distill", "l2sp"]})
    guarded = graft.train(tree)
    logged = history(tmp_path / "guarded", "train")
    assert all({"loss_replay", "loss_distill", "loss_l2sp"} <= set(r) for r in logged)
    retention = guarded["metrics"]["retention"]
    assert retention["ratio"] == pytest.approx(retention["before"] / retention["after"])
    assert "perplexity before ÷ now" in (tmp_path / "guarded" / "report.html").read_text()
    tree["retention"]["guard"] = ["ewc"]
    assert "over a language model's vocabulary it is out of reach" in error_of(graft.train, tree)
