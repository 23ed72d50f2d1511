"""Parameter groups, optimisers and learning-rate schedules."""

import itertools

import pytest
import torch
from torch import nn

from graft.models.groups import layer_groups
from graft.recipe import OptimSpec, ScheduleSpec, StrategySpec
from graft.strategy.plan import Plan, make_plan
from graft.training.optim import build_optimizer, build_scheduler, lr_multiplier, no_decay_names, param_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)


def test_no_weight_decay_on_biases_and_norms():
    assert no_decay_names(Net()) == {"norm.weight", "norm.bias", "fc.bias", "bn.weight", "bn.bias"}


def plan_for(net: nn.Module, **strategy) -> Plan:
    groups = layer_groups(net, ["fc"])
    return make_plan(net, groups, ["fc"], StrategySpec(**strategy), epochs=3)


def test_groups_cover_trainable_parameters_once_and_skip_frozen():
    net = Net()
    groups = param_groups(net, plan_for(net, name="freeze", freeze_modules=["embed"]), 1.0, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for n, p in net.named_parameters() if n != "embed.weight"}
    decay = next(g for g in groups if g["name"] == "head/decay")
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)] and decay["weight_decay"] == 0.1


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                      ("sgd", torch.optim.SGD)])
def test_optimisers(name, cls):
    opt = build_optimizer(param_groups(net := Net(), plan_for(net), 0.5, 0.01), OptimSpec(name=name, lr=0.5))
    assert isinstance(opt, cls)
    assert all(g["lr"] == 0.5 for g in opt.param_groups)
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == [
        ("embed/decay", 0.01), ("norm/no_decay", 0.0), ("bn/no_decay", 0.0), ("head/decay", 0.01),
        ("head/no_decay", 0.0)]
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def lrs(name: str, total: int = 100, steps_per_epoch: int = 10, **kw) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, ScheduleSpec(name=name, **kw), total_steps=total, steps_per_epoch=steps_per_epoch,
                            metric_mode="max")
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_linear_warms_up_then_decays_to_zero():
    v = lrs("linear", warmup_ratio=0.1)
    assert v[0] < v[5] < v[9] <= 1.0
    assert max(v) == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(v[10:]))
    assert v[-1] < 0.02


def test_cosine_has_its_floor():
    v = lrs("cosine", warmup_ratio=0.0, min_lr_ratio=0.1)
    assert v[0] == pytest.approx(1.0)
    assert v[50] == pytest.approx(0.55, abs=0.01)
    assert min(v) >= 0.1 - 1e-9


def test_constant_after_warmup_steps():
    v = lrs("constant", warmup_steps=4)
    assert v[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert set(v[4:]) == {1.0}


def test_step_decays_every_n_epochs():
    v = lrs("step", warmup_ratio=0.0, step_epochs=2, gamma=0.5)
    assert v[0] == v[19] == 1.0
    assert v[20] == v[39] == 0.5
    assert v[40] == 0.25


def test_lr_multiplier_is_zero_at_the_end_of_linear():
    assert lr_multiplier(100, name="linear", total=100, warmup=0, steps_per_epoch=10, step_epochs=1, gamma=0.1,
                         min_lr_ratio=0.0) == 0.0


def test_plateau_reduces_on_a_stalled_metric():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, ScheduleSpec(name="plateau", plateau_patience=1, plateau_factor=0.5),
                            total_steps=10, steps_per_epoch=5, metric_mode="max")
    for metric in (0.5, 0.6, 0.6, 0.6):
        sched.step(metric)
    assert opt.param_groups[0]["lr"] == 0.5


def test_adam_family_uses_the_fused_kernel() -> None:
    """bench/ (loop_overhead) found the HF Trainer's fused AdamW faster than the per-parameter loop."""
    from graft.recipe import OptimSpec
    from graft.training.optim import build_optimizer

    params = [torch.nn.Parameter(torch.randn(4, 4))]
    for name in ("adamw", "adam"):
        optimizer = build_optimizer([{"params": params, "weight_decay": 0.0}], OptimSpec(name=name, lr=1e-3))
        assert optimizer.defaults["fused"] is True
