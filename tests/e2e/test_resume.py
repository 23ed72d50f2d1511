"""A run stopped at any step and resumed ends with exactly the weights of an uninterrupted one (CPU, same seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.errors import GraftError
from graft.training.loop import Event
from tests.conftest import make_texts, tiny_recipe, write_csv


class StopAt:
    """Simulates Ctrl-C at optimiser step `step`: right after the update, or after that step's checkpoint."""

    def __init__(self, step: int, after: str = "step") -> None:
        self.step = step
        self.after = after

    def __call__(self, event: Event) -> None:
        if event.kind == self.after and event.state.step == self.step:
            raise KeyboardInterrupt


def assert_resume_matches(make_recipe, tmp_path: Path, stop: int = 5) -> None:
    """`make_recipe(run_dir)` trained whole, and stopped at step `stop` then resumed: the same final weights."""
    graft.train(make_recipe(tmp_path / "whole"))
    broken = make_recipe(tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        graft.train(broken, hooks=[StopAt(stop)])
    graft.train(broken, resume=True)
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "broken"))


def weights(run_dir: Path, name: str = "model/model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run_dir / name)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("resume-data") / "train.csv", make_texts(100, seed=3))


# Dropout stays on (the tiny BERT has 0.1) so restoring the RNG state is part of what is tested.
CASES = {
    # stop between checkpoints, mid-epoch: resume replays from the last checkpoint
    "mid_epoch": ({"checkpoint": {"every_steps": 3}}, 7),
    # stop right before a checkpoint would have been written
    "before_checkpoint": ({"checkpoint": {"every_steps": 3}}, 6),
    # stop right after a checkpoint
    "after_checkpoint": ({"checkpoint": {"every_steps": 3}}, (6, "checkpoint")),
    # gradient accumulation, eval every N steps, cosine schedule, SGD with momentum
    "accumulation": ({"train": {"grad_accum": 2}, "eval": {"every_steps": 2}, "checkpoint": {"every_steps": 2},
                      "schedule": {"name": "cosine"}, "optim": {"name": "sgd", "lr": 0.05}}, 5),
    # checkpoint only at evaluations (the default), stop in the second epoch
    "default_checkpoints": ({}, 13),
    # reduce-on-plateau: its state travels in the checkpoint too
    "plateau": ({"schedule": {"name": "plateau", "warmup_ratio": 0.0}, "eval": {"metric": "loss"}}, 12),
    # bottom groups frozen, then unfrozen one by one: the resumed epoch rebuilds its frozen groups' feature cache
    "prefix_cache": ({"strategy": {"name": "gradual_unfreeze", "unfreeze_every": 1},
                      "checkpoint": {"every_steps": 3}}, 13),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_uninterrupted(case: str, tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    sections, stop = CASES[case]
    sections = {**sections, "train": {"epochs": 3, "batch_size": 8, **sections.get("train", {})}}
    whole = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "whole", **sections))

    broken = tiny_recipe(tiny_bert, data, tmp_path / "broken", **sections)
    with pytest.raises(KeyboardInterrupt):
        graft.train(broken, hooks=[StopAt(*stop) if isinstance(stop, tuple) else StopAt(stop)])
    resumed = graft.train(broken, resume=True)

    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "broken"))
    assert_identical(weights(tmp_path / "whole", "checkpoints/best/model.safetensors"),
                     weights(tmp_path / "broken", "checkpoints/best/model.safetensors"))
    drop_timing = ("samples_per_s",)
    strip = [[{k: v for k, v in h.items() if k not in drop_timing} for h in r["metrics"]["history"]]
             for r in (whole, resumed)]
    assert strip[0] == strip[1]
    assert resumed["metrics"]["test"] == whole["metrics"]["test"]


def test_interrupted_run_is_recorded_and_keeps_its_checkpoint(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(5)])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert record["progress"]["step"] == 5
    # no evaluation yet, so no best model
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000004"]


def test_resume_refuses_a_changed_recipe(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(3)])
    changed = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2}, train={"batch_size": 4})
    with pytest.raises(GraftError, match=r"--resume: the recipe changed .*train.batch_size: 8 -> 4"):
        graft.train(changed, resume=True)


@pytest.mark.parametrize("changed", [{"optim": {"lr": 0.1}}, {"optim": {"weight_decay": 0.3}},
                                     {"optim": {"name": "sgd"}}, {"schedule": {"name": "cosine"}}],
                         ids=["lr", "weight_decay", "optimizer", "schedule"])
def test_resume_refuses_what_could_not_take_effect_before_writing(changed: dict, tiny_bert: Path, data: Path,
                                                                   tmp_path: Path) -> None:
    """The optimiser's values and the schedule come back from the checkpoint: a resume that names new ones would
    train with the old while recipe.yaml and run.json claim the new."""
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(3)])
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    section, values = next(iter(changed.items()))
    key = f"{section}.{next(iter(values))}"
    with pytest.raises(GraftError, match=rf"--resume: the recipe changed .*{key}: "):
        graft.train(tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2}, **changed),
                    resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_resume_may_add_epochs(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2}, train={"epochs": 1})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(3)])
    longer = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2}, train={"epochs": 2})
    record = graft.train(longer, resume=True)
    assert record["status"] == "completed" and record["recipe"]["train"]["epochs"] == 2
    assert max(h["epoch"] for h in record["metrics"]["history"]) == pytest.approx(2.0)


