"""The LR range test: it leaves no trace (a run at the measured LR is the run that measured it, bit for bit), keeps
the groups' LR ratios, leaves out what does not train, picks from the smoothed curve, and has a command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.pipeline import make_accelerator, prepare_run
from graft.training.lr_find import lr_range_test, suggest
from tests.conftest import make_texts, tiny_recipe, write_csv


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("lr") / "train.csv", make_texts(90, seed=4))


def recipe(tiny_bert: Path, data: Path, run_dir: Path, lr: float | str = "auto", **sections: dict) -> dict:
    tree = tiny_recipe(tiny_bert, data, run_dir, optim={"lr": lr}, train={"epochs": 2}, **sections)
    return tree


def test_a_run_at_the_measured_lr_is_the_run_that_measured_it(tiny_bert, data, tmp_path):
    measured = graft.train(recipe(tiny_bert, data, tmp_path / "auto"))
    optim = measured["optim"]
    assert optim["lr_found"] is not None or "found none" in optim["lr_why"]
    assert len(optim["lr_sweep"]["lrs"]) >= 20 and optim["name"] == "adamw"
    again = graft.train(recipe(tiny_bert, data, tmp_path / "fixed", lr=optim["lr"]))
    assert again["optim"]["lr_why"] == "optim.lr says so"
    a, b = load_file(tmp_path / "auto/model/model.safetensors"), load_file(tmp_path / "fixed/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, optimiser, RNG and data order all restored
    history = [{k: v for k, v in h.items() if k != "samples_per_s"} for h in measured["metrics"]["history"]]
    assert history == [{k: v for k, v in h.items() if k != "samples_per_s"} for h in again["metrics"]["history"]]
    assert [g["lr"] for g in measured["groups"]] == [g["lr"] for g in again["groups"]]


def test_the_sweep_scales_every_group_by_one_factor_and_leaves_frozen_ones_out(tiny_bert, data, tmp_path):
    tree = recipe(tiny_bert, data, tmp_path / "run", strategy={"name": "two_phase"})  # backbone frozen in epoch 0
    loaded = graft.load_recipe(tree)
    accelerator = make_accelerator(loaded)
    run = graft.setup(loaded)
    prepared = prepare_run(accelerator, run, lambda line: None)
    parts = prepared.parts
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    rng = torch.get_rng_state()
    seen, step = [], parts.optimizer.step

    def spy(*args, **kwargs):
        seen.append(({g["name"]: g["lr"] for g in parts.optimizer.param_groups},
                     {n for n, p in parts.model.named_parameters() if p.grad is not None}))
        return step(*args, **kwargs)

    parts.optimizer.step = spy
    sweep = lr_range_test(accelerator, parts, prepared.base_lr, None, steps=12)
    assert len(seen) == len(sweep.lrs) > 5
    first = seen[0][0]
    for lrs, graded in seen:
        ratio = {name: lrs[name] / first[name] for name in lrs}
        assert max(ratio.values()) == pytest.approx(min(ratio.values()))  # one factor for every group
        assert graded and all(name.startswith("classifier.") for name in graded)  # the backbone waits in epoch 0
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng, torch.get_rng_state())
    assert not parts.optimizer.state_dict()["state"]  # the optimiser is as fresh as it was

    # What a run measures with: the plan once every group has joined (a head-only sweep picks the head's LR).
    assert run.plan.all_joined == 1
    seen.clear()
    lr_range_test(accelerator, parts, prepared.base_lr, None, steps=12, epoch=run.plan.all_joined)
    assert all(any(name.startswith("bert.") for name in graded) for _, graded in seen)


def test_a_staged_run_measures_its_lr_with_the_body_training(tiny_bert, data, tmp_path):
    tree = recipe(tiny_bert, data, tmp_path / "run", strategy={"name": "gradual_unfreeze"})
    tree["train"]["epochs"] = 3
    record = graft.train(tree)
    assert "with epoch 2's groups training" in record["optim"]["lr_why"]


def test_the_pick_is_the_middle_of_the_longest_fall():
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    loss = [1.0] * 10 + [1.0 - 0.05 * i for i in range(1, 21)] + [0.0 + 0.1 * i for i in range(30)]
    pick, why = suggest(lrs, loss)
    # The fall runs from 1.0 down to 0.0 at index 29; its middle fifth (0.6 to 0.4) lies at indices 17 to 21.
    assert pick == pytest.approx(math.sqrt(lrs[17] * lrs[21])) and "fall before its minimum" in why
    flat = [1.0 + 0.001 * math.sin(i) for i in range(60)]
    assert suggest(lrs, flat)[0] is None
    # Barely falling, then climbing (LoRA's curve in a short sweep): a tenth of where it climbs 10% above its low.
    lora = [1.0 - 0.001 * i for i in range(40)] + [0.961 + 0.05 * i for i in range(1, 21)]
    pick, why = suggest(lrs, lora, starts="zero")
    assert pick == pytest.approx(lrs[41] / 10) and "a tenth of where the loss climbs" in why
    # The same curve from a pretrained model's full fine-tune (labels too noisy to learn in 100 steps): no pick.
    pick, why = suggest(lrs, lora)
    assert pick is None and "noisy or hard labels" in why
    # Random weights (scratch) take the edge rule even where the loss falls: a tenth of where it climbs past its low.
    pick, why = suggest(lrs, loss, starts="scratch")
    assert pick == pytest.approx(lrs[31] / 10) and "random weights" in why
    # A fall after a blow-up does not count: the minimum comes first.
    spiky = [1.0 - 0.02 * i for i in range(20)] + [5.0 - 0.05 * i for i in range(40)]
    assert suggest(lrs, spiky)[0] < lrs[20]
    assert suggest(lrs[:3], loss[:3])[0] is None


def test_lr_find_command_prints_the_curve_and_writes_its_page(tiny_bert, data, tmp_path, monkeypatch, capsys):
    import sys

    import yaml

    from graft.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_bert, data, tmp_path / "never")))
    monkeypatch.setattr(sys, "argv", ["graft", "lr-find", str(path), "--steps", "20",
                                      "--output", str(tmp_path / "lr.html")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["lr", "loss", "smoothed"]
    assert "pick: " in out or "no pick: " in out
    page = (tmp_path / "lr.html").read_text()
    assert "<svg" in page and "LR range test" in page
    assert not (tmp_path / "never").exists()  # nothing but the page is written
