"""Teacher -> student distillation (`strategy.name: distill`): a smaller student learns from a finished run's model.

The student is model.name, or the teacher cut to `strategy.distill.layers` layers (`teacher.load_student`). It
trains on (1 - weight) x the task's loss + weight x T^2 x KL(teacher_T || student_T) (the KL is retention's
`distillation_loss`), the teacher frozen and in eval mode on the very batch the student sees; `unlabelled` texts
join every batch through the mixing seam (`graft.training.mixing`) and teach through the KL alone. Teacher logits are
computed on the fly: a deterministic eval-mode pass, so a resumed run is as exact as any other. Everything goes in
through the setup's seams (the task loss, a loss term, a mixed loader, a record section); the loop knows nothing of
distillation. At the end, run.json's `distill` section sets teacher and student side by side (`record`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from graft.distill.teacher import FrozenTeacher, TeacherRun, check_same_inputs, load_student, read_teacher
from graft.training.loop import MIXED

if TYPE_CHECKING:
    from graft.setup import Setup

__all__ = ["attach_distillation", "load_student", "read_teacher"]


def attach_distillation(run: Setup, teacher: TeacherRun, start: str, say: Callable[[str], None]) -> None:
    """The teacher loaded and frozen, the task's loss scaled by 1 - weight, the KL term added, unlabelled texts mixed
    in, the record section registered. Writes nothing: a run calls this before it claims its directory. `start`:
    what the student starts from, in words."""
    from graft.distill.record import distill_record
    from graft.retention.guards import distillation_loss, model_inputs
    from graft.trained import open_run
    from graft.training.precision import resolve_precision

    spec = run.recipe.strategy.distill
    opened = open_run(teacher.run_dir, raw=True)
    check_same_inputs(run.loaded.processor, opened.processor, teacher.run_dir)
    frozen = FrozenTeacher(opened.model, resolve_precision(run.recipe.train.precision))
    own, model = run.task_loss, run.model

    def task_part(batch: dict[str, Any], output: Any) -> torch.Tensor:
        return (1 - spec.weight) * (own(batch, output) if own is not None else output.loss)

    def kl_part(batch: dict[str, Any], output: Any) -> torch.Tensor:
        student, taught = output.logits.float(), frozen.logits(model_inputs(batch))
        if MIXED in batch:  # the unlabelled texts: a forward of their own, taught by the KL alone
            extra = {k: v for k, v in batch[MIXED].items() if k != "labels"}
            student = torch.cat([student, model(**extra).logits.float()])
            taught = torch.cat([taught, frozen.logits(extra)])
        return spec.weight * distillation_loss(student, taught, spec.temperature)

    run.task_loss = task_part
    run.loss_terms["distill"] = kl_part
    mixed = _mix_unlabelled(run) if spec.unlabelled is not None else ""
    run.sections["distill"] = partial(distill_record, run, teacher, frozen, start)
    say(f"distill: student: {start}")
    say(f"distill: the teacher ({teacher.run_dir}) teaches every training batch: loss = {1 - spec.weight:g} x the "
        f"task's + {spec.weight:g} x T^2 x KL at T = {spec.temperature:g}{mixed}")


def _mix_unlabelled(run: Setup) -> str:
    """strategy.distill.unlabelled drawn into every training batch (its share of it), unaugmented; what the run says
    of it."""
    from accelerate import PartialState

    from graft.training.mixing import mix

    spec, recipe = run.recipe.strategy.distill, run.recipe
    texts, split = run.task.read_unlabelled(recipe, str(spec.unlabelled))
    loader = run.task.eval_loader(recipe, split, run.loaded)
    run.train_loader = mix(run.train_loader, loader.dataset, loader.collate_fn, spec.unlabelled_share,
                           recipe.train.seed, PartialState().num_processes)
    k = run.train_loader.batch_sampler.k  # type: ignore[union-attr]
    return (f"; {k} of every {recipe.train.batch_size} examples are drawn from the {len(texts)} unlabelled texts of "
            f"{spec.unlabelled} (KL only)")
