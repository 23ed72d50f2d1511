"""Hooks that observe training: progress (a bar on a terminal, timed lines elsewhere), one line per evaluation,
metrics.jsonl, and the trackers `output.trackers` names (TensorBoard, MLflow, Weights & Biases, through accelerate).

Only the main process writes; the other processes get no hooks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import netrc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlparse

from tqdm.auto import tqdm

from graft.errors import GraftError
from graft.files import read_json, write_json
from graft.training.loop import Event, Hook, LoopState

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    from graft.recipe import OutputSpec

METRICS_FILE = "metrics.jsonl"
TRACKERS_FILE = "trackers.json"
"""Each tracker's run id and how far it has logged, so a resumed run continues the same tracker runs."""
PROJECT = "graft"
"""The MLflow experiment and wandb project (MLFLOW_EXPERIMENT_NAME and WANDB_PROJECT override it)."""
SHOWN = ("loss", "accuracy", "f1_macro", "rmse", "r2")


def console_hooks(accelerator: Accelerator, run_dir: Path, state: LoopState, output: OutputSpec, total_steps: int,
                  steps_per_epoch: int, config: dict[str, Any]) -> list[Hook]:
    """The hooks every run gets on the main process: progress, metrics.jsonl and the trackers; `config` (the
    recipe) goes to the trackers as their run's parameters."""
    if not accelerator.is_main_process:
        return []
    terminal = sys.stderr.isatty()  # asked before a tracker (wandb) wraps stderr
    trackers = [start_trackers(accelerator, output.trackers, run_dir, state.history, config)] if output.trackers else []
    # After the trackers' start, which is no part of the first step's time (nor of the ETA made from it).
    progress: Hook = (ProgressBar(total_steps, state.step) if terminal else
                      ProgressLines(total_steps, state.step, steps_per_epoch, output.progress_every_s))
    return [progress, MetricsFile(run_dir / METRICS_FILE, state.history), *trackers]


class ProgressBar:
    """On a terminal: steps with loss, LR and throughput; evaluation results printed above it."""

    def __init__(self, total: int, done: int) -> None:
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False,
                        mininterval=1.0)

    def __call__(self, event: Event) -> None:
        if event.kind == "step":
            self.bar.update(1)
            if self.bar.n >= self.bar.total:
                self.bar.close()
        elif event.kind == "train":
            v = event.values
            lr = max(v["lr"].values())  # the head's, with per-group LRs
            self.bar.set_postfix(loss=f"{v['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{v['samples_per_s']:.0f}")
        elif event.kind == "eval":
            tqdm.write(format_eval(event.values), file=sys.stderr)


