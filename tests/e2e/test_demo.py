"""`graft demo`: the embedded default, offline, end to end (the packaged MiniLM, four strategies compared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_compares_four_strategies_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    graft = Path(sys.executable).parent / "graft"
    done = subprocess.run([str(graft), "demo", "--output", str(tmp_path / "demo")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "demo" / "compare.json").read_text())
    assert [r["label"] for r in result["strategies"]] == ["scratch", "head_only", "discriminative", "lora"]
    assert result["transfer_helped"] is True  # a pretrained MiniLM against a random one: never close
    assert (tmp_path / "demo" / "compare.html").is_file()
    assert all((tmp_path / "demo" / r["label"] / "report.html").is_file() for r in result["strategies"])
    lines = done.stdout.splitlines()
    assert lines[0].startswith("strategy") and len(lines) >= 6 and lines[-1].endswith("compare.html")
