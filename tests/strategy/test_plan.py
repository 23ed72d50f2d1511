"""The plan: when each group starts training, at which LR, what the freeze selectors keep frozen, and what
apply_plan does to requires_grad and to train/eval mode."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from graft.models.groups import head_modules, layer_groups
from graft.recipe import StrategySpec, load_recipe
from graft.strategy.plan import STRATEGIES, Plan, apply_plan, make_plan
from tests.conftest import error_of
from tests.plain_nets import SmallCNN

BACKBONE = ["conv1", "bn1", "block1", "block2"]  # SmallCNN's groups, input to output; fc is the head


def cnn_plan(epochs: int = 5, **strategy) -> tuple[nn.Module, Plan]:
    torch.manual_seed(0)
    net = SmallCNN()
    plan = make_plan(net, layer_groups(net, ["fc"]), ["fc"], StrategySpec(**strategy), epochs)
    return net, plan


def starts(plan: Plan) -> dict[str, int | None]:
    return {g.name: plan.group_start(g) for g in plan.groups}


def tiny_bert_classifier() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=32))


def bert_plan(epochs: int = 3, **strategy) -> tuple[nn.Module, Plan]:
    model = tiny_bert_classifier()
    head = head_modules(model, "")
    return model, make_plan(model, layer_groups(model, head), head, StrategySpec(**strategy), epochs)


# --- start epochs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("strategy", "expected"), [
    ({"name": "full"}, [0, 0, 0, 0]),
    ({"name": "discriminative"}, [0, 0, 0, 0]),
    ({"name": "scratch"}, [0, 0, 0, 0]),
    ({"name": "head_only"}, [None, None, None, None]),
    ({"name": "freeze", "freeze_groups": 1}, [None, 0, 0, 0]),
    ({"name": "two_phase", "phase_epochs": 2}, [2, 2, 2, 2]),
    ({"name": "two_phase", "phase_epochs": 1, "unfreeze_groups": 2}, [None, None, 1, 1]),
    ({"name": "two_phase", "phase_epochs": 3, "unfreeze_groups": 9}, [3, 3, 3, 3]),
    ({"name": "two_phase", "phase_epochs": 5}, [None, None, None, None]),  # the second phase never comes
    ({"name": "gradual_unfreeze", "unfreeze_every": 2}, [None, None, 4, 2]),  # 6 and 8 are past epoch 4
    ({"name": "gradual_unfreeze", "unfreeze_every": 1}, [4, 3, 2, 1]),
    ({"name": "gradual_unfreeze"}, [4, 3, 2, 1]),  # auto: 5 epochs give each of the 4 groups its turn
])
def test_start_epochs(strategy, expected):
    _, plan = cnn_plan(epochs=5, **strategy)
    assert [g.name for g in plan.groups] == [*BACKBONE, "head"]
    assert starts(plan) == {**dict(zip(BACKBONE, expected, strict=True)), "head": 0}
    # Every parameter of a group shares the group's start (no selector here splits a group).
    for group in plan.groups:
        assert {plan.start[p] for p in group.params} == {starts(plan)[group.name]}


@pytest.mark.parametrize(("groups", "epochs", "expected"), [
    (7, 3, [2, 2, 2, 2, 1, 1, 1]),  # too short for one group per epoch: the top 3, then all; every group trains
    (4, 3, [2, 2, 1, 1]),
    (4, 9, [8, 6, 4, 2]),  # long enough for two epochs per group, and the bottom group still trains at the end
    (4, 12, [8, 6, 4, 2]),
    (4, 1, [0, 0, 0, 0]),  # one epoch: nothing to wait for
])
def test_gradual_unfreeze_auto_lets_every_group_train(groups, epochs, expected):
    starts = STRATEGIES["gradual_unfreeze"](groups, StrategySpec(name="gradual_unfreeze"), epochs)
    assert starts == expected
    assert max(starts) < epochs and starts == sorted(starts, reverse=True)


def test_trains_at_follows_the_start():
    _, plan = cnn_plan(epochs=5, name="gradual_unfreeze", unfreeze_every=2)
    assert [plan.trains_at("block2.0.weight", e) for e in range(5)] == [False, False, True, True, True]
    assert [plan.trains_at("block1.0.weight", e) for e in range(5)] == [False, False, False, False, True]
    assert not any(plan.trains_at("conv1.weight", e) for e in range(100))
    assert all(plan.trains_at("fc.weight", e) for e in range(5))
    assert plan.ever_trains("block1.0.weight") and not plan.ever_trains("bn1.weight")
    assert not plan.backbone_frozen_throughout
    assert cnn_plan(name="head_only")[1].backbone_frozen_throughout


def test_plan_table_rows():
    net, plan = cnn_plan(epochs=5, name="two_phase", phase_epochs=1, unfreeze_groups=2)
    table = plan.table(net, base_lr=0.1)
    assert [r["name"] for r in table] == [*BACKBONE, "head"]
    assert [r["from_epoch"] for r in table] == [None, None, 1, 1, 0]
    sizes = {"conv1": 8 * 3 * 9, "bn1": 16, "block1": 8 * 8 * 9 + 8 + 16, "block2": 16 * 8 * 9 + 16 + 32,
             "head": 16 * 4 + 4}
    assert [r["params"] for r in table] == list(sizes.values())
    assert [r["trainable"] for r in table] == [0, 0, sizes["block1"], sizes["block2"], sizes["head"]]
    assert table[-1]["lr"] == pytest.approx(1.0)  # 10 × 0.1


# --- learning rates -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["discriminative", "two_phase", "gradual_unfreeze"])
def test_discriminative_lr_defaults(name):
    _, plan = cnn_plan(name=name)
    n = len(BACKBONE)
    decay = 10 ** (1 / (n - 1))  # the bottom group at a tenth of the top
    assert plan.lr_scale == pytest.approx({**{g: 1 / decay ** (n - 1 - i) for i, g in enumerate(BACKBONE)},
                                           "head": 10.0})
    assert plan.lr_scale["block2"] == 1.0 and plan.lr_scale["conv1"] == pytest.approx(0.1)


def test_explicit_lr_settings_override_the_defaults():
    _, plan = cnn_plan(name="discriminative", head_lr_mult=3.0, lr_decay=2.0)
    assert plan.lr_scale == pytest.approx({"conv1": 1 / 8, "bn1": 1 / 4, "block1": 1 / 2, "block2": 1.0,
                                           "head": 3.0})
    _, plan = cnn_plan(name="full", head_lr_mult=5.0)  # full with an explicit head multiplier
    assert plan.lr_scale == pytest.approx({**dict.fromkeys(BACKBONE, 1.0), "head": 5.0})


@pytest.mark.parametrize("name", ["full", "head_only", "scratch"])
def test_single_lr_strategies_scale_everything_by_one(name):
    _, plan = cnn_plan(name=name)
    assert plan.lr_scale == {**dict.fromkeys(BACKBONE, 1.0), "head": 1.0}


# --- freeze selectors -----------------------------------------------------------------------------------------

def frozen(plan: Plan) -> set[str]:
    return {name for name, start in plan.start.items() if start is None}


def test_freeze_modules_freezes_the_whole_subtree():
    net, plan = cnn_plan(name="freeze", freeze_modules=["block1", "bn1"])
    assert frozen(plan) == {n for n, _ in net.named_parameters() if n.startswith(("block1.", "bn1."))}
    _, nested = cnn_plan(name="freeze", freeze_modules=["block2.1"])  # one BatchNorm inside a block
    assert frozen(nested) == {"block2.1.weight", "block2.1.bias"}
    assert nested.group_start(nested.groups[3]) == 0  # the rest of block2 trains


def test_freeze_pattern_matches_parameter_names():
    net, plan = cnn_plan(name="freeze", freeze_pattern=r"\.bias$")
    assert frozen(plan) == {n for n, _ in net.named_parameters() if n.endswith(".bias")}
    assert "fc.bias" in frozen(plan)  # a pattern reaches the head too


def test_freeze_children_on_bert_counts_the_base_models_children():
    model, plan = bert_plan(name="freeze", freeze_children=2)
    names = [n for n, _ in model.named_parameters()]
    assert frozen(plan) == {n for n in names if n.startswith(("bert.embeddings.", "bert.encoder."))}
    assert plan.start["bert.pooler.dense.weight"] == 0 and plan.start["classifier.weight"] == 0
    message = error_of(bert_plan, name="freeze", freeze_children=4)
    assert message == "strategy.freeze_children = 4: the model has 3 backbone children; at most 3"


def test_freeze_groups_freezes_the_first_groups():
    model, plan = bert_plan(name="freeze", freeze_groups=2)
    names = [n for n, _ in model.named_parameters()]
    assert frozen(plan) == {n for n in names if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    message = error_of(cnn_plan, name="freeze", freeze_groups=5)
    assert message == "strategy.freeze_groups = 5: the model has 4 backbone groups; at most 4"


def test_selectors_combine_with_a_strategy():
    # gradual_unfreeze would start block2 at 1, but the selector keeps its BatchNorm frozen for the run.
    _, plan = cnn_plan(epochs=5, name="gradual_unfreeze", freeze_modules=["block2.1"])
    assert plan.start["block2.0.weight"] == 1 and plan.start["block2.1.weight"] is None


def test_unknown_module_suggests_names():
    message = error_of(bert_plan, name="freeze", freeze_modules=["embeddings"])
    assert message.startswith("strategy.freeze_modules: no module 'embeddings'; did you mean bert.embeddings")
    message = error_of(cnn_plan, name="freeze", freeze_modules=["nothing_like_it"])
    assert "no module 'nothing_like_it'" in message and "named_modules()" in message


def test_freeze_pattern_errors():
    message = error_of(cnn_plan, name="freeze", freeze_pattern="^nope")
    assert message.startswith("strategy.freeze_pattern = '^nope' matches no parameter name (e.g. conv1.weight")
    message = error_of(cnn_plan, name="freeze", freeze_pattern="(")
    assert message.startswith("strategy.freeze_pattern = '(': not a valid regex")


def test_freezing_everything_is_an_error():
    assert error_of(cnn_plan, name="freeze", freeze_pattern=".") == (
        "strategy: nothing would train; freeze fewer parameters")
    assert "nothing would train" in error_of(cnn_plan, name="head_only", freeze_modules=["fc"])


def test_freeze_without_a_selector_is_invalid():
    with pytest.raises(ValidationError, match="freeze_modules"):
        StrategySpec(name="freeze")
    tree = {"data": {"train": "train.csv"}, "strategy": {"name": "freeze"}}
    assert error_of(load_recipe, tree) == ("recipe: strategy.name = 'freeze' needs one of freeze_modules, "
                                           "freeze_pattern, freeze_children or freeze_groups")
    assert load_recipe({**tree, "strategy": {"name": "freeze", "freeze_groups": 1}}).strategy.freeze_groups == 1


# --- apply_plan -----------------------------------------------------------------------------------------------

def fully_frozen(root: nn.Module) -> list[str]:
    """Modules that have parameters, none of them trainable."""
    return [name for name, m in root.named_modules()
            if list(m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def check_modes(root: nn.Module, plan: Plan, epoch: int) -> None:
    for name, p in root.named_parameters():
        assert p.requires_grad == plan.trains_at(name, epoch), (name, epoch)
    frozen_roots = fully_frozen(root)
    for name, m in root.named_modules():
        inside_frozen = any(name == f or name.startswith(f + ".") or f == "" for f in frozen_roots)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Dropout)) and inside_frozen:
            assert not m.training, (name, epoch)
        if any(p.requires_grad for p in m.parameters()):
            assert m.training, (name, epoch)


@pytest.mark.parametrize("strategy", [
    {"name": "gradual_unfreeze", "unfreeze_every": 1},
    {"name": "two_phase", "phase_epochs": 1, "unfreeze_groups": 2},
    {"name": "freeze", "freeze_modules": ["block1.1"], "freeze_pattern": "^conv1"},
])
def test_apply_plan_cnn_each_epoch(strategy):
    net, plan = cnn_plan(epochs=5, **strategy)
    for epoch in range(5):
        apply_plan(net, plan, epoch)
        check_modes(net, plan, epoch)
    assert net.training  # fc always trains


def test_apply_plan_bert_dropouts():
    model, plan = bert_plan(epochs=3, name="gradual_unfreeze", unfreeze_every=1)
    dropouts = {n for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    for epoch in range(3):
        apply_plan(model, plan, epoch)
        check_modes(model, plan, epoch)
    # At epoch 0 only the head trains: every dropout in the encoder is off, the head's own dropout is on.
    apply_plan(model, plan, 0)
    assert model.get_submodule("dropout").training
    assert not any(model.get_submodule(n).training for n in dropouts if n.startswith("bert."))
    # At epoch 2 the pooler and layer.1 train (2 groups); layer.0 and embeddings stay frozen and in eval mode.
    apply_plan(model, plan, 2)
    assert model.get_submodule("bert.encoder.layer.1.attention.self").training
    assert not model.get_submodule("bert.encoder.layer.0").training
    assert not model.get_submodule("bert.embeddings.dropout").training


def test_apply_plan_head_only_puts_the_whole_backbone_in_eval():
    model, plan = bert_plan(name="head_only")
    apply_plan(model, plan, 0)
    assert not any(m.training for m in model.bert.modules())
    assert model.training and model.classifier.training and model.dropout.training


def bn_stats(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_batchnorm_keeps_its_statistics():
    net, plan = cnn_plan(epochs=3, name="freeze", freeze_groups=2)  # conv1 and bn1 frozen
    apply_plan(net, plan, 0)
    before = bn_stats(net)
    net(torch.randn(4, 3, 16, 16) * 2 + 1)
    after = bn_stats(net)
    for key in ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    for key in ("block1.1.running_mean", "block2.1.running_var"):  # trained groups update theirs
        assert not torch.equal(before[key], after[key]), key


def test_batchnorm_statistics_move_once_the_group_joins():
    net, plan = cnn_plan(epochs=3, name="two_phase", phase_epochs=1)
    apply_plan(net, plan, 0)
    before = bn_stats(net)
    net(torch.randn(4, 3, 16, 16) * 2 + 1)
    assert all(torch.equal(before[k], v) for k, v in bn_stats(net).items())
    apply_plan(net, plan, 1)
    net(torch.randn(4, 3, 16, 16) * 2 + 1)
    after = bn_stats(net)
    assert all(not torch.equal(before[k], after[k]) for k in after)
