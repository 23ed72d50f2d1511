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
    if name == "defaults_vs_trainer":
        assert saved["graft"]["train_s"] > 0 and saved["hf_trainer"]["train_s"] > 0 and saved["speedup"] > 0
        assert saved["hf_trainer"]["lr"] == 5e-5 and saved["graft"]["lr"] > 0
    if name == "linear_probe":
        assert 0 <= saved["graft"]["test_accuracy"] <= 1 and saved["sklearn"]["fit_s"]["median"] > 0
        assert saved["setup"]["n_train"] + saved["setup"]["n_validation"] == tiny.n_train
    if name == "lora_vs_full":
        assert saved["lora"]["trainable"] < saved["full"]["trainable"]
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
