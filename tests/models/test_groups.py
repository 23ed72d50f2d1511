"""Layer groups: every parameter in exactly one group, input to output, the head last; per family and by regex."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.models.groups import HEAD, backbone_children, base_model_path, head_modules, layer_groups
from tests.conftest import error_of
from tests.plain_nets import FixedSizeCNN, SmallCNN


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=32))


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2,
                                                                hidden_dim=32, max_position_embeddings=32))


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=32,
                                                          max_position_embeddings=40))


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                     layer_type="basic"))


def _convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    return ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=32))


# family: (builder, base model attribute, head modules, group names input to output)
HF_FAMILIES = {
    "bert": (_bert, "bert", ["dropout", "classifier"],
             ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler", HEAD]),
    "distilbert": (_distilbert, "distilbert", ["pre_classifier", "classifier", "dropout"],
                   ["distilbert.embeddings", "distilbert.transformer.layer.0", "distilbert.transformer.layer.1",
                    HEAD]),
    "roberta": (_roberta, "roberta", ["classifier"],
                ["roberta.embeddings", "roberta.encoder.layer.0", "roberta.encoder.layer.1", HEAD]),
    "resnet": (_resnet, "resnet", ["classifier"],
               ["resnet.embedder", "resnet.encoder.stages.0", "resnet.encoder.stages.1", HEAD]),
    "convnext": (_convnext, "convnext", ["classifier"],
                 ["convnext.embeddings", "convnext.encoder.stages.0", "convnext.encoder.stages.1",
                  "convnext.layernorm", HEAD]),
    # transformers 5 keeps ViT's blocks directly under the base model: vit.layers.N, then the final norm.
    "vit": (_vit, "vit", ["classifier"], ["vit.embeddings", "vit.layers.0", "vit.layers.1", "vit.layernorm", HEAD]),
}


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hf_groups_cover_every_parameter_in_order(family):
    build, base, expected_head, expected_names = HF_FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    names = [n for n, _ in model.named_parameters()]

    assert base_model_path(model) == base
    head = head_modules(model, "")
    assert head == expected_head
    groups = layer_groups(model, head)

    assert [g.name for g in groups] == expected_names
    flat = [p for g in groups for p in g.params]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))

    # The head is last and holds exactly the parameters outside the base model.
    assert groups[-1].is_head and not any(g.is_head for g in groups[:-1])
    outside = [n for n in names if not n.startswith(base + ".")]
    assert outside and sorted(groups[-1].params) == sorted(outside)

    # Each backbone group holds only parameters under its own module path, and the groups follow the
    # parameters' registration order (input to output).
    for group in groups[:-1]:
        assert group.params and all(p.startswith(group.name + ".") for p in group.params), group.name
    firsts = [names.index(g.params[0]) for g in groups]
    assert firsts == sorted(firsts)


def test_hf_backbone_children_are_the_base_models_children():
    model = _bert()
    assert backbone_children(model, head_modules(model, "")) == ["bert.embeddings", "bert.encoder", "bert.pooler"]
    vit = _vit()
    assert backbone_children(vit, head_modules(vit, "")) == ["vit.embeddings", "vit.layers", "vit.layernorm"]


def test_plain_module_top_level_children_are_groups():
    net = SmallCNN()
    assert base_model_path(net) is None
    assert head_modules(net, "fc") == ["fc"]
    groups = layer_groups(net, ["fc"])
    assert [g.name for g in groups] == ["conv1", "bn1", "block1", "block2", HEAD]
    assert groups[0].params == ["conv1.weight"]
    assert groups[1].params == ["bn1.weight", "bn1.bias"]
    assert groups[3].params == ["block2.0.weight", "block2.0.bias", "block2.1.weight", "block2.1.bias"]
    assert groups[-1].params == ["fc.weight", "fc.bias"]
    assert backbone_children(net, ["fc"]) == ["conv1", "bn1", "block1", "block2"]  # pool has no parameters


def test_plain_nested_head_splits_its_parent():
    net = FixedSizeCNN()
    groups = layer_groups(net, ["classifier.3"])
    assert [(g.name, g.params) for g in groups] == [
        ("features", ["features.0.weight", "features.0.bias"]),
        ("classifier", ["classifier.1.weight", "classifier.1.bias"]),
        (HEAD, ["classifier.3.weight", "classifier.3.bias"]),
    ]
    assert backbone_children(net, ["classifier.3"]) == ["features", "classifier"]


def test_plain_top_level_parameter_is_its_own_group():
    class WithScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.scale = nn.Parameter(torch.ones(3))
            self.out = nn.Linear(3, 2)

    # named_parameters() yields a module's own parameters before its children's, so a root parameter comes first
    # (right for the usual cls_token / pos_embed at the input side).
    groups = layer_groups(WithScale(), ["out"])
    assert [(g.name, g.params) for g in groups] == [
        ("scale", ["scale"]), ("body", ["body.weight", "body.bias"]), (HEAD, ["out.weight", "out.bias"])]


def test_regex_groups_keep_order_and_first_match_wins():
    net = SmallCNN()
    # Groups come in the patterns' order, whatever the parameters' order.
    patterns = [r"^block2\.", r"^(conv1|bn1)\.", r"^block1\."]
    groups = layer_groups(net, ["fc"], patterns)
    assert [g.name for g in groups] == [r"^block2\.", r"^(conv1|bn1)\.", r"^block1\.", HEAD]
    assert groups[0].params == ["block2.0.weight", "block2.0.bias", "block2.1.weight", "block2.1.bias"]
    assert groups[1].params == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups[2].params == ["block1.0.weight", "block1.0.bias", "block1.1.weight", "block1.1.bias"]
    assert groups[3].params == ["fc.weight", "fc.bias"]  # the head never goes to a pattern

    # A parameter goes to the first pattern it matches: "." matches everything but only gets what is left.
    overlapping = layer_groups(net, ["fc"], [r"block", r"."])
    assert overlapping[0].params == [n for n, _ in net.named_parameters() if n.startswith("block")]
    assert overlapping[1].params == ["conv1.weight", "bn1.weight", "bn1.bias"]


def test_regex_group_errors_are_one_line():
    net = SmallCNN()
    message = error_of(layer_groups, net, ["fc"], [r"^block", r"^conv1\."])
    assert "model.groups" in message and "bn1.weight" in message and "2 parameters match no group" in message

    message = error_of(layer_groups, net, ["fc"], [r"^nothing_here", r"."])
    assert "'^nothing_here' matches no parameter" in message
    # A pattern whose parameters an earlier one already took matches nothing either.
    message = error_of(layer_groups, net, ["fc"], [r".", r"^bn1\."])
    assert "'^bn1\\\\.' matches no parameter" in message

    message = error_of(layer_groups, net, ["fc"], [r".", r"(unclosed"])
    assert message.startswith("model.groups[1] = '(unclosed': not a valid regex")
