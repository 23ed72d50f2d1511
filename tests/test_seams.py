"""The seams later capabilities build on: loss terms, extra evaluations and mixed training data, each added from
outside the loop (through `graft.train(..., prepare=...)`), logged, recorded and resume-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import graft
from graft.setup import Setup
from graft.training.loop import MIXED, Evaluation
from graft.training.mixing import MixedBatches, mix
from tests.conftest import make_texts, tiny_recipe, write_csv
from tests.e2e.test_resume import StopAt, assert_identical, weights


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("seams") / "train.csv", make_texts(90, seed=5))


def recipe(tiny_bert: Path, data: Path, run_dir: Path, **sections: dict) -> dict:
    return tiny_recipe(tiny_bert, data, run_dir, train={"epochs": 2, "batch_size": 8, "log_every": 2}, **sections)


def head_l2(weight: float):
    """A loss term: `weight` times the squared norm of the classifier's weights (closes over the setup's root)."""
    def add(run: Setup) -> None:
        head = run.root.get_submodule(run.loaded.head.path)
        run.loss_terms["l2"] = lambda batch, output: weight * head.weight.pow(2).sum()
    return add


def history(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in records]


def test_a_loss_term_is_added_logged_apart_and_changes_training(tiny_bert, data, tmp_path):
    plain = graft.train(recipe(tiny_bert, data, tmp_path / "plain"))
    pulled = graft.train(recipe(tiny_bert, data, tmp_path / "l2"), prepare=head_l2(5.0))

    logged = history(tmp_path / "l2", "train")
    assert logged and all({"loss_task", "loss_l2"} <= set(r) for r in logged)
    for r in logged:  # the logged total is the task's loss plus the term
        assert r["loss"] == pytest.approx(r["loss_task"] + r["loss_l2"], rel=1e-5)
    assert all("loss_l2" not in r for r in history(tmp_path / "plain", "train"))
    assert [r for r in pulled["metrics"]["history"] if r["split"] == "train"] == logged
    head = "classifier.weight"
    norm = {name: weights(tmp_path / name)[head].norm().item() for name in ("plain", "l2")}
    # The term pulled the head's weights in (AdamW moves each weight about lr a step: ~0.05 over 18 steps).
    assert norm["l2"] < norm["plain"] - 0.05, norm
    assert plain["metrics"]["test"]["n"] == pulled["metrics"]["test"]["n"]
    page = (tmp_path / "l2" / "report.html").read_text()
    assert "train: l2" in page and "the task&#x27;s loss, l2" in page


def test_a_loss_term_resumes_exactly(tiny_bert, data, tmp_path):
    every3 = {"checkpoint": {"every_steps": 3}}
    graft.train(recipe(tiny_bert, data, tmp_path / "whole", **every3), prepare=head_l2(1.0))
    broken = recipe(tiny_bert, data, tmp_path / "broken", **every3)
    with pytest.raises(KeyboardInterrupt):
        graft.train(broken, prepare=head_l2(1.0), hooks=[StopAt(5)])
    graft.train(broken, resume=True, prepare=head_l2(1.0))
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "broken"))
    assert untimed(history(tmp_path / "whole", "train")) == untimed(history(tmp_path / "broken", "train"))


def evaluate_again(name: str):
    """An extra evaluation: the task's own metrics on the validation split, as a retention set would be."""
    def add(run: Setup) -> None:
        loader = run.task.eval_loader(run.recipe, run.splits.validation, run.loaded)
        run.evaluations.append(Evaluation(name, loader, lambda accelerator, model, batches: run.task.evaluate(
            accelerator, model, batches, run.splits.labels)))
    return add


