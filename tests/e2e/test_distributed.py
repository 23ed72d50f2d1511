"""The same recipe under torchrun with 2 CPU processes (gloo) trains the same model as 1 process.

`train.batch_size` is the global batch (accelerate splits each batch between processes), so both runs take the
same optimisation steps on the same examples; only the order of floating-point reductions differs. Tolerance:
every weight within 1e-5 absolute + 1e-4 relative after 16 AdamW steps.

The training set here divides into whole batches: an incomplete last batch is completed by accelerate with
examples from the start of the epoch so every process gets an equal share, which makes that one step differ
from a single process's (evaluation drops such repeats when gathering, so metrics are exact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import graft
from tests.conftest import make_texts, tiny_recipe, write_csv

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("strategy", ["full", "two_phase"])
def test_two_processes_match_one(strategy: str, tiny_bert_no_dropout: Path, tmp_path: Path) -> None:
    """two_phase: the backbone joins in epoch 2, so DDP must reduce gradients of parameters frozen at wrap time."""
    rows = make_texts(88, seed=5)
    data = write_csv(tmp_path / "train.csv", rows[:64])  # 8 whole batches of 8
    write_csv(tmp_path / "val.csv", rows[64:76])
    write_csv(tmp_path / "test.csv", rows[76:])
    sections = {"train": {"epochs": 2, "batch_size": 8, "log_every": 3}, "checkpoint": {"every_steps": 4},
                "data": {"validation": str(tmp_path / "val.csv"), "test": str(tmp_path / "test.csv")},
                "strategy": {"name": strategy}}
    single = graft.train(tiny_recipe(tiny_bert_no_dropout, data, tmp_path / "one", **sections))

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_bert_no_dropout, data, tmp_path / "two", **sections)))
    graft_cli = Path(sys.executable).parent / "graft"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(graft_cli), "train", str(recipe)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["environment"]["num_processes"] == 2
    assert record["timings"]["steps"] == single["timings"]["steps"]
    assert record["data"]["sizes"] == single["data"]["sizes"]
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    # Metrics are gathered over both processes: the test set is counted once, whole.
    assert record["metrics"]["test"]["n"] == single["metrics"]["test"]["n"]
    assert record["metrics"]["test"]["accuracy"] == pytest.approx(single["metrics"]["test"]["accuracy"])
    # Files are written by the main process only: one metrics line per record.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(record["metrics"]["history"])



def _task_files(task: str, root: Path) -> tuple[Path, dict]:
    """(train file, recipe sections) for `task`: 64 training examples, 12 validation and 13 test (uneven shards over
    two processes) in their own files."""
    from tests.conftest import make_label_sets, make_tagged, write_conll
    from tests.test_regression import scored_texts, write_scores

    rows, suffix, write = {"token_classification": (make_tagged(89, seed=5), "conll", write_conll),
                           "regression": (scored_texts(89, seed=5), "csv", write_scores),
                           "multilabel_classification": (make_label_sets(89, seed=5), "csv", write_csv)}[task]
    files = [write(root / f"{name}.{suffix}", part) for name, part in
             (("train", rows[:64]), ("val", rows[64:76]), ("test", rows[76:]))]
    data = {"validation": str(files[1]), "test": str(files[2]), **({"label_column": "score"}
                                                                   if task == "regression" else {})}
    return files[0], {"data": data}


@pytest.mark.parametrize("task", ["token_classification", "multilabel_classification", "regression"])
def test_each_tasks_test_gathers_over_two_processes(task: str, tiny_bert_no_dropout: Path, tmp_path: Path) -> None:
    """Each task gathers its own outputs (per-token tags padded to one length, label sets, float targets): a run
    trained and tested over two processes scores the test set once, whole, as one process scores its saved model.
    Token classification's loss averages over tagged sub-tokens, which the two processes' halves hold unevenly: its
    two-process training is also compared with one process's."""
    train, sections = _task_files(task, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe(tiny_bert_no_dropout, train, tmp_path / "two",
                                                    train={"epochs": 2, "batch_size": 8}, **sections), "task": task}))
    graft_cli = Path(sys.executable).parent / "graft"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(graft_cli), "train", str(recipe)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["environment"]["num_processes"] == 2
    two, one = record["metrics"]["test"], graft.evaluate(tmp_path / "two")
    assert two["n"] == one["n"] == 13
    scalars = [k for k, v in two.items() if isinstance(v, float) and k in one]
    assert len(scalars) >= 5, two
    for key in scalars:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    if task == "token_classification":
        tree = yaml.safe_load(recipe.read_text())
        graft.train({**tree, "output": {**tree["output"], "dir": str(tmp_path / "one")}})
        a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=lambda m, k=key: f"{k}: {m}")
