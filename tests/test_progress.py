"""Progress where stderr is not a terminal: a timed line with step/total, epoch, loss, throughput and ETA, driven by an
injected clock (no test waits on wall time)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

import graft
from graft.training.logging import ProgressBar, ProgressLines, console_hooks, format_duration
from graft.training.loop import Event, LoopState
from tests.conftest import tiny_recipe

LINE = re.compile(r"^step (\d+)/(\d+) \(\d+%\)  epoch (\d+\.\d\d)  loss (\d+\.\d{4})  (\d+\.\d) examples/s  "
                  r"ETA (\S+)$")


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress_lines(every_s: float | None, total: int = 100, done: int = 0) -> tuple[ProgressLines, Clock, io.StringIO]:
    clock, stream = Clock(), io.StringIO()
    return ProgressLines(total, done, steps_per_epoch=40, every_s=every_s, stream=stream, clock=clock), clock, stream


def step(hook: ProgressLines, state: LoopState, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    state.step += 1
    hook(Event("step", state))


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_line_at_most_every_interval_with_step_epoch_loss_throughput_and_eta() -> None:
    hook, clock, stream = progress_lines(every_s=30.0)
    state = LoopState()
    for _ in range(10):  # 2 s a step: 20 s, under the interval
        step(hook, state, clock, 2.0)
    assert lines(stream) == []
    hook(Event("train", state, {"loss": 0.69314, "samples_per_s": 123.45, "lr": {"head": 1e-3}}))
    for _ in range(5):  # 30 s reached at step 15
        step(hook, state, clock, 2.0)
    assert lines(stream) == ["step 15/100 (15%)  epoch 0.38  loss 0.6931  123.5 examples/s  ETA 2m50s"]
    for _ in range(14):  # 28 s more: no second line yet
        step(hook, state, clock, 2.0)
    assert len(lines(stream)) == 1
    step(hook, state, clock, 2.0)  # 30 s after the first line
    assert len(lines(stream)) == 2
    assert LINE.match(lines(stream)[1]), lines(stream)[1]
    assert lines(stream)[1].startswith("step 30/100 (30%)  epoch 0.75")
    assert lines(stream)[1].endswith("ETA 2m20s")  # 70 steps left at 2 s each


def test_never_more_often_than_the_interval_however_fast_the_steps() -> None:
    hook, clock, stream = progress_lines(every_s=5.0, total=10_000)
    state = LoopState()
    for _ in range(1000):  # 0.125 s a step (exact in binary): 125 s in all
        step(hook, state, clock, 0.125)
    steps = [int(line.split()[1].split("/")[0]) for line in lines(stream)]
    assert steps == list(range(40, 1001, 40))  # 40 steps = 5 s


def test_before_the_first_log_the_line_has_no_loss_and_evaluations_print_as_they_come() -> None:
    hook, clock, stream = progress_lines(every_s=10.0)
    state = LoopState()
    step(hook, state, clock, 11.0)
    assert lines(stream) == ["step 1/100 (1%)  epoch 0.03  ETA 18m09s"]
    hook(Event("eval", state, {"split": "validation", "step": 1, "epoch": 0.03, "loss": 0.5, "accuracy": 0.75,
                               "best": True}))
    assert lines(stream)[-1] == "epoch 0.03 step 1: validation loss 0.5000  accuracy 0.7500  (best)"


def test_a_resumed_run_counts_its_eta_from_the_steps_it_ran() -> None:
    hook, clock, stream = progress_lines(every_s=10.0, total=100, done=90)
    state = LoopState(step=90)
    for _ in range(5):
        step(hook, state, clock, 2.0)
    assert lines(stream) == ["step 95/100 (95%)  epoch 2.38  ETA 10s"]


def test_no_lines_when_the_interval_is_null() -> None:
    hook, clock, stream = progress_lines(every_s=None)
    state = LoopState()
    for _ in range(5):
        step(hook, state, clock, 1000.0)
    assert lines(stream) == []


@pytest.mark.parametrize(("seconds", "shown"), [(4.4, "4s"), (185, "3m05s"), (7620, "2h07m"), (0, "0s")])
def test_durations_read_at_a_glance(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


class FakeAccelerator:
    is_main_process = True


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stderr", "kind"), [(io.StringIO(), ProgressLines), (Terminal(), ProgressBar)],
                         ids=["pipe", "terminal"])
def test_lines_off_a_terminal_a_bar_on_one(stderr: io.StringIO, kind: type, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.recipe import OutputSpec

    monkeypatch.setattr(sys, "stderr", stderr)
    hooks = console_hooks(FakeAccelerator(), tmp_path, LoopState(), OutputSpec(trackers=[]), total_steps=10,
                          steps_per_epoch=5, config={})
    assert isinstance(hooks[0], kind)


def test_a_run_off_a_terminal_prints_progress_lines(tiny_bert: Path, text_csv: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # An interval far below a step's duration: a line after every step, whatever the machine's speed.
    recipe = tiny_recipe(tiny_bert, text_csv, tmp_path / "run", train={"epochs": 1, "log_every": 1},
                         output={"progress_every_s": 1e-6})
    record = graft.train(recipe)
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    total = record["timings"]["steps"]
    assert len(printed) == total
    # the first step's line comes before the first logged loss; every later one has it all
    assert printed[0].startswith(f"step 1/{total} (") and " ETA " in printed[0]
    assert all(LINE.match(line) for line in printed[1:]), printed
    assert printed[-1].startswith(f"step {total}/{total} (100%)  epoch 1.00  loss ")
    assert printed[-1].endswith("ETA 0s")
