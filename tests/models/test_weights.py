"""Loading pretrained weights into plain modules: formats, nesting, key fix-ups, partial loads, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from graft.models.weights import LoadReport, load_checkpoint, load_into, read_state_dict, remap_keys
from tests.conftest import error_of


def make_net(seed: int, classes: int = 3) -> nn.Sequential:
    """Conv + BatchNorm (with buffers) + Linear head; different seeds give different weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 2 * 2, classes))


def trained_net(seed: int = 1) -> nn.Sequential:
    """A net whose BatchNorm running stats moved away from their defaults, as after training."""
    net = make_net(seed)
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 1, 4, 4) * 3 + 1)
    return net


def assert_same(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source = trained_net().state_dict()
    path = tmp_path / "w.safetensors"
    save_file(source, path)
    model = make_net(seed=2)
    assert not torch.equal(model.state_dict()["0.weight"], source["0.weight"])
    report = load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.loaded) == sorted(source)
    assert_same(model, source)


def test_nested_ddp_checkpoint_loads_everything(tmp_path: Path) -> None:
    source = trained_net().state_dict()
    assert source["1.num_batches_tracked"].item() == 1
    assert not torch.equal(source["1.running_mean"], torch.zeros(4))
    path = tmp_path / "best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}, "best_prec1": 71.3, "epoch": 90}, path)
    model = make_net(seed=2)
    report = load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(source) == 9
    assert_same(model, source)


def test_deeper_nesting_and_other_keys(tmp_path: Path) -> None:
    source = make_net(seed=1).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "model": {"net": source, "step": 9}}, path)
    assert list(read_state_dict(path)) == list(source)


def test_double_module_prefix() -> None:
    weight = torch.ones(2)
    out = remap_keys({"module.module.a.weight": weight, "module.module.b": weight})
    assert list(out) == ["a.weight", "b"]


def test_module_prefix_kept_unless_every_key_has_it() -> None:
    out = remap_keys({"module.a": torch.ones(1), "b": torch.ones(1)})
    assert list(out) == ["module.a", "b"]


def test_prefix_renames_longest_wins_on_dotted_boundaries() -> None:
    state = {k: torch.ones(1) for k in ["backbone.0.weight", "backbone.head.bias", "backbone2.x", "fc.weight"]}
    out = remap_keys(state, {"backbone": "features", "backbone.head.": "classifier.", "fc": ""})
    assert list(out) == ["features.0.weight", "classifier.bias", "backbone2.x", "weight"]
    assert list(remap_keys({"a.b": torch.ones(1)}, {"": "encoder"})) == ["encoder.a.b"]


def test_renames_into_model(tmp_path: Path) -> None:
    source = make_net(seed=1)
    path = tmp_path / "w.safetensors"
    save_file({f"backbone.{k}": v for k, v in source.state_dict().items()}, path)
    model = nn.Module()
    model.features = make_net(seed=2)
    report = load_checkpoint(model, path, renames={"backbone.": "features."})
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.features[0].weight, source[0].weight)


def test_renames_that_collide_are_an_error() -> None:
    message = error_of(remap_keys, {"a.w": torch.ones(1), "b.w": torch.ones(1)}, {"a": "c", "b": "c"})
    assert "'c.w'" in message and "renames" in message


def test_partial_load_reports_and_loads_the_rest() -> None:
    source = make_net(seed=1, classes=10).state_dict()
    source.pop("1.running_var")
    source["extra.weight"] = torch.ones(2)
    model = make_net(seed=2, classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_into(model, source)
    assert report.missing == ["1.running_var"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("3.weight", (10, 16), (3, 16)), ("3.bias", (10,), (3,))]
    assert report.loaded == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.num_batches_tracked"]
    after = model.state_dict()
    for key in report.loaded:
        assert torch.equal(after[key], source[key]), key
    for key in ["1.running_var", "3.weight", "3.bias"]:
        assert torch.equal(after[key], before[key]), key


def test_skip_excludes_the_head() -> None:
    source = make_net(seed=1, classes=10).state_dict()
    model = make_net(seed=2, classes=3)
    head = model[3].weight.clone()
    report = load_into(model, source, skip=["3"])
    assert report.mismatched == [] and report.missing == [] and report.unexpected == []
    assert len(report.loaded) == 7
    assert torch.equal(model[3].weight, head)
    assert torch.equal(model[0].weight, source["0.weight"])
    # A string is one prefix; '3.' means the same as '3'; '3' does not cover a key like '30.x'.
    assert load_into(make_net(seed=2), source, skip="3.").mismatched == []
    assert load_into(make_net(seed=2), {"30.x": torch.ones(1)}, skip=["3"]).unexpected == ["30.x"]


def test_whole_pickled_module_is_refused_with_a_working_recipe(tmp_path: Path) -> None:
    source = make_net(seed=1)
    path = tmp_path / "model.pt"
    torch.save(source, path)
    message = error_of(read_state_dict, path)
    assert message.startswith(f"model.checkpoint {path}: needs full unpickling")
    assert "torch.nn.modules.container.Sequential" in message
    assert "weights_only" in message and "safetensors" in message
    # The conversion recipe in the message really works (the file is ours, so trusted).
    code = re.search(r'python -c "(.+?)"', message).group(1)
    exec(code, {})
    model = make_net(seed=2)
    report = load_checkpoint(model, Path(f"{path}.safetensors"))
    assert report.missing == [] and torch.equal(model[0].weight, source[0].weight)


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    for name, data in [("junk.pt", b"garbage bytes here"), ("junk.bin", b"\x80\x02\x95not a pickle"),
                       ("junk.safetensors", b"garbage bytes here"), ("empty.pth", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        message = error_of(read_state_dict, path, "model.init")
        assert message.startswith(f"model.init {path}: not a readable"), message
        assert "unpickling" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    assert error_of(read_state_dict, path) == f"model.checkpoint {path}: file not found"


def test_nested_dict_without_tensors_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "best_prec1": 70.1, "state_dict": {}, "arch": "resnet"}, path)
    message = error_of(read_state_dict, path)
    assert "top-level keys: epoch, best_prec1, state_dict, arch" in message
    assert "'state_dict'" in message


def test_file_holding_no_dict(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.ones(3), path)
    assert "holds a Tensor" in error_of(read_state_dict, path)


def test_report_lines() -> None:
    report = LoadReport(loaded=["a", "b"], missing=[f"m{i}" for i in range(7)], unexpected=["u"],
                        mismatched=[("fc.weight", (10, 4), (3, 4))])
    assert report.lines() == [
        "loaded 2 of 10 tensors",
        "missing (7): m0, m1, m2, m3, m4 and 2 more",
        "unexpected (1): u",
        "shape mismatch (1): fc.weight file [10, 4] vs model [3, 4]",
    ]
    assert LoadReport(loaded=["a"]).lines() == ["loaded 1 of 1 tensors"]


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    message = error_of(read_state_dict, tmp_path)
    assert message == f"model.checkpoint {tmp_path}: a directory; give the weights file in it"
