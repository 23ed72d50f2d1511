"""What graft guarantees about the user's files and about code it is handed: only a graft run is ever replaced,
one process trains into a run directory at a time, and no file graft reads runs code."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graft
from graft.errors import GraftError
from graft.rundir import RunLock
from tests.conftest import error_of, make_texts, tiny_recipe, write_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return write_csv(tmp_path / "data" / "train.csv", make_texts(60, seed=2))


def _recipe(tiny_bert: Path, data: Path, out: Path, **sections: dict) -> dict:
    return tiny_recipe(tiny_bert, data, out, **{"train": {"epochs": 1}, **sections})


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tiny_bert, tmp_path):
    project = tmp_path / "project"  # the data and the recipe live here, and output.dir points at it
    project.mkdir()
    data = write_csv(project / "train.csv", make_texts(60, seed=2))
    (project / "notes.txt").write_text("mine")
    before = sorted(p.name for p in project.iterdir())
    message = error_of(graft.train, _recipe(tiny_bert, data, project), overwrite=True)
    assert "is not a graft run" in message and "--overwrite" in message and "never deletes" in message
    assert sorted(p.name for p in project.iterdir()) == before and (project / "notes.txt").read_text() == "mine"


def test_the_refusal_of_a_folder_with_files_does_not_suggest_overwrite(tiny_bert, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.csv").write_text("a,b\n")
    assert "pass --overwrite" not in error_of(graft.train, _recipe(tiny_bert, data, out))


def test_overwrite_replaces_a_run(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    graft.train(_recipe(tiny_bert, data, out))
    assert "already holds a run (completed)" in error_of(graft.train, _recipe(tiny_bert, data, out))
    record = graft.train(_recipe(tiny_bert, data, out, train={"epochs": 1, "seed": 7}), overwrite=True)
    assert record["status"] == "completed"
    assert json.loads((out / "run.json").read_text())["recipe"]["train"]["seed"] == 7


def test_a_run_is_marked_as_one_from_its_first_moment(tiny_bert, data, tmp_path, monkeypatch):
    """Killed right after it claimed its folder, a run still says it is one (so --overwrite may replace it)."""
    from graft import pipeline

    out = tmp_path / "run"

    def killed(*_, **__):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "start_fit", killed)
        with pytest.raises(KeyboardInterrupt):
            graft.train(_recipe(tiny_bert, data, out))
    record = json.loads((out / "run.json").read_text())  # no record of its own yet: the failure is recorded
    assert record["status"] == "interrupted" and record["recipe"]["output"]["dir"] == str(out)
    assert graft.train(_recipe(tiny_bert, data, out), overwrite=True)["status"] == "completed"


def test_output_dir_that_is_a_file_is_refused(tiny_bert, data, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    assert "is a file, not a folder" in error_of(graft.train, _recipe(tiny_bert, data, path))
    assert path.read_text() == "x"


def test_a_second_process_is_refused_while_a_run_is_training(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):  # another process training into `out`, as the kernel sees it (a separate open file)
        message = error_of(graft.train, _recipe(tiny_bert, data, out))
    assert "another graft process" in message and str(os.getpid()) in message
    assert not out.exists()  # the refused run wrote nothing
    assert graft.train(_recipe(tiny_bert, data, out))["status"] == "completed"  # free again once released


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from graft.rundir import RunLock; "
         f"lock = RunLock(Path({str(out)!r})).__enter__(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GraftError, match="another graft process"), RunLock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out) as lock:  # the kernel released it with the killed process
        assert lock.fd is not None
    assert not lock.path.exists()  # removed when the run ends


MARKER_CODE = "import pathlib; pathlib.Path({path!r}).write_text('ran')"


class _RunsCode:
    """Unpickling this runs code (writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (MARKER_CODE.format(path=self.marker),)


def test_resume_with_the_plateau_schedule_runs_no_code_from_the_checkpoint(tiny_bert, data, tmp_path):
    import pickle

    from tests.e2e.test_resume import StopAt

    out, marker = tmp_path / "run", tmp_path / "marker"
    recipe = _recipe(tiny_bert, data, out, train={"epochs": 2}, schedule={"name": "plateau", "warmup_ratio": 0.0},
                     eval={"metric": "loss"}, checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(5)])
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints and all(p.name.startswith("random_states") for p in checkpoints[-1].glob("*.pkl"))
    state = json.loads((checkpoints[-1] / "loop_state.json").read_text())
    assert state["plateau"]["mode"] == "min"  # the schedule's state, as JSON
    for path in [checkpoints[-1] / "custom_checkpoint_0.pkl", *checkpoints[-1].glob("*.pkl")]:
        path.write_bytes(pickle.dumps(_RunsCode(marker)))  # a tampered checkpoint
    with contextlib.suppress(GraftError):  # refusing the damaged files is fine; running them is not
        graft.train(recipe, resume=True)
    assert not marker.exists()