def test_resume_without_checkpoint_is_refused(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="no complete checkpoint to resume from"):
        graft.train(tiny_recipe(tiny_bert, data, tmp_path / "nothing"), resume=True)


def test_run_stopped_before_its_first_checkpoint_is_sent_to_overwrite(tiny_bert: Path, data: Path,
                                                                       tmp_path: Path) -> None:
    """Neither a plain train nor --resume sends the user to the other when there is nothing to resume."""
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 5})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(2)])
    with pytest.raises(GraftError, match="stopped before its first checkpoint, so there is nothing to resume: pass "
                                         "--overwrite") as plain:
        graft.train(recipe)
    with pytest.raises(GraftError, match=r"stopped before its first one\); start it again with --overwrite"):
        graft.train(recipe, resume=True)
    assert "--resume" not in str(plain.value).replace("nothing to resume", "")
    assert graft.train(recipe, overwrite=True)["status"] == "completed"


def test_half_written_checkpoint_is_ignored(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    """A crash while saving leaves only a hidden .tmp folder: resume uses the last complete checkpoint."""
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(5)])
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / ".tmp-step-00000006").mkdir()
    (ckpts / ".tmp-step-00000006" / "model.safetensors").write_bytes(b"truncated")
    graft.train(recipe, resume=True)
    whole = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "whole", checkpoint={"every_steps": 2}))
    assert whole["status"] == "completed"
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "run"))


def test_lora_checkpoints_hold_what_trains_and_resume_exactly(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    """A LoRA checkpoint carries the adapter, the head and their optimiser state, not the frozen base; the resumed
    run rebuilds the base and ends bit-identical to an uninterrupted one."""
    sections = {"strategy": {"name": "lora"}, "checkpoint": {"every_steps": 3}, "train": {"epochs": 2, "batch_size": 8}}
    whole = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "whole", **sections))
    broken = tiny_recipe(tiny_bert, data, tmp_path / "broken", **sections)
    with pytest.raises(KeyboardInterrupt):
        graft.train(broken, hooks=[StopAt(11)])  # after the first epoch's evaluation (step 9)
    saved = tmp_path / "broken" / "checkpoints" / "step-00000009"
    kept = set(load_file(saved / "model.safetensors"))
    base = set(load_file(tiny_bert / "model.safetensors"))
    left_out = json.loads((saved / "left_out.json").read_text())[0]["names"]
    assert kept and all("lora_" in k or "classifier" in k or "modules_to_save" in k for k in kept), sorted(kept)[:5]
    assert len(left_out) >= len(base)  # every base tensor (and the head's frozen original) stays out
    best = tmp_path / "broken" / "checkpoints" / "best"
    assert set(load_file(best / "model.safetensors")) == {k.removeprefix("module.") for k in kept}

    resumed = graft.train(broken, resume=True)
    for name in ("adapter_model.safetensors", "graft_peft.safetensors"):
        assert_identical(weights(tmp_path / "whole", f"model/{name}"), weights(tmp_path / "broken", f"model/{name}"))
    assert resumed["metrics"]["test"] == whole["metrics"]["test"]


def test_resume_refuses_a_base_model_that_changed(tiny_bert: Path, data: Path, tmp_path: Path) -> None:
    """The base a checkpoint left out is rebuilt from model.name: changed files there are refused, not trained on."""
    import shutil

    from tests.conftest import build_tiny_bert

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    recipe = tiny_recipe(base, data, tmp_path / "run", strategy={"name": "lora"}, checkpoint={"every_steps": 3})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(4)])
    build_tiny_bert(base, seed=1)  # same shapes, other values
    with pytest.raises(GraftError, match=r"left out \(never trained, \d+ tensors\) differ from the model's now"):
        graft.train(recipe, resume=True)


@pytest.mark.parametrize("n", [40, 44], ids=["shorter_last_step", "short_last_batch"])
def test_accumulated_batches_train_as_the_doubled_batch(n, tiny_bert_no_dropout, tmp_path):
    """Batches of 8 accumulated in twos follow batches of 16 however the epoch ends: 40 examples end in a step of one
    batch (accelerate alone would give it half a step's strength), 44 in a step of 8 + 4 examples (their two means
    averaged would count each of the 4 twice). No clipping: a clipped step's size hides a weaker gradient."""
    rows = make_texts(n + 24, seed=6)
    data = write_csv(tmp_path / "train.csv", rows[:n])
    split = {"validation": write_csv(tmp_path / "val.csv", rows[n:n + 12]).as_posix(),
             "test": write_csv(tmp_path / "test.csv", rows[n + 12:]).as_posix(), "group_by_length": False}
    runs = {}
    for name, train in (("accumulated", {"batch_size": 8, "grad_accum": 2}), ("doubled", {"batch_size": 16})):
        runs[name] = graft.train(tiny_recipe(tiny_bert_no_dropout, data, tmp_path / name, data=split,
                                             train={"epochs": 2, "max_grad_norm": None, **train}))
    assert runs["accumulated"]["timings"]["steps"] == runs["doubled"]["timings"]["steps"] == 6
    a, b = weights(tmp_path / "accumulated"), weights(tmp_path / "doubled")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
