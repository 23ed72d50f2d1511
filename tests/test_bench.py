"""Smoke test of bench/: every benchmark runs end to end at a tiny size and reports what it promises.

No timing is asserted here (benchmarks measure, tests check behaviour); `python -m bench.run` gives the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import common
from bench.benchmarks import BENCHMARKS, Size


@pytest.fixture(scope="module")
def tiny(tiny_bert: Path) -> Size:
    return Size(model=str(tiny_bert), steps=5, warmup=1, repeats=1, batch=4, max_length=48, n_train=24, n_test=12,
                matmul=64, real_data=False)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmark_runs_at_a_tiny_size(name: str, tiny: Size, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    result = BENCHMARKS[name](tiny)
    path = common.save(name, result)
    saved = json.loads(path.read_text())
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["torch"]
    if name == "loop_overhead":
        assert set(saved["ratios"]) == {"graft_vs_plain_pytorch", "graft_vs_hf_trainer"}
        assert all(v["median"] > 0 for v in saved["steps_per_s"].values())
    if name == "padding":
        shares = [saved[k]["real_token_share"] for k in ("pad_to_max", "dynamic", "dynamic_grouped")]
        assert shares[0] < shares[1] <= shares[2] <= 1.0  # by construction: grouping only removes padding
    if name == "feature_cache":
        assert saved["cached"]["test_accuracy"] == pytest.approx(saved["uncached"]["test_accuracy"])
    if name == "partial_cache":
        rows = saved["freeze_groups"]
        assert list(rows) == ["2"] and saved["setup"]["backbone_groups"] == 4  # the tiny BERT: 2 layers
        assert rows["2"]["cached"]["test_accuracy"] == pytest.approx(rows["2"]["uncached"]["test_accuracy"])
        assert rows["2"]["cached"]["cache_pass_s"] > 0 == rows["2"]["uncached"]["cache_pass_s"]
    if name == "defaults_vs_trainer":
        graft_run, trainer_run = saved["runs"]["graft"][0], saved["runs"]["hf_trainer"][0]
        assert graft_run["train_s"] > 0 and trainer_run["train_s"] > 0 and saved["speedup"]["median"] > 0
        assert trainer_run["lr"] == 5e-5 and graft_run["lr"] > 0
    if name == "resnet20_vs_plain":
        assert len(saved["runs"]["graft"]) == len(saved["runs"]["plain_pytorch"]) == tiny.repeats
        assert all(0 <= r["test_accuracy"] <= 1 and r["train_s"] > 0 for rs in saved["runs"].values() for r in rs)
        assert saved["runs"]["graft"][0]["optimizer"] == "sgd"  # a BatchNorm CNN
    if name == "linear_probe":
        assert 0 <= saved["graft"]["test_accuracy"] <= 1 and saved["sklearn"]["fit_s"]["median"] > 0
        assert saved["setup"]["n_train"] + saved["setup"]["n_validation"] == tiny.n_train
    if name == "lora_vs_full":
        assert saved["lora"]["trainable"] < saved["full"]["trainable"]
    if name == "mc_dropout":
        assert list(saved["passes"]) == ["10", "30"] and saved["setup"]["examples"] == tiny.n_test
        for row in saved["passes"].values():
            assert row["mc_s"]["median"] > 0 and row["ratio_mc_over_n_single"]["median"] > 0
            assert row["single_pass_s"]["n"] == 2 * row["mc_s"]["n"]  # one pass before and one after each
    if name == "serving":
        models = ("pytorch_fp32", "onnxruntime_fp32", "onnxruntime_int8", "distilled_student_fp32")
        assert all(saved[m][f"batch_{n}"]["examples_per_s"]["median"] > 0 for m in models for n in (1, 32))
        assert all(0 <= saved[m]["test_accuracy"] <= 1 for m in models)
        assert saved["setup"]["examples_timed"] == {"batch_1": tiny.n_test, "batch_32": tiny.n_test}
        assert saved["setup"]["max_abs_diff_fp32"] < 1e-3
        assert saved["setup"]["student"]["layers"] == 1 < saved["setup"]["student"]["of_layers"] == 2
    if name == "sweep_overhead":
        assert saved["setup"]["trials"] == tiny.repeats and saved["trial_s"]["median"] > 0
        assert saved["single_run_s"]["median"] > 0 and saved["sweep_outside_trials_s"] > 0
        assert abs(saved["added_per_trial_s"]["median"]) < saved["trial_s"]["median"]
    if name == "profile":
        assert saved["fit_s"] > 0 and 0 < saved["shares_of_fit"]["forward"] < 1


def test_the_results_table_names_the_machine(tmp_path: Path, monkeypatch) -> None:
    from bench import run

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    common.save("feature_cache", {"speedup_per_epoch": 12.0, "cached": {"test_accuracy": 0.8},
                                  "uncached": {"test_accuracy": 0.8}})
    table = run.table()
    assert table.startswith("Measured on ") and "| feature cache |" in table and "12×" in table