def _custom_code_model(folder: Path, tiny_bert: Path, marker: Path) -> Path:
    import shutil

    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(MARKER_CODE.format(path=str(marker)) + "\n")
    return folder


def test_a_model_folder_with_its_own_code_is_refused_and_its_code_never_runs(tiny_bert, data, tmp_path):
    marker = tmp_path / "marker"
    model = _custom_code_model(tmp_path / "evil-model", tiny_bert, marker)
    message = error_of(graft.train, tiny_recipe(model, data, tmp_path / "run"))
    assert "needs Python code of its own" in message and "auto_map" in message
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_the_cli_refuses_custom_code_in_one_line_without_a_prompt(tiny_bert, data, tmp_path):
    import yaml

    marker = tmp_path / "marker"
    model = _custom_code_model(tmp_path / "evil-model", tiny_bert, marker)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(model, data, tmp_path / "run")))
    done = subprocess.run([str(Path(sys.executable).parent / "graft"), "train", str(recipe)], input="y\ny\n",
                          text=True, capture_output=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: model.name")
    assert not marker.exists()


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(tiny_bert, data, tmp_path, capsys):
    from tests.e2e.test_resume import StopAt, assert_identical, weights

    def recipe(out):
        return _recipe(tiny_bert, data, out, train={"epochs": 2}, checkpoint={"every_steps": 2, "keep_last": 2})

    graft.train(recipe(tmp_path / "whole"))
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe(tmp_path / "run"), hooks=[StopAt(5)])
    older, newest = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    rng = next(newest.glob("random_states_*.pkl"))
    rng.write_bytes(rng.read_bytes()[:-20])  # cut short, as a full disk leaves it
    graft.train(recipe(tmp_path / "run"), resume=True)
    err = capsys.readouterr().err
    assert f"checkpoint {newest.name} is damaged ({rng.name} is" in err and f"resuming from {older}" in err
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "run"))


def test_resume_refuses_when_every_checkpoint_is_damaged(tiny_bert, data, tmp_path):
    from tests.e2e.test_resume import StopAt

    recipe = _recipe(tiny_bert, data, tmp_path / "run", checkpoint={"every_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(3)])
    [only] = (tmp_path / "run" / "checkpoints").glob("step-*")
    model = only / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100] + b"x" * (model.stat().st_size - 100))  # same size, other bytes
    message = error_of(graft.train, recipe, resume=True)
    assert message.startswith("--resume: every checkpoint in") and "damaged" in message


def test_eval_predict_and_export_refuse_a_run_whose_weights_are_missing_or_cut(tiny_bert, data, tmp_path):
    run = tmp_path / "run"
    graft.train(_recipe(tiny_bert, data, run))
    weights_file = run / "model" / "model.safetensors"
    whole = weights_file.read_bytes()
    weights_file.write_bytes(whole[: len(whole) // 2])
    for call in (lambda: graft.evaluate(run), lambda: graft.export(run, tmp_path / "export")):
        assert error_of(call).startswith(f"{weights_file}: damaged")
    weights_file.unlink()
    assert "no weights file" in error_of(graft.predict, run, str(data))
    assert not (tmp_path / "export").exists()


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tiny_bert, data, tmp_path):
    run = tmp_path / "run"
    graft.train(_recipe(tiny_bert, data, run))
    assert "is a folder; name a file in it" in error_of(graft.predict, run, str(data), tmp_path)
    missing = tmp_path / "nowhere" / "p.csv"
    assert "the folder" in error_of(graft.predict, run, str(data), missing) and not missing.parent.exists()
    assert "not empty" in error_of(graft.export, run, tmp_path)


def _fill_the_disk_while_checkpointing(monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate's save_state writes part of a checkpoint, then the disk is full."""
    import errno

    from accelerate import Accelerator

    def full(self, output_dir: str, **kwargs: object) -> None:
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_files(tiny_bert, data, tmp_path, monkeypatch):
    _fill_the_disk_while_checkpointing(monkeypatch)
    run = tmp_path / "run"
    message = error_of(graft.train, _recipe(tiny_bert, data, run, checkpoint={"every_steps": 2}))
    assert message.startswith(f"disk full under output.dir {run} (No space left on device; ")
    assert "run.json says 'failed'" in message and "--resume" in message
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp-")]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]


def test_a_full_disk_that_refuses_the_failure_record_too_says_so(tiny_bert, data, tmp_path, monkeypatch):
    import errno

    import graft.rundir

    _fill_the_disk_while_checkpointing(monkeypatch)
    write_json = graft.rundir.write_json

    def full_for_the_record(path: Path, record: dict) -> Path:
        if record.get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_json(path, record)

    monkeypatch.setattr(graft.rundir, "write_json", full_for_the_record)
    run = tmp_path / "run"
    message = error_of(graft.train, _recipe(tiny_bert, data, run, checkpoint={"every_steps": 2}))
    assert "run.json could not be updated: it says 'running'" in message
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp-")]
