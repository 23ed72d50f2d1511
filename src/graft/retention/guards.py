"""Forgetting guards, each added through the setup's seams: a loss term (logged as its own curve, `loss_<name>`) or
a mixed training loader. `GUARDS` maps a name to a function that adds it and returns the line a run prints.

The loss terms run after the step's forward pass, in `graft.recipe.schema.GUARDS` order: `distill` first, because
it reads the features that forward pass left in the source head's tap, before `replay` runs a forward of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from graft.retention.source import Source, SourceHead, Teacher
from graft.training.loop import MIXED

if TYPE_CHECKING:
    from graft.setup import Setup


@dataclass
class Retained:
    """What a guard works with."""

    run: Setup
    head: SourceHead
    source: Source
    teacher: Teacher | None
    """The original model, frozen (only when `distill` is asked for: it costs a copy of the model)."""
    say: Callable[[str], None]


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model itself takes from a training batch: no labels, no replayed examples, no cache index."""
    from graft.training.prefix_cache import INDEX

    return {k: v for k, v in batch.items() if k not in ("labels", MIXED, INDEX)}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the examples (Hinton et al. 2015; the
    T^2 keeps its gradient's scale as T changes)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), log_target=True,
                    reduction="batchmean") * t * t


def distill(r: Retained) -> str:
    spec, teacher = r.run.recipe.retention.distill, r.teacher
    assert teacher is not None, "attach_retention copies the original model when distill is asked for"

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        student = r.head.logits()  # this step's forward pass, on the very inputs the teacher now sees
        return spec.weight * distillation_loss(student, teacher.logits(model_inputs(batch)), spec.temperature)

    r.run.loss_terms["distill"] = term
    return (f"distill: the original model teaches the source head's outputs on each training batch (KL at "
            f"T = {spec.temperature:g}, weight {spec.weight:g})")


def replay(r: Retained) -> str:
    from accelerate import PartialState

    from graft.training.mixing import mix

    run, spec = r.run, r.run.recipe.retention.replay
    # Replayed examples are not augmented: an augmented image batch is keyed by (index, epoch), a mixed one is not.
    source = run.task.train_loader(run.recipe, r.source.guarded, run.loaded, False, [])
    run.train_loader = mix(run.train_loader, source.dataset, source.collate_fn, spec.share, run.recipe.train.seed,
                           PartialState().num_processes)
    model = run.model

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        replayed = batch[MIXED]
        logits = r.head(model, {k: v for k, v in replayed.items() if k != "labels"})
        return spec.weight * F.cross_entropy(logits, replayed["labels"])

    run.loss_terms["replay"] = term
    k = run.train_loader.batch_sampler.k  # type: ignore[union-attr]
    return (f"replay: {k} of every {run.recipe.train.batch_size} training examples come from the "
            f"{len(r.source.guarded)} source examples not held out, trained through the source head (weight "
            f"{spec.weight:g})")


def l2sp_penalty(trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor], head: dict[str, torch.Tensor],
                 weight: float, head_weight: float) -> torch.Tensor:
    """weight/2 * sum |w - w0|^2 over the pretrained weights, plus head_weight/2 * sum |w|^2 over the head's."""
    pull = sum(((p - start[n]) ** 2).sum() for n, p in trained.items())
    plain = sum((p ** 2).sum() for p in head.values())
    return weight / 2 * pull + head_weight / 2 * plain  # type: ignore[return-value]


def l2sp(r: Retained) -> str:
    return add_l2sp(r.run)


def add_l2sp(run: Setup) -> str:
    """The l2sp loss term, in place of the optimiser's weight decay."""
    spec = run.recipe.retention.l2sp
    trained, head = pretrained_and_head(run)
    start = Anchor(trained)
    decay, run.optim.weight_decay = run.optim.weight_decay, 0.0
    run.optim.why += f"; its weight decay ({decay:g}) is off: retention.guard l2sp replaces it"

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        return l2sp_penalty(trained, start.on(trained), head, spec.weight, spec.head_weight)

    run.loss_terms["l2sp"] = term
    return (f"l2sp: {len(trained)} pretrained tensors pulled to their start (weight {spec.weight:g}), plain L2 on the "
            f"new head (weight {spec.head_weight:g}) in place of the optimiser's weight decay ({decay:g})")


def ewc_penalty(trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                weight: float) -> torch.Tensor:
    """weight/2 * sum F (w - w0)^2 (Kirkpatrick et al. 2017)."""
    return weight / 2 * sum((fisher[n] * (p - start[n]) ** 2).sum() for n, p in trained.items())  # type: ignore


def ewc(r: Retained) -> str:
    from graft.retention.fisher import FISHER_FILE, Fisher

    run, spec = r.run, r.run.recipe.retention.ewc
    trained, _ = pretrained_and_head(run)
    start = Anchor(trained)
    fisher = Fisher(run, r.head, r.source, start, spec.examples, r.say)

    def term(batch: dict[str, Any], output: Any) -> torch.Tensor:
        anchor = start.on(trained)
        return ewc_penalty(trained, anchor, fisher.on(start.device), spec.weight)

    run.loss_terms["ewc"] = term
    return (f"ewc: {len(trained)} pretrained tensors held by their Fisher information on up to {spec.examples} source "
            f"examples (weight {spec.weight:g}; computed before the first step, kept in {FISHER_FILE})")


GUARDS: dict[str, Callable[[Retained], str]] = {"distill": distill, "replay": replay, "l2sp": l2sp, "ewc": ewc}


class Anchor:
    """The start values of trained tensors, moved once to wherever the tensors are trained."""

    def __init__(self, trained: dict[str, torch.Tensor]) -> None:
        self.values = {n: p.detach().clone() for n, p in trained.items()}
        self.device: torch.device | None = None

    def on(self, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = next(iter(trained.values())).device
        if device != self.device:
            self.values = {n: v.to(device) for n, v in self.values.items()}
            self.device = device
        return self.values


def pretrained_and_head(run: Setup) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """The parameters of `run.root` that train at some epoch, outside the head; and the head's weights (not its
    biases or norms, as weight decay)."""
    head = {p for g in run.plan.groups if g.is_head for p in g.params}
    params = [(n, p) for n, p in run.root.named_parameters() if run.plan.ever_trains(n)]
    return ({n: p for n, p in params if n not in head}, {n: p for n, p in params if n in head and p.dim() > 1})


def keep_statistics(run: Setup) -> str:
    """The backbone's BatchNorm layers run in eval mode throughout: their statistics stay the pretrained ones."""
    from graft.models.groups import under

    loaded = run.loaded
    norms = [m for n, m in loaded.root.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and not under(n, loaded.head_modules)]
    for norm in norms:  # each epoch's plan puts the model in train mode; these go back to eval before each forward
        norm.register_forward_pre_hook(_eval_mode)
    return f"freeze_bn: the backbone's {len(norms)} BatchNorm layers keep their statistics (eval mode throughout)"


def _eval_mode(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.training = False