class ProgressLines:
    """Where no bar can redraw (CI logs, nohup, notebooks): a line at most every `every_s` seconds with step/total,
    epoch, the last logged loss and throughput, and the ETA; evaluation results as they come. `clock` (seconds)
    is injectable so tests drive time."""

    def __init__(self, total: int, done: int, steps_per_epoch: int, every_s: float | None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.steps_per_epoch, self.every_s = total, max(1, steps_per_epoch), every_s
        self.stream, self.clock = stream or sys.stderr, clock
        self.first_step, self.started = done, clock()
        self.last_line = self.started
        self.loss: float | None = None
        self.examples_per_s: float | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "train":
            self.loss, self.examples_per_s = event.values["loss"], event.values["samples_per_s"]
        elif event.kind == "eval":
            self.write(format_eval(event.values))
        elif event.kind == "step" and self.every_s is not None:
            now = self.clock()
            if now - self.last_line >= self.every_s:
                self.last_line = now
                self.write(self.line(event.state.step, now))

    def line(self, step: int, now: float) -> str:
        parts = [f"step {step}/{self.total} ({step / max(1, self.total):.0%})",
                 f"epoch {step / self.steps_per_epoch:.2f}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.examples_per_s is not None:
            parts.append(f"{self.examples_per_s:.1f} examples/s")
        # From the wall time since this process started training, evaluations and checkpoints included: the ETA
        # is when the run ends, not when its last batch does.
        per_step = (now - self.started) / max(1, step - self.first_step)
        parts.append(f"ETA {format_duration(per_step * (self.total - step))}")
        return "  ".join(parts)

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def format_duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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


def event_for_test(state: LoopState, metrics: dict[str, Any]) -> Event:
    """The test split's metrics as hooks see them: one record at the last step, logged by the trackers."""
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    return Event("test", state, {"split": "test", "step": state.step, **scalars})


# Trackers: accelerate's own classes, each built here with what graft knows once the run directory is claimed (where
# to write, the run to continue on resume), then handed to the Accelerator so accelerator.log, get_tracker and
# end_training reach them.

def _tensorboard(run_dir: Path, saved: dict[str, Any]) -> GeneralTracker:
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tensorboard", run_dir)  # <run>/tensorboard, as before trackers were configurable


def _mlflow(run_dir: Path, saved: dict[str, Any]) -> GeneralTracker:
    import logging

    import mlflow
    from accelerate.tracking import MLflowTracker

    artifacts = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').absolute()}")
        artifacts = str((run_dir / "mlflow-artifacts").absolute())
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..." per run
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return MLflowTracker(PROJECT, artifacts, run_id=saved.get("run_id"), run_name=run_dir.name)


def _wandb(run_dir: Path, saved: dict[str, Any]) -> GeneralTracker:
    from accelerate.tracking import WandBTracker

    init: dict[str, Any] = {"name": run_dir.name}
    if "run_id" in saved:  # a resumed run continues its wandb run
        init.update(id=saved["run_id"], resume="allow")
    if not os.environ.get("WANDB_DIR"):
        init["dir"] = str(run_dir)
    # Never a login prompt, never a failed upload at the end of a long run: without credentials, log offline.
    if not os.environ.get("WANDB_MODE") and not wandb_credentials():
        init["mode"] = "offline"
        where = Path(init["dir"]) / "wandb" if "dir" in init else "WANDB_DIR"
        _say(f"wandb: no API key (WANDB_API_KEY or `wandb login`), so offline into {where}; `wandb sync` uploads it "
             f"later (WANDB_MODE chooses)")
    return WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), **init)


