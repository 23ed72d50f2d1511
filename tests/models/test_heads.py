"""The new head: rows of known labels copied from the pretrained head, declared heads, input sizes, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.models.build import load_model
from graft.models.heads import ConcatPool, build_head, find_output_layer, replace_head
from graft.models.plain import PlainClassifier
from graft.recipe import DataSpec, HeadSpec, ModelSpec, load_recipe
from tests.conftest import IMAGE_MEAN, IMAGE_STD, PLAIN_NETS, build_tiny_resnet, error_of, save_plain_checkpoint

SMALL_CNN = f"{PLAIN_NETS}:small_cnn"
FIXED_CNN = f"{PLAIN_NETS}:fixed_size_cnn"


def image_data(tmp_path: Path, size: int | tuple[int, int] = 16) -> DataSpec:
    return DataSpec(train=tmp_path, image_size=size, mean=IMAGE_MEAN, std=IMAGE_STD)


# --- label rows: Hugging Face ---------------------------------------------------------------------------------

def test_hf_head_copies_rows_of_known_labels(tmp_path):
    from transformers import ResNetForImageClassification

    path = build_tiny_resnet(tmp_path / "resnet", labels=("cat", "dog", "owl"))
    old = ResNetForImageClassification.from_pretrained(path).classifier[1]
    labels = ["dog", "eel", "cat"]
    loaded = load_model(ModelSpec(name=str(path)), "image_classification", labels, image_data(tmp_path))
    model = loaded.model
    new = model.classifier[1]

    assert loaded.head.path == "classifier.1" and loaded.head_modules == ["classifier"]
    assert loaded.head.copied == ["dog", "cat"]  # in target order
    assert new.weight.shape == (3, old.in_features)
    assert torch.equal(new.weight[0], old.weight[1]) and torch.equal(new.bias[0], old.bias[1])  # dog
    assert torch.equal(new.weight[2], old.weight[0]) and torch.equal(new.bias[2], old.bias[0])  # cat
    for row in old.weight:  # eel is new: none of the old rows
        assert not torch.allclose(new.weight[1], row)
    assert new.bias[1].item() == 0.0
    assert model.config.id2label == {0: "dog", 1: "eel", 2: "cat"}
    assert model.config.label2id == {"dog": 0, "eel": 1, "cat": 2}
    assert model.num_labels == 3 and model.config.num_labels == 3
    assert "rows copied from the pretrained head for dog, cat" in loaded.head.line()
    # The model predicts three classes on an image of the recipe's size.
    logits = model(pixel_values=torch.randn(2, 3, 16, 16)).logits
    assert logits.shape == (2, 3)


def test_hf_head_with_generic_labels_copies_nothing(tmp_path):
    path = build_tiny_resnet(tmp_path / "resnet")  # LABEL_0, LABEL_1: nothing to match by name
    loaded = load_model(ModelSpec(name=str(path)), "image_classification", ["LABEL_0", "x"], image_data(tmp_path))
    assert loaded.head.copied == []


def test_hf_head_with_pool_is_refused(tiny_resnet, tmp_path):
    for head in ({"pool": "avg"}, {"input_from": "resnet.encoder"}):
        tree = {"task": "image_classification", "model": {"name": str(tiny_resnet), "head": head},
                "data": {"train": str(tmp_path)}}
        message = error_of(load_recipe, tree)
        assert "model.head.pool / input_from: Hugging Face models pool their own features" in message


def test_hf_declared_head_without_pool(tiny_resnet, tmp_path):
    spec = ModelSpec(name=str(tiny_resnet), head=HeadSpec(dropout=0.1, hidden=8))
    loaded = load_model(spec, "image_classification", ["a", "b", "c"], image_data(tmp_path))
    head = loaded.model.classifier[1]
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert head[1].in_features == 16 and head[3].out_features == 3
    assert loaded.model(pixel_values=torch.randn(2, 3, 16, 16)).logits.shape == (2, 3)


# --- label rows: plain modules --------------------------------------------------------------------------------

SOURCE = ["a", "b", "c", "d"]


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = save_plain_checkpoint(tmp_path / "cnn.pt", seed=3)
    state = torch.load(path, weights_only=True)["state_dict"]
    return path, {k.removeprefix("module."): v for k, v in state.items()}


def test_plain_head_copies_rows_by_source_labels(checkpoint, tmp_path):
    path, state = checkpoint
    spec = ModelSpec(name=SMALL_CNN, checkpoint=path, source_labels=SOURCE)
    loaded = load_model(spec, "image_classification", ["c", "x", "a"], image_data(tmp_path))
    fc = loaded.root.fc
    assert loaded.head.copied == ["c", "a"]
    assert torch.equal(fc.weight[0], state["fc.weight"][2]) and torch.equal(fc.bias[0], state["fc.bias"][2])
    assert torch.equal(fc.weight[2], state["fc.weight"][0]) and torch.equal(fc.bias[2], state["fc.bias"][0])
    assert all(not torch.allclose(fc.weight[1], row) for row in state["fc.weight"])
    assert loaded.new_keys == ["fc.weight", "fc.bias"]
    # The backbone is the checkpoint's.
    assert torch.equal(loaded.root.block1[0].weight, state["block1.0.weight"])
    assert torch.equal(loaded.root.bn1.running_mean, state["bn1.running_mean"])


def assert_xavier(layer: nn.Linear) -> None:
    bound = math.sqrt(6 / (layer.in_features + layer.out_features))
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.abs().max().item() > bound / 2  # spread over the range, not near zero
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_plain_head_without_source_labels_is_fresh(checkpoint, tmp_path):
    path, state = checkpoint
    loaded = load_model(ModelSpec(name=SMALL_CNN, checkpoint=path), "image_classification", ["c", "x", "a"],
                        image_data(tmp_path))
    fc = loaded.root.fc
    assert loaded.head.copied == []
    assert_xavier(fc)
    assert all(not torch.allclose(new, old) for new in fc.weight for old in state["fc.weight"])


def test_plain_head_without_checkpoint_copies_nothing(tmp_path):
    spec = ModelSpec(name=SMALL_CNN, source_labels=SOURCE)
    loaded = load_model(spec, "image_classification", ["c", "x", "a"], image_data(tmp_path))
    assert loaded.head.copied == []
    assert_xavier(loaded.root.fc)
    assert loaded.new_keys == [n for n, _ in loaded.root.named_parameters()]  # everything starts fresh


def test_replace_head_copies_only_rows_the_old_layer_has():
    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    old = root[1]
    new = build_head([4], 3, HeadSpec())
    report = replace_head(root, "1", new, ["z", "y", "x"], ["x", "y", "z"])  # z is beyond the old 2 rows
    assert root[1] is new and report.copied == ["y", "x"]
    assert torch.equal(new.weight[1], old.weight[1]) and torch.equal(new.weight[2], old.weight[0])


# --- declared heads -------------------------------------------------------------------------------------------

def test_declared_head_structure_and_any_input_size(tmp_path):
    head = HeadSpec(pool="avgmax", batchnorm=True, dropout=0.25, hidden=32, input_from="block2")
    labels = ["a", "b", "c"]
    loaded = load_model(ModelSpec(name=SMALL_CNN, head=head), "image_classification", labels, image_data(tmp_path))
    fc = loaded.root.fc
    assert [type(m) for m in fc] == [ConcatPool, nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert fc[0].kind == "avgmax"
    assert fc[1].num_features == 2 * 16  # block2 has 16 channels; avg and max concatenated
    assert fc[2].p == 0.25
    assert (fc[3].in_features, fc[3].out_features) == (32, 32)
    assert (fc[5].in_features, fc[5].out_features) == (32, 3)
    assert loaded.head_in_shape == [16, 8, 8]
    model = loaded.model
    assert isinstance(model, PlainClassifier) and model.input_from == "block2"
    for size in [(16, 16), (40, 24)]:
        for training in (True, False):
            model.train(training)
            out = model(pixel_values=torch.randn(3, 3, *size), labels=torch.tensor([0, 1, 2]))
            assert out.logits.shape == (3, 3) and torch.isfinite(out.loss)


def test_concat_pool():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(ConcatPool("avg")(x), x.mean(dim=(2, 3)))
    assert torch.equal(ConcatPool("max")(x), x.amax(dim=(2, 3)))
    both = ConcatPool("avgmax")(x)
    assert both.shape == (2, 6) and torch.equal(both[:, 3:], x.amax(dim=(2, 3)))


def test_pool_on_a_vector_is_an_error(tmp_path):
    message = error_of(load_model, ModelSpec(name=SMALL_CNN, head=HeadSpec(pool="avg")), "image_classification",
                       ["a", "b"], image_data(tmp_path))
    assert message.startswith("model.head.pool = 'avg': the head's input is already a vector [16]")


def test_feature_map_without_pool_is_an_error(tmp_path):
    for head in (HeadSpec(input_from="block2"), HeadSpec(input_from="block2", batchnorm=True)):
        message = error_of(load_model, ModelSpec(name=SMALL_CNN, head=head), "image_classification", ["a", "b"],
                           image_data(tmp_path))
        assert message.startswith("model.head.pool: the head's input is a feature map [16, 8, 8]")


def test_build_head_refuses_other_shapes():
    assert "cannot build a head on inputs of shape [4, 5]" in error_of(build_head, [4, 5], 2, HeadSpec())


def test_find_output_layer():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    assert find_output_layer(net, None) == "2.1"
    assert find_output_layer(net, None, within=["0"]) == "0"
    assert find_output_layer(net, "2.0") == "2.0"
    message = error_of(find_output_layer, net, "head")
    assert message == "model.head.path = 'head': no such module; Linear layers here: 0, 2.0, 2.1"
    assert "no nn.Linear" in error_of(find_output_layer, nn.Sequential(nn.Conv2d(1, 1, 1)), None)


# --- input sizes ----------------------------------------------------------------------------------------------

def test_fixed_size_network_refuses_another_input_size(tmp_path):
    message = error_of(load_model, ModelSpec(name=FIXED_CNN), "image_classification", ["a", "b"],
                       image_data(tmp_path, 24))
    assert message.startswith("model: a 24x24 input fails before the head")
    assert "data.image_size" in message
    loaded = load_model(ModelSpec(name=FIXED_CNN), "image_classification", ["a", "b"], image_data(tmp_path, 16))
    assert loaded.head.path == "classifier.3" and loaded.head_in_shape == [16]
    assert loaded.model(pixel_values=torch.randn(2, 3, 16, 16)).logits.shape == (2, 2)


def test_adaptive_network_takes_another_input_size(tmp_path):
    loaded = load_model(ModelSpec(name=SMALL_CNN), "image_classification", ["a", "b"], image_data(tmp_path, 40))
    assert loaded.input["image_size"] == [40, 40] and loaded.head_in_shape == [16]
    assert loaded.model(pixel_values=torch.randn(2, 3, 40, 40)).logits.shape == (2, 2)


def test_a_head_without_bias_stays_without_bias():
    """Llama's `score` has no bias: a new head with one would be dropped silently when transformers reloads it."""
    from graft.models.heads import build_head
    from graft.recipe import HeadSpec

    assert build_head([8], 3, HeadSpec(), bias=False).bias is None
    assert build_head([8], 3, HeadSpec()).bias is not None
