"""The CIFAR ResNet example: the paper's size, shapes, the published checkpoint's key names, and that it loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar_resnet.py"
CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-resnet20" / "resnet20-12fca82f.th"


@pytest.fixture(scope="module")
def cifar_resnet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cifar_resnet", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_the_papers_size(cifar_resnet: ModuleType) -> None:
    # He et al. 2016, table 6: 0.27M. Convs 16*27 + 6*(16*144) + (32*144 + 5*32*288) + (64*288 + 5*64*576),
    # BN scale and shift 2*(16*7 + 32*6 + 64*6), linear 64*10 + 10.
    assert parameters(cifar_resnet.resnet20()) == 269_722
    assert parameters(cifar_resnet.resnet20(num_classes=2)) == 269_722 - 8 * 65
    assert parameters(cifar_resnet.resnet32()) == 464_154  # table 6: 0.46M


def test_output_shapes(cifar_resnet: ModuleType) -> None:
    model = cifar_resnet.resnet20().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)  # pooling covers whatever map is left
        assert cifar_resnet.resnet32(num_classes=3)(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_shortcuts_have_no_parameters(cifar_resnet: ModuleType) -> None:
    model = cifar_resnet.resnet20()
    assert not [name for name, _ in model.named_parameters() if "shortcut" in name]
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.running_var",
            "linear.weight", "linear.bias"} <= set(keys)


@pytest.mark.skipif(not CHECKPOINT.parent.is_dir(), reason=f"{CHECKPOINT.parent} not present (shared data)")
def test_the_published_checkpoint_loads(cifar_resnet: ModuleType) -> None:
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    model = cifar_resnet.resnet20()
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()}, strict=True)
    assert torch.equal(model.linear.bias, state["module.linear.bias"])