def test_extra_evaluations_run_before_training_at_each_evaluation_and_at_the_end(tiny_bert, data, tmp_path):
    record = graft.train(recipe(tiny_bert, data, tmp_path / "run"), prepare=evaluate_again("again"))
    extra = history(tmp_path / "run", "again")
    validation = history(tmp_path / "run", "validation")
    assert [r["step"] for r in extra] == [0, *(r["step"] for r in validation)]
    for mine, theirs in zip(extra[1:], validation, strict=True):  # the same data, the same model: the same numbers
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"]) and mine["loss"] == pytest.approx(theirs["loss"])
    final = record["metrics"]["again"]  # on the best weights, as the best validation record was
    assert final["n"] == record["data"]["sizes"]["validation"]
    assert final["accuracy"] == pytest.approx(record["metrics"]["validation"]["accuracy"])
    assert final["loss"] == pytest.approx(record["metrics"]["validation"]["loss"])
    assert "Extra evaluation &#x27;again&#x27;" in (tmp_path / "run" / "report.html").read_text()


def test_an_extra_evaluation_cannot_take_a_reserved_name():
    with pytest.raises(ValueError, match="cannot be named 'test'"):
        Evaluation("test", None, lambda accelerator, model, batches: {})


class Keys(torch.utils.data.Sampler):
    """A main sampler whose order depends on its epoch, as graft's are."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())


def test_mixed_batches_hold_a_fixed_share_in_a_seeded_order():
    keys = Keys(10)
    batches = MixedBatches(keys, n_second=7, batch_size=4, k=1, seed=3)
    first = list(batches)
    assert len(first) == len(batches) == 4  # 10 main examples, 3 a batch
    assert [k for b in first for k in b if not isinstance(k, tuple)] == list(keys)  # the main order is kept
    assert all(sum(isinstance(k, tuple) and k[0] == MIXED for k in b) == 1 for b in first)
    assert list(batches) == first  # a pure function of (seed, epoch)
    keys.set_epoch(1)
    assert list(batches) != first
    seconds = [k[1] for b in MixedBatches(Keys(40), 7, 4, 1, seed=3) for k in b if isinstance(k, tuple)]
    assert sorted(seconds[:7]) == list(range(7))  # without replacement, then a fresh permutation


def test_mixed_batches_give_every_process_its_share():
    batch = next(iter(MixedBatches(Keys(12), n_second=20, batch_size=8, k=2, seed=0, processes=2)))
    halves = batch[:4], batch[4:]  # accelerate's split_batches hands out contiguous pieces
    assert all(sum(isinstance(k, tuple) for k in half) == 1 for half in halves)


def replay(share: float):
    """A mixed loader (validation texts as the second source) and a loss term on those examples."""
    def add(run: Setup) -> None:
        second = run.task.train_loader(run.recipe, run.splits.validation, run.loaded, False, [])
        run.train_loader = mix(run.train_loader, second.dataset, second.collate_fn, share, seed=11)

        def term(batch: dict, output) -> torch.Tensor:
            return 0.5 * run.model(**batch[MIXED]).loss

        run.loss_terms["replay"] = term
    return add


def test_mixed_data_reaches_loss_terms_and_resumes_exactly(tiny_bert, data, tmp_path):
    every4 = {"checkpoint": {"every_steps": 4}}
    whole = graft.train(recipe(tiny_bert, data, tmp_path / "whole", **every4), prepare=replay(0.25))
    logged = history(tmp_path / "whole", "train")
    assert all(r["loss_replay"] > 0 for r in logged)
    main_per_batch = 8 - 2  # a quarter of each batch of 8 comes from the second source
    assert whole["timings"]["steps"] == 2 * -(-whole["data"]["sizes"]["train"] // main_per_batch)
    broken = recipe(tiny_bert, data, tmp_path / "broken", **every4)
    with pytest.raises(KeyboardInterrupt):  # mid-epoch: the resumed run skips the first 4 mixed batches
        graft.train(broken, prepare=replay(0.25), hooks=[StopAt(7)])
    graft.train(broken, resume=True, prepare=replay(0.25))
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "broken"))
    assert untimed(history(tmp_path / "broken", "train")) == untimed(logged)
