"""EWC's Fisher information: the diagonal of E_x E_{y ~ p(y|x)} [g_y g_y^T], g_y = d log p(y|x) / d theta, for the
source head's predictive distribution at the start weights, over source examples.

Per-example gradients, not squared mini-batch gradients (whose square mixes examples and is a different, biased
quantity), and the expectation over y exact, not sampled nor the empirical Fisher at the given labels (Kunstner et
al. 2019): one Jacobian of the k logits per example (torch.func), from which every class's gradient follows.
Computed once, before the first step, and kept in the run directory: a resumed run reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graft.retention.source import Source, SourceHead

if TYPE_CHECKING:
    from graft.retention.guards import Anchor
    from graft.setup import Setup

FISHER_FILE = "retention/fisher.safetensors"
"""In the run directory."""


def fisher_diagonal(model: nn.Module, head: SourceHead, batches: Iterable[dict[str, torch.Tensor]],
                    params: dict[str, torch.Tensor], limit: int,
                    buffers: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The Fisher diagonal of `params` (names in `model`, values to evaluate at; `buffers` likewise) over the first
    `limit` examples of `batches`, `model` in eval mode."""
    from torch.func import functional_call, vjp

    fixed = dict(buffers or {})

    def logits(values: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        functional_call(model, {**fixed, **values}, args=(), kwargs=inputs)
        return head.logits()[0]

    def jacobian(values: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # One backward pass per class (jacrev's vmap over classes falls back to a slow loop for attention).
        z, pull = vjp(lambda v: logits(v, inputs), values)
        rows = [pull(one)[0] for one in torch.eye(len(z), dtype=z.dtype, device=z.device)]
        return {n: torch.stack([r[n] for r in rows]) for n in values}, z.detach()

    total = {n: torch.zeros_like(v) for n, v in params.items()}
    seen = 0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for batch in batches:
            for i in range(len(batch["labels"])):
                if seen == limit:
                    break
                inputs = {k: v[i:i + 1] for k, v in batch.items() if k != "labels"}
                rows, z = jacobian(params, inputs)  # name -> [k, *shape]: d logit_c / d theta
                _accumulate(total, rows, torch.softmax(z.double(), dim=0))
                seen += 1
    finally:
        for module, training in modes:
            module.training = training
    return {n: (t / max(1, seen)).float() for n, t in total.items()}


def _accumulate(total: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], p: torch.Tensor) -> None:
    """Add sum_y p_y g_y^2, where g_y = J_y - sum_c p_c J_c is the gradient of log p_y."""
    for name, jac in rows.items():
        j = jac.double().flatten(1)
        g = j - p @ j
        total[name] += (p @ g.square()).view_as(total[name]).to(total[name].dtype)


class Fisher:
    """The Fisher diagonal of the run's pretrained tensors, on first use: read from the run directory (a resumed
    run), else computed at the start values and written there (the main process)."""

    def __init__(self, run: Setup, head: SourceHead, source: Source, anchor: Anchor, limit: int,
                 say: Callable[[str], None]) -> None:
        self.path = run.recipe.output.dir / FISHER_FILE
        self.model, self.head, self.anchor, self.limit, self.say = run.model, head, anchor, limit, say
        self.loader = run.task.eval_loader(run.recipe, source.guarded, run.loaded, None, "retention")
        owner = {id(p): n for n, p in run.model.named_parameters()}
        roots = dict(run.root.named_parameters())
        self.names = {n: owner[id(roots[n])] for n in anchor.values}  # root names -> names in run.model
        # The buffers as they start (BatchNorm statistics move with the first forward pass, before this runs).
        self.buffers: dict[str, torch.Tensor] | None = {n: b.detach().clone() for n, b in run.model.named_buffers()}
        self.values: dict[str, torch.Tensor] | None = None

    def on(self, device: Any) -> dict[str, torch.Tensor]:
        if self.values is None:
            self.values = self._read(device) if self.path.is_file() else self._compute(device)
            self.buffers = None
        return self.values

    def _read(self, device: Any) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path, device=str(device))

    def _compute(self, device: Any) -> dict[str, torch.Tensor]:
        from accelerate import PartialState
        from safetensors.torch import save_file

        from graft.files import writing

        assert self.buffers is not None
        params = {self.names[n]: v.to(device) for n, v in self.anchor.values.items()}
        buffers = {n: b.to(device) for n, b in self.buffers.items()}
        batches = ({k: v.to(device) for k, v in batch.items()} for batch in self.loader)
        found = fisher_diagonal(self.model, self.head, batches, params, self.limit, buffers)
        values = {root: found[name].contiguous() for root, name in self.names.items()}
        if PartialState().is_main_process:
            with writing(self.path) as tmp:
                save_file({n: v.cpu() for n, v in values.items()}, str(tmp))
            self.say(f"retention: Fisher information of {len(values)} tensors computed, kept in {self.path}")
        return values
