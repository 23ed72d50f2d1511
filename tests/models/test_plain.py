"""Plain nn.Modules: factories by name, checkpoints into them, recipe-relative paths, the saved model round trip."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from graft.models.build import load_model, load_trained
from graft.models.plain import PlainClassifier, build_net, head_input_shape, import_factory, run_until, save_plain
from graft.recipe import DataSpec, HeadSpec, ModelSpec, load_recipe
from tests.conftest import IMAGE_MEAN, IMAGE_STD, PLAIN_NETS, error_of
from tests.plain_nets import SmallCNN

SMALL_CNN = f"{PLAIN_NETS}:small_cnn"


def image_data(tmp_path: Path, size: int = 16) -> DataSpec:
    return DataSpec(train=tmp_path, image_size=size, mean=IMAGE_MEAN, std=IMAGE_STD)


# --- factories ------------------------------------------------------------------------------------------------

def test_factory_from_a_file_and_from_a_package():
    net = build_net(SMALL_CNN, {"num_classes": 5, "width": 4})
    assert type(net).__name__ == "SmallCNN" and net.fc.out_features == 5 and net.conv1.out_channels == 4
    factory = import_factory("tests.plain_nets:fixed_size_cnn")
    assert factory(num_classes=2).classifier[3].out_features == 2


@pytest.mark.parametrize(("name", "expected"), [
    ("collections:OrderedDict", "the factory returned OrderedDict, not a torch nn.Module"),
    ("/no/such/dir/nets.py:small_cnn", "file /no/such/dir/nets.py not found"),
    (f"{PLAIN_NETS}:no_such_function", "has no function 'no_such_function'"),
    ("tests.plain_nets:SmallCNNX", "tests.plain_nets has no function 'SmallCNNX'"),
    ("graft_no_such_package.nets:build", "cannot import graft_no_such_package.nets"),
    ("small_cnn", "expected package.module:function or path/file.py:function"),
    ("nets.py:", "expected package.module:function or path/file.py:function"),
])
def test_factory_errors_name_the_field(name, expected):
    message = error_of(build_net, name, {})
    assert message.startswith(f"model.name = {name!r}: "), message
    assert expected in message


def test_factory_file_that_does_not_import(tmp_path):
    (tmp_path / "needs_dep.py").write_text("import graft_no_such_dependency\n\ndef build():\n    pass\n")
    name = f"{tmp_path / 'needs_dep.py'}:build"
    message = error_of(import_factory, name)
    assert message.startswith(f"model.name = {name!r}: ") and "graft_no_such_dependency" in message
    assert "graft_user_needs_dep" not in sys.modules  # no half-imported module left behind


def test_rejected_kwargs_name_model_kwargs():
    message = error_of(build_net, SMALL_CNN, {"depth": 3})
    assert message.startswith(f"model.kwargs: {SMALL_CNN} rejected {{'depth': 3}}")
    assert "depth" in message


def test_a_factory_error_through_load_model(tmp_path):
    message = error_of(load_model, ModelSpec(name="collections:OrderedDict"), "image_classification", ["a"],
                       image_data(tmp_path))
    assert "not a torch nn.Module" in message


# --- checkpoints ----------------------------------------------------------------------------------------------

def test_checkpoint_with_no_matching_tensor(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    message = error_of(load_model, ModelSpec(name=SMALL_CNN, checkpoint=path), "image_classification", ["a", "b"],
                       image_data(tmp_path))
    assert message.startswith(f"model.checkpoint {path}: no tensor matches the model's parameters (loaded 0 of ")
    assert "model.renames" in message


def backbone_state(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    state = SmallCNN().state_dict()
    path = tmp_path / "prefixed.safetensors"
    save_file({f"backbone.{k}": v for k, v in state.items()}, path)
    return path, state


@pytest.mark.parametrize("renames", [{"backbone.": ""}, {"backbone": ""}])
def test_renames_through_the_recipe(tmp_path, renames):
    path, state = backbone_state(tmp_path)
    tree = {"task": "image_classification",
            "model": {"name": SMALL_CNN, "checkpoint": str(path), "renames": renames},
            "data": {"train": str(tmp_path), "image_size": 16, "mean": IMAGE_MEAN, "std": IMAGE_STD}}
    recipe = load_recipe(tree)
    loaded = load_model(recipe.model, recipe.task, ["a", "b", "c", "d"], recipe.data)
    assert loaded.notes == [f"loaded {len(state)} of {len(state)} tensors"]  # nothing missing or unexpected
    got = loaded.root.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):  # the head is replaced
            assert torch.equal(got[key], value), key


def test_prefixed_checkpoint_without_renames_fails(tmp_path):
    path, _ = backbone_state(tmp_path)
    message = error_of(load_model, ModelSpec(name=SMALL_CNN, checkpoint=path), "image_classification", ["a"],
                       image_data(tmp_path))
    assert "no tensor matches" in message and "model.renames" in message


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(SmallCNN(), path)  # the whole module, not a state dict
    message = error_of(load_model, ModelSpec(name=SMALL_CNN, checkpoint=path), "image_classification", ["a"],
                       image_data(tmp_path))
    assert message.startswith(f"model.checkpoint {path}: needs full unpickling")
    assert "weights_only" in message and "safetensors" in message


# --- recipe paths ---------------------------------------------------------------------------------------------

def test_factory_and_checkpoint_paths_are_relative_to_the_recipe(tmp_path, monkeypatch, plain_checkpoint):
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(PLAIN_NETS, folder / "nets.py")
    shutil.copy(plain_checkpoint, folder / "cnn.pt")
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "task": "image_classification",
        "model": {"name": "nets.py:small_cnn", "checkpoint": "cnn.pt"},
        "data": {"train": "images", "image_size": 16, "mean": IMAGE_MEAN, "std": IMAGE_STD},
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(folder / "recipe.yaml")
    assert recipe.model.name == f"{folder / 'nets.py'}:small_cnn"
    assert recipe.model.checkpoint == folder / "cnn.pt"
    assert recipe.data.train == folder / "images"
    loaded = load_model(recipe.model, recipe.task, ["a", "b"], recipe.data)
    n = len(SmallCNN().state_dict())  # parameters and BatchNorm buffers
    assert loaded.notes == [f"loaded {n} of {n} tensors"]
    assert type(loaded.root).__module__ == "graft_user_nets"  # built from the copy beside the recipe


def test_overridden_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "task": "image_classification", "model": {"name": "nets.py:small_cnn"},
        "data": {"train": "images", "image_size": 16}}))
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(folder / "recipe.yaml", ["model.name=lib/nets.py:f"])
    assert recipe.model.name == f"{tmp_path / 'lib' / 'nets.py'}:f"


# --- run_until / head input ------------------------------------------------------------------------------------

def test_run_until_and_head_input_shape():
    net = SmallCNN()
    x = torch.randn(2, 3, 12, 20)
    assert run_until(net, "block2", "output", x).shape == (2, 16, 6, 10)
    assert run_until(net, "fc", "input", x).shape == (2, 16)
    assert not any(h for m in net.modules() for h in (m._forward_hooks, m._forward_pre_hooks))  # hooks removed
    net.train()
    assert head_input_shape(net, "fc", None, (12, 20)) == [16]
    assert head_input_shape(net, "fc", "block1", (12, 20)) == [8, 12, 20]
    assert net.training  # the dry run leaves the mode as it was
    message = error_of(head_input_shape, net, "fc", "blok2", (8, 8))
    assert message.startswith("model.head.input_from = 'blok2': no such module")


def test_unknown_input_from_through_load_model(tmp_path):
    spec = ModelSpec(name=SMALL_CNN, head=HeadSpec(input_from="block2.nothing", pool="avg"))
    message = error_of(load_model, spec, "image_classification", ["a"], image_data(tmp_path))
    assert message.startswith("model.head.input_from = 'block2.nothing': no such module")


# --- the saved model ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [HeadSpec(), HeadSpec(pool="avgmax", batchnorm=True, dropout=0.2, hidden=8,
                                                       input_from="block2")])
def test_load_trained_round_trip(tmp_path, plain_checkpoint, head):
    spec = ModelSpec(name=SMALL_CNN, kwargs={"width": 8}, checkpoint=plain_checkpoint, head=head)
    labels = ["blue", "green", "red"]
    loaded = load_model(spec, "image_classification", labels, image_data(tmp_path, 16))
    model = loaded.model
    model.train()
    model(pixel_values=torch.randn(4, 3, 16, 16))  # move BatchNorm statistics, so they must travel too
    folder = tmp_path / "model"
    # The meta that graft.models.save.save_final_model writes.
    save_plain(model, model.state_dict(), folder, {
        "factory": spec.name, "kwargs": spec.kwargs, "head_path": model.head_path, "head": spec.head.model_dump(),
        "head_in_shape": loaded.head_in_shape, "labels": labels, "input": loaded.input})

    trained = load_trained(folder, "image_classification", image_data(tmp_path, 16))
    assert isinstance(trained.model, PlainClassifier) and trained.processor is None
    assert trained.labels == labels
    assert trained.input == {"image_size": [16, 16], "mean": IMAGE_MEAN, "std": IMAGE_STD}
    assert trained.model.input_from == head.input_from
    model.eval()
    trained.model.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected, got = model(pixel_values=x).logits, trained.model(pixel_values=x).logits
    assert got.shape == (5, 3)
    assert torch.equal(got, expected)


def test_load_trained_without_a_model(tmp_path):
    message = error_of(load_trained, tmp_path, "image_classification", image_data(tmp_path, 16))
    assert message == f"{tmp_path}: no saved model here (config.json missing); did the run finish?"
