"""Hooks that observe training: a progress bar, one line per evaluation, metrics.jsonl and TensorBoard.

Only the main process writes; the other processes get no hooks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

from graft.training.loop import Event, Hook, LoopState

METRICS_FILE = "metrics.jsonl"
SHOWN = ("loss", "accuracy", "f1_macro")


def console_hooks(accelerator: Accelerator, run_dir: Path, total_steps: int, state: LoopState,
                  tensorboard: bool) -> list[Hook]:
    """The hooks every run gets on the main process."""
    if not accelerator.is_main_process:
        return []
    hooks: list[Hook] = [ProgressBar(total_steps, state.step), MetricsFile(run_dir / METRICS_FILE, state.history)]
    board = TensorBoard.create(run_dir / "tensorboard", state.step) if tensorboard else None
    return [*hooks, board] if board else hooks


class ProgressBar:
    """Steps with loss, LR and throughput; evaluation results printed above it."""

    def __init__(self, total: int, done: int) -> None:
        # The bar draws only on a terminal (logs would fill with redraws); evaluation lines always print.
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False,
                        mininterval=1.0, disable=not sys.stderr.isatty())

    def __call__(self, event: Event) -> None:
        if event.kind == "step":
            self.bar.update(1)
            if not self.bar.disable and self.bar.n >= self.bar.total:
                self.bar.close()
        elif event.kind == "train":
            v = event.values
            lr = max(v["lr"].values())  # the head's, with per-group LRs
            self.bar.set_postfix(loss=f"{v['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{v['samples_per_s']:.0f}")
        elif event.kind == "eval":
            tqdm.write(format_eval(event.values), file=sys.stderr)


def format_eval(v: dict[str, Any]) -> str:
    """One evaluation as a line: validation's usual metrics, or an extra evaluation's first few."""
    keys = [k for k in SHOWN if v.get(k) is not None] or [
        k for k, x in v.items() if k not in ("step", "epoch", "split", "best") and isinstance(x, float)][:3]
    shown = "  ".join(f"{k} {v[k]:.4f}" for k in keys)
    return f"epoch {v['epoch']:.2f} step {v['step']}: {v['split']} {shown}{'  (best)' if v.get('best') else ''}"


class MetricsFile:
    """Every train/eval record as one JSON line; a resumed run rewrites the file from its restored history."""

    def __init__(self, path: Path, history: list[dict[str, Any]]) -> None:
        self.path = path
        with path.open("w", encoding="utf-8") as f:
            for record in history:
                f.write(json.dumps(record) + "\n")

    def __call__(self, event: Event) -> None:
        if event.kind in ("train", "eval"):
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event.values) + "\n")


class TensorBoard:
    """Scalars under train/ and validation/; steps after a resume point replace the interrupted run's."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def create(cls, path: Path, step: int) -> TensorBoard | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return None
        return cls(SummaryWriter(str(path), purge_step=step or None))

    def __call__(self, event: Event) -> None:
        if event.kind not in ("train", "eval"):
            return
        v = event.values
        for key, value in v.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "epoch"):
                self.writer.add_scalar(f"{v['split']}/{key}", value, v["step"])
        for group, lr in v.get("lr", {}).items():
            self.writer.add_scalar(f"lr/{group}", lr, v["step"])
        self.writer.flush()
