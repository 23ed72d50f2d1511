"""examples/retention_cifar.py at a small size: the real CIFAR-10 ResNet-20's source head kept, scored and guarded.

Uses ../shared/data (CI has it, users do not): skipped only when the folder is absent.
"""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from tests.e2e.test_real_resnet20 import CHECKPOINT, MINI, load_example

pytestmark = pytest.mark.skipif(not (CHECKPOINT.is_file() and MINI.is_dir()), reason="shared data absent")


@pytest.mark.slow
def test_retention_example_measures_the_pretrained_head_and_guards_it(tmp_path):
    example = load_example("retention_cifar")
    result = example.main(SHARED_DATA, tmp_path, seeds=1, only=["full", "full+distill"], epochs=1)
    runs = {label: records[0] for label, records in result["records"].items()}
    for record in runs.values():
        retention = record["metrics"]["retention"]
        assert retention["n"] == 250 and retention["labels"] == example.CIFAR10  # half of cifar10-mini/test
        # The pretrained head on JPEG re-encodings of CIFAR-10 test images: ~0.80 (tests/e2e/test_real_resnet20.py).
        assert 0.75 <= retention["before"] <= 0.85
    assert runs["full+distill"]["metrics"]["retention"]["guards"] == ["distill"]
    assert all(r["retention"] is not None for r in result["strategies"])
