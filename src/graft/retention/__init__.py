"""Forgetting: what fine-tuning costs the source task, measured, and guarded.

A classifier's pretrained output layer is kept beside the new head as the source head, reading what the new head
reads (an encoder whose head's classes nothing names gets a probe fitted on its original features instead); its
accuracy on held-out `retention.data` is scored before training, at every evaluation and on the final weights
(`measure`). A causal language model's perplexity on retain conversations is scored the same way (`language`).
Guards keep the old skill (`guards`): replay of source examples in every batch, distillation from the original
model, L2-SP, EWC (`fisher`), and BatchNorm statistics held fixed. Everything goes in through the setup's seams
(loss terms, extra evaluations, a mixed training loader): the loop knows nothing of retention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from graft.errors import GraftError
from graft.recipe.schema import GUARDS as ORDER
from graft.retention.source import Source, SourceHead, Tap, Teacher, frozen_copy, module_name, read_source

if TYPE_CHECKING:
    from graft.setup import Setup

__all__ = ["attach_retention", "read_source"]


def attach_retention(run: Setup, source: Source, say: Callable[[str], None]) -> None:
    """Keep the source head beside the new one, score it on `source` as an extra evaluation, add the recipe's
    guards. Writes nothing: a run calls this before it claims its directory."""
    from graft.retention.guards import GUARDS, Retained, keep_statistics
    from graft.retention.measure import retention_evaluation

    loaded, spec = run.loaded, run.recipe.retention
    if spec.guard and run.plan.backbone_frozen_throughout:
        raise GraftError(f"retention.guard: strategy {run.recipe.strategy.name} keeps every pretrained weight frozen, "
                         f"so nothing can be forgotten; set retention.guard: none (retention is still measured)")
    if run.task.input_kind is None:  # a language model keeps its own output layer: its perplexity is scored
        from graft.retention.language import attach_lm_retention

        attach_lm_retention(run, source.measured, source.guarded, say)
        return
    layer = None if source.probe else _source_layer(loaded.source_head, loaded.head.path, source.labels)
    reads = loaded.root.get_submodule(loaded.head.path)
    original = frozen_copy(loaded.model) if "distill" in spec.guard else None  # before the tap: a copy would carry it
    tap = Tap(reads)
    head = SourceHead(layer if layer is not None else _probe(run, tap, source), source.labels, tap)
    teacher = Teacher(original, module_name(loaded.model, reads), head) if original is not None else None
    guards = [name for name in ORDER if name in spec.guard]
    retained = Retained(run, head, source, teacher, say)
    lines = [GUARDS[name](retained) for name in guards]
    if spec.freeze_bn:
        lines.append(keep_statistics(run))
    run.evaluations.append(retention_evaluation(run, head, source, guards))
    what = (f"a probe fitted on the original features of {len(source.guarded)} examples stands in for the source "
            f"head (nothing names the pretrained head's classes: model.source_labels would)" if source.probe else
            f"the source head ({loaded.head.path}, {len(source.labels)} classes) is kept")
    say(f"retention: {what}; scored on {len(source.measured)} held-out examples of {spec.data}")
    for line in lines:
        say(f"retention: {line}")


def _probe(run: Setup, tap: Tap, source: Source) -> nn.Module:
    """A linear probe on the original model's features of the guarded source examples: the source head of an
    encoder that has none (or none whose classes are known)."""
    from graft.retention.measure import fit_linear, read

    if not len(source.guarded):
        raise GraftError("retention.measure_share = 1: a probe is fitted on the source examples not held out, and none "
                         "are left; lower it (0.5: half each)")
    loader = run.task.eval_loader(run.recipe, source.guarded, run.loaded, None, "retention")
    probe = fit_linear(read(run.model, tap, loader), len(source.labels), run.recipe.train.seed)
    if probe is None:
        raise GraftError(f"retention.data {run.recipe.retention.data}: a probe needs examples of two or more classes "
                         f"to tell apart")
    return nn.Sequential(nn.Flatten(), probe)


def _source_layer(layer: nn.Module | None, path: str, labels: list[str]) -> nn.Module:
    """The pretrained output layer, checked against the source classes named for its rows."""
    if layer is None:
        raise GraftError(f"retention: the model's checkpoint has no output layer at {path} to keep as the source head "
                         f"(its head would start from scratch); retention needs a pretrained classifier")
    rows = [m for m in layer.modules() if isinstance(m, nn.Linear)][-1].out_features
    if rows != len(labels):
        raise GraftError(f"retention: the source head ({path}) has {rows} output rows, but {len(labels)} source "
                         f"classes are named ({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''}); name one "
                         f"class per row in model.source_labels")
    return layer