def wandb_credentials() -> bool:
    """Whether wandb finds credentials without asking: in the environment, or in the .netrc where `wandb login` saves
    them. Read here because `wandb.login(prompt=False)` is recent (wandb 0.28 has no `prompt`, and would ask)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


TRACKERS: dict[str, Callable[[Path, dict[str, Any]], GeneralTracker]] = {
    "tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}
"""name -> accelerate's tracker for a run directory, given what trackers.json saved for it."""
PACKAGES = {"tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "wandb": ["wandb"]}
MLFLOW_SQLITE = ["sqlalchemy", "alembic"]
"""What MLflow's SQLite store needs (full mlflow has them, mlflow-skinny not). SQLite is the local store because
MLflow (3.17) refuses its ./mlruns file store unless MLFLOW_ALLOW_FILE_STORE=true."""


def check_trackers(names: list[str]) -> None:
    """Refuse, before anything is written, a tracker whose packages are not installed."""
    for name in names:
        missing = [m for m in PACKAGES[name] if importlib.util.find_spec(m) is None]
        if missing:
            raise GraftError(f"output.trackers: {name} is not installed: pip install {name} (or take {name} out of "
                             f"output.trackers)")
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
            missing = [m for m in MLFLOW_SQLITE if importlib.util.find_spec(m) is None]
            if missing:
                raise GraftError(f"output.trackers: mlflow logs to the run's mlflow.db (SQLite) when "
                                 f"MLFLOW_TRACKING_URI is not set, which needs {' and '.join(missing)} (mlflow-skinny "
                                 f"lacks them): pip install mlflow, or set MLFLOW_TRACKING_URI to your tracking server")


def start_trackers(accelerator: Accelerator, names: list[str], run_dir: Path, history: list[dict[str, Any]],
                   config: dict[str, Any]) -> Trackers:
    """Start the named trackers for this run (continuing their runs when it resumes) and the hook that logs to them."""
    check_trackers(names)
    path = run_dir / TRACKERS_FILE
    saved = read_json(path)
    trackers = {name: TRACKERS[name](run_dir, saved.get(name, {})) for name in names}
    accelerator.log_with = list(trackers.values())
    try:
        accelerator.init_trackers(PROJECT)
        params = _flat(config)
        for name, tracker in trackers.items():
            # The recipe once, when a tracker's run starts: MLflow refuses to change a param on resume (run.json
            # holds what a resume changed). TensorBoard gets none: each call adds a timestamped run to its list.
            if name not in saved and name != "tensorboard":
                tracker.store_init_configuration(params)
    except BaseException as e:
        end_trackers(accelerator, e)
        raise
    return Trackers(trackers, path, saved, history)


class Trackers:
    """Train and validation records as they come, and the test metrics at the end, to each tracker once. A resumed
    run skips what a tracker already holds from the interrupted run (the same values: resume is exact), so no step
    is logged twice; a tracker new to the run is given the restored history first."""

    def __init__(self, trackers: dict[str, GeneralTracker], path: Path, saved: dict[str, Any],
                 history: list[dict[str, Any]]) -> None:
        self.trackers, self.path = trackers, path
        # A tracker left out on resume keeps its entry, so its run continues if it comes back.
        self.saved = {**saved, **{name: {**saved.get(name, {}), **_run_id(t)} for name, t in trackers.items()}}
        self.position = (-1, 0)
        """(step, n): the record being logged is the n-th at its step."""
        for record in history:
            self.log(record)
        self._save()

    def __call__(self, event: Event) -> None:
        if event.kind in ("train", "eval", "test"):
            self.log(event.values)
            self._save()

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        self.position = (step, self.position[1] + 1 if self.position[0] == step else 1)
        values = tracker_values(record)
        for name, tracker in self.trackers.items():
            if self.position <= tuple(self.saved[name].get("logged", (-1, 0))):
                continue
            tracker.log(values, step=step)
            self.saved[name]["logged"] = self.position

    def _save(self) -> None:
        write_json(self.path, self.saved)  # built beside, renamed: a run killed mid-write keeps the previous file


def tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """A history record as tracker scalars: `<split>/<metric>`, `lr/<group>`, and train/epoch."""
    split = record["split"]
    values = {f"{split}/{k}": v for k, v in record.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch")}
    if split == "train":
        values["train/epoch"] = record["epoch"]
    values.update({f"lr/{group}": lr for group, lr in record.get("lr", {}).items()})
    return values


def end_trackers(accelerator: Accelerator, error: BaseException | None = None) -> None:
    """Close the trackers' runs; with `error`, marked as killed (Ctrl-C) or failed rather than finished, and closed
    so that a resume in the same process can continue them."""
    for tracker in accelerator.trackers:
        if error is None:
            tracker.finish()
            continue
        with contextlib.suppress(Exception):  # the error being raised is the one to see (some may not have started)
            if tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            elif tracker.name == "wandb":
                tracker.run.finish(exit_code=1)
            else:
                tracker.finish()
    accelerator.trackers.clear()


def _run_id(tracker: GeneralTracker) -> dict[str, str]:
    if tracker.name == "mlflow":
        return {"run_id": tracker.tracker.info.run_id}
    if tracker.name == "wandb":
        return {"run_id": tracker.tracker.id}
    return {}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as `section.key: value` params; a mapping of the user's own keys (labels, renames) stays one JSON
    value, so no tracker sees a key it refuses."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and all(str(k).isidentifier() for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, bool | int | float | str):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
