"""graft advise: LogME against the published evidence formula, features that transfer outranking random ones, the
quadrant table, the whole command on tiny text, image and language models (reading the data once, writing only its
own folder), --verify through compare, and the errors a user can cause.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import minimize
from torch import nn
from typer.testing import CliRunner

import graft
from graft.advise.logme import logme
from graft.advise.recommend import LMSignals, Signals, recommend, recommend_lm
from graft.cli import app
from graft.recipe import STRATEGIES, load_recipe
from tests.conftest import (
    PLAIN_NETS,
    error_of,
    image_recipe,
    make_texts,
    tiny_recipe,
    write_csv,
)

# --- LogME -------------------------------------------------------------------------------------------------------


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence per example written out (You et al. 2021, eq. 2): A = alpha I + beta F^T F, m = beta A^-1
    F^T y, with a determinant and a solve in the d-dimensional weight space."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return float(d / 2 * math.log(alpha) + n / 2 * math.log(beta) - np.linalg.slogdet(a)[1] / 2
                 - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - n / 2 * math.log(2 * math.pi)) / n


def brute_force_maximum(f: np.ndarray, y: np.ndarray) -> float:
    """The largest direct evidence over a grid of (log alpha, log beta), polished by Nelder-Mead from the best
    grid point: no fixed point involved."""
    grid = np.linspace(-12, 12, 49)
    _, start = max((direct_evidence(f, y, math.exp(a), math.exp(b)), (a, b)) for a in grid for b in grid)
    found = minimize(lambda p: -direct_evidence(f, y, math.exp(p[0]), math.exp(p[1])), start, method="Nelder-Mead",
                     options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20_000})
    return -float(found.fun)


@pytest.mark.parametrize("n, d", [(150, 12), (30, 60)], ids=["more examples than features", "fewer"])
def test_logme_is_the_maximum_of_the_published_evidence(n, d):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d)
    labels = (f[:, 0] + f[:, 1] + rng.normal(size=n) > 0).astype(int) + (f[:, 2] > 1.0)
    result = logme(f, labels)
    for c, (evidence, alpha, beta) in enumerate(zip(result.evidence, result.alpha, result.beta, strict=True)):
        y = (labels == c).astype(float)
        assert evidence == pytest.approx(direct_evidence(f, y, alpha, beta), abs=1e-6)
        assert evidence == pytest.approx(brute_force_maximum(f, y), abs=1e-6)
    assert result.score == pytest.approx(np.mean(result.evidence))


def test_logme_scores_true_labels_above_shuffled_ones():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 16))
    labels = np.digitize(f[:, :3] @ np.array([1.0, -0.5, 0.8]), [-0.8, 0.8])  # three classes
    shuffled = rng.permutation(labels)
    assert logme(f, labels).score > logme(f, shuffled).score + 0.05


def test_features_trained_on_a_related_task_outrank_random_ones():
    """Task A: which of four hidden directions of the input is largest in size; task B, never trained on: is the
    first larger than the second. A backbone trained briefly on A carries |z_i|, which B needs; a random one does
    not. LogME and the probe both rank the trained features first."""
    from graft.advise.advisor import probe_accuracy
    from graft.advise.features import Features, Source

    torch.manual_seed(0)
    hidden = torch.randn(4, 20)
    x_a = torch.randn(2000, 20)
    y_a = (x_a @ hidden.T).abs().argmax(1)

    def backbone() -> nn.Sequential:
        return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU())

    trained, fresh = backbone(), backbone()
    head = nn.Linear(16, 4)
    optimizer = torch.optim.Adam([*trained.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(300):
        i = torch.randint(0, 2000, (128,))
        loss = nn.functional.cross_entropy(head(trained(x_a[i])), y_a[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_b = torch.randn(600, 20)
    z_b = x_b @ hidden.T
    y_b = (z_b[:, 0].abs() > z_b[:, 1].abs()).long()
    scores = {}
    with torch.no_grad():
        for name, net in (("trained", trained), ("random", fresh)):
            f = net(x_b)
            source = Source(name, 0, "", f[:400], f[400:])
            scores[name] = (logme(f[:400].numpy(), y_b[:400].numpy()).score,
                            probe_accuracy(source, Features([source], y_b[:400], y_b[400:], 0.0), 2, None))
    assert scores["trained"][0] > scores["random"][0] + 0.1
    assert scores["trained"][1] > scores["random"][1] + 0.1


# --- The quadrants -----------------------------------------------------------------------------------------------

def signals(per_class: int, probe: float, random_probe: float, **kw) -> Signals:
    return Signals(**{"per_class": per_class, "probe": probe, "random_probe": random_probe, "baseline": 0.5,
                      "n_validation": 1000, "groups": 7, "transfer_depth": 3, **kw})


QUADRANTS = [
    # (signals, strategy, runner-up, quadrant)
    (signals(300, 0.96, 0.70), "head_only", "full", "little data, similar domain"),
    (signals(300, 0.75, 0.60), "discriminative", "full", "little data, similar domain"),
    (signals(5000, 0.96, 0.70), "full", "head_only", "much data, similar domain"),
    (signals(5000, 0.75, 0.60), "discriminative", "full", "much data, similar domain"),
    (signals(300, 0.71, 0.70), "freeze", "full", "little data, different domain"),
    (signals(5000, 0.71, 0.70), "scratch", "full", "much data, different domain"),
    (signals(300, 0.60, 0.70), "freeze", "full", "little data, different domain"),  # random beats pretrained
    (signals(5000, 0.75, 0.60, full_fits=False), "lora", "head_only", "much data, similar domain"),
    (signals(300, 0.96, 0.70, full_fits=False), "head_only", "lora", "little data, similar domain"),
    # a 4-class task: a baseline of 0.25, so 0.85 removes 80% of its errors
    (signals(200, 0.85, 0.50, baseline=0.25), "head_only", "full", "little data, similar domain"),
]


@pytest.mark.parametrize("given, strategy, runner_up, quadrant", QUADRANTS)
def test_the_quadrant_table(given, strategy, runner_up, quadrant):
    advice = recommend(given)
    assert (advice.strategy, advice.runner_up, advice.quadrant) == (strategy, runner_up, quadrant)
    assert advice.fragment["strategy"]["name"] == strategy and strategy in STRATEGIES
    assert advice.runner_up_fragment["strategy"]["name"] == runner_up
    assert len(advice.reasons) == 4 and all(advice.reasons)
    assert bool(advice.warnings) == quadrant.endswith("different domain")  # negative transfer, said
    load_recipe({"data": {"train": "x.csv"}, **advice.fragment})  # the fragment is a valid recipe fragment


def test_fragments_say_what_to_freeze_where_the_lr_comes_from_and_the_pooling():
    different = recommend(signals(300, 0.71, 0.70, transfer_depth=9, pooling="cls"))
    assert different.fragment == {"strategy": {"name": "freeze", "freeze_groups": 6}, "optim": {"lr": "auto"},
                                  "model": {"pooling": "cls"}}  # never every group: the top one trains
    assert recommend(signals(300, 0.71, 0.70, transfer_depth=0)).fragment["strategy"]["freeze_groups"] == 1
    assert recommend(signals(300, 0.96, 0.70)).fragment == {"strategy": {"name": "head_only", "probe": "exact"}}


def test_noise_decides_what_counts_as_similar():
    """The same +0.05 gap is clear on 2,000 validation examples and within noise on 50."""
    assert recommend(signals(300, 0.75, 0.70, n_validation=2000)).quadrant.endswith("similar domain")
    assert recommend(signals(300, 0.75, 0.70, n_validation=50)).quadrant.endswith("different domain")


GIB = 2**30
LM_CASES = [
    # (response tokens, loss, full fits, strategy, runner-up)
    (20_000, 2.0, True, "lora", "full"),  # knows the answers, little data
    (2_000_000, 2.0, True, "full", "lora"),
    (2_000_000, 2.0, False, "lora", "prompt"),
    (20_000, 9.5, True, "freeze", "full"),  # near ln(32000) = 10.4: knows nothing
    (2_000_000, 9.5, True, "scratch", "full"),
]


@pytest.mark.parametrize("tokens, loss, fits, strategy, runner_up", LM_CASES)
def test_the_language_model_table(tokens, loss, fits, strategy, runner_up):
    memory = {"full": 16 * GIB if fits else 160 * GIB, "lora": 4 * GIB, "prompt": 4 * GIB}
    advice = recommend_lm(LMSignals(examples=1000, response_tokens=tokens, loss=loss, vocabulary=32000,
                                    memory=memory, available=80 * GIB, groups=24))
    assert (advice.strategy, advice.runner_up) == (strategy, runner_up)
    assert any("MB" in reason for reason in advice.reasons)  # the memory estimates are part of the reasons
    assert bool(advice.warnings) == (loss > 5)


# --- The command, on tiny models ---------------------------------------------------------------------------------

@pytest.fixture
def texts(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", make_texts(150, seed=1))


def test_advise_reads_the_data_once_and_writes_only_its_folder(tiny_bert, texts, tmp_path, monkeypatch):
    from graft.data import tables

    reads: Counter[str] = Counter()
    read_file = tables._read_file

    def counted(path, fmt):
        reads[str(path)] += 1
        return read_file(path, fmt)

    monkeypatch.setattr(tables, "_read_file", counted)
    result = graft.advise(tiny_recipe(tiny_bert, texts, tmp_path / "runs" / "mine"))
    assert reads == {str(texts): 1}
    folder = tmp_path / "runs" / "advise-mine"
    assert result["folder"] == str(folder) and sorted(p.name for p in folder.iterdir()) == ["advise.html",
                                                                                             "advise.json"]
    assert not (tmp_path / "runs" / "mine").exists()  # no run directory


def test_advise_json_holds_the_recommendation_its_reasons_and_the_evidence(tiny_bert, texts, tmp_path):
    graft.advise(tiny_recipe(tiny_bert, texts, tmp_path / "run"), output=tmp_path / "advice")
    saved = json.loads((tmp_path / "advice" / "advise.json").read_text())
    rec = saved["recommendation"]
    assert rec["strategy"] in STRATEGIES and rec["runner_up"]["strategy"] in STRATEGIES
    assert rec["reasons"] and rec["quadrant"] and rec["fragment"]["strategy"]["name"] == rec["strategy"]
    data = saved["data"]
    assert data["sizes"]["train"] + data["sizes"]["validation"] + data["sizes"]["test"] == 150
    assert data["classes"] == 3 and data["smallest_class"]["n"] >= 30
    assert data["lengths"]["tokens"]["max"] <= 32 and data["duplicates"]["validation_in_train"] == 0
    sources = {r["source"]: r for r in saved["sources"]}
    # every layer group, both poolings of the token states; the pooler is what the head reads
    assert {"bert.embeddings (cls)", "bert.embeddings (mean)", "bert.encoder.layer.1 (mean)", "bert.pooler"} \
        <= set(sources)
    assert [r["source"] for r in saved["sources"] if r["reads_head"]] == ["bert.pooler"]
    assert all(r["random"]["logme"] is not None for r in saved["sources"])
    assert all(0 <= r["probe"] <= 1 for r in saved["sources"])
    assert saved["similarity"]["best_source"] in sources
    page = (tmp_path / "advice" / "advise.html").read_text()
    assert "<svg" in page and rec["strategy"] in page and "LogME" in page


def test_a_model_no_better_than_its_random_initialisation_is_called_out(tiny_bert, texts, tmp_path):
    """The tiny BERT's weights are a seed-0 initialisation, the very one advise draws for the random baseline: the
    pretrained and random features are the same, and advise must say so."""
    result = graft.advise(tiny_recipe(tiny_bert, texts, tmp_path / "run"))
    assert result["similarity"]["gap"] == pytest.approx(0.0, abs=1e-9)
    assert result["recommendation"]["quadrant"].endswith("different domain")
    assert "negative transfer" in result["recommendation"]["warnings"][0]


def test_an_image_model_is_read_group_by_group(image_folder, plain_checkpoint, tmp_path, monkeypatch):
    from graft.data import images

    decoded: list[int] = []
    decode = images.decode_images
    monkeypatch.setattr(images, "decode_images", lambda paths, *a, **k: decoded.append(len(paths))
                        or decode(paths, *a, **k))
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    result = graft.advise(image_recipe(model, image_folder, tmp_path / "run"), output=tmp_path / "advice")
    assert sum(decoded) == 3 * 14  # each image decoded once
    groups = [r["source"] for r in result["sources"]]
    assert groups == ["conv1 (avg)", "bn1 (avg)", "block1 (avg)", "block2 (avg)"]
    assert [r["reads_head"] for r in result["sources"]] == [False, False, False, True]  # fc reads block2, pooled
    assert result["data"]["image_sizes"]["input"] == [16, 16] and result["data"]["image_sizes"]["width"]["max"] == 16
    assert result["data"]["duplicates"]["train"] == 0


def test_a_language_model_is_advised_from_its_loss_on_the_responses(tmp_path):
    from tests.test_causal_lm import PAIRS, build_tiny_lm, lm_recipe

    examples = tmp_path / "pairs.jsonl"
    examples.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS * 4))
    model = build_tiny_lm(tmp_path / "lm")
    result = graft.advise(lm_recipe(model, examples, tmp_path / "run"), output=tmp_path / "advice")
    before = result["before_training"]
    vocabulary = result["signals"]["vocabulary"]
    assert before["loss"] == pytest.approx(math.log(vocabulary), rel=0.1)  # a random model knows nothing
    assert result["recommendation"]["strategy"] in ("freeze", "scratch")
    assert result["memory_mb"]["full"] > result["memory_mb"]["lora"] > result["memory_mb"]["prompt"] > 0
    assert result["data"]["lengths"]["total_response_tokens"] > 0
    assert (tmp_path / "advice" / "advise.html").is_file()


def test_verify_compares_the_advice_with_its_runner_up_and_scratch(tiny_bert_no_dropout, texts, tmp_path):
    tree = tiny_recipe(tiny_bert_no_dropout, texts, tmp_path / "run", train={"epochs": 1})
    result = graft.advise(tree, output=tmp_path / "advice", verify=True)
    verify = result["verify"]
    rec = result["recommendation"]
    labels = [r["label"] for r in verify["strategies"]]
    assert labels[:2] == [rec["strategy"], rec["runner_up"]["strategy"]] and "scratch" in labels
    assert (tmp_path / "advice" / "verify" / "compare.json").is_file()
    assert isinstance(verify["held"], bool)
    assert verify["words"].startswith("the advice held" if verify["held"] else "the advice did not hold")
    saved = json.loads((tmp_path / "advice" / "advise.json").read_text())
    assert saved["verify"]["held"] == verify["held"]



@pytest.mark.parametrize("leader, ties, held, words", [
    ("full", [], True, "the advice held: full won on test f1_macro (0.8000)"),
    ("discriminative", ["full"], True, "the advice held: full tied with discriminative on test f1_macro (0.8000)"),
    ("scratch", [], False, "the advice did not hold: scratch beat full on test f1_macro (0.9000 vs 0.8000)"),
])
def test_verify_judges_the_advice_by_compares_verdict(leader, ties, held, words, tmp_path, monkeypatch):
    import importlib

    from graft.advise.advisor import verify_advice

    seen = {}

    def fake_compare(recipe, strategies, say=None):
        seen.update(recipe=recipe, strategies=strategies)
        scores = {"full": 0.8, "discriminative": 0.81 if leader == "discriminative" else 0.7, "scratch": 0.9
                  if leader == "scratch" else 0.5}
        return {"metric": "f1_macro", "leader": leader, "ties": ties, "verdict": [],
                "strategies": [{"label": k, "strategy": k, "f1_macro": v, "accuracy": v, "cost_s": 1.0,
                                "trainable": 10} for k, v in scores.items()]}

    # the module: `graft.compare` as an attribute is the function graft exports
    monkeypatch.setattr(importlib.import_module("graft.compare"), "compare", fake_compare)
    recipe = load_recipe({"data": {"train": str(tmp_path / "x.csv")}, "output": {"dir": str(tmp_path / "run")}})
    recommendation = {"strategy": "full", "fragment": {"strategy": {"name": "full"}, "optim": {"lr": "auto"}},
                      "runner_up": {"strategy": "discriminative", "fragment": {"strategy": {"name": "discriminative"}}}}
    verdict = verify_advice(recipe, recommendation, tmp_path / "advice", print)
    assert (verdict["held"], verdict["words"]) == (held, words)
    assert seen["strategies"] == [{"label": "full", "strategy": {"name": "full"}, "optim": {"lr": "auto"}},
                                  {"label": "discriminative", "strategy": {"name": "discriminative"}}, "scratch"]
    assert seen["recipe"].output.dir == tmp_path / "advice" / "verify"  # never the recipe's run directory

def test_the_command_prints_the_table_and_the_recommendation(tiny_bert, texts, tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tiny_bert, texts, tmp_path / "run")))
    done = CliRunner().invoke(app, ["advise", str(tmp_path / "recipe.yaml"), "--sample", "60"])
    assert done.exit_code == 0, done.output
    assert "LogME" in done.output and "recommendation: " in done.output and "runner-up: " in done.output
    assert "recipe fragment:" in done.output and "advise.html" in done.output
    saved = json.loads((tmp_path / "advise-run" / "advise.json").read_text())
    assert saved["sample"]["train"] == 60


@pytest.mark.parametrize("case, message", [
    ("file", "is a file; name a folder"),
    ("foreign", "holds files graft advise did not write (no advise.json)"),
    ("run dir", "is the recipe's output.dir"),
    ("sample", "--sample 5: at least 10"),
])
def test_user_errors_are_one_line(case, message, tiny_bert, texts, tmp_path):
    tree = tiny_recipe(tiny_bert, texts, tmp_path / "run")
    output, sample = tmp_path / "advice", 1000
    if case == "file":
        output.write_text("not a folder")
    elif case == "foreign":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    elif case == "run dir":
        output = tmp_path / "run"
    else:
        sample = 5
    assert message in error_of(graft.advise, tree, output=output, sample=sample)



def test_the_command_says_a_user_error_in_one_line(tiny_bert, texts, tmp_path, monkeypatch, capsys):
    import sys

    from graft.cli import main

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tiny_bert, texts, tmp_path / "run")))
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(sys, "argv", ["graft", "advise", str(tmp_path / "recipe.yaml"), "--output",
                                      str(tmp_path / "taken")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --output {tmp_path / 'taken'}: is a file; name a folder for advise.json and advise.html"]

def test_rerunning_into_an_advise_folder_replaces_it(tiny_bert, texts, tmp_path):
    tree = tiny_recipe(tiny_bert, texts, tmp_path / "run")
    graft.advise(tree, output=tmp_path / "advice", sample=40)
    again = graft.advise(tree, output=tmp_path / "advice", sample=60)
    assert json.loads((tmp_path / "advice" / "advise.json").read_text())["sample"] == again["sample"]

