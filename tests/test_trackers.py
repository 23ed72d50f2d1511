"""output.trackers: train, validation and test metrics and the recipe, through accelerate, into TensorBoard, MLflow's
local SQLite store and wandb's offline run folder, read back; `output.tensorboard` still works; a resumed run logs no
step twice. Nothing here touches the network: wandb has no API key and logs offline."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

import graft
from graft.recipe import OutputSpec, load_recipe
from graft.training.logging import TRACKERS_FILE, check_trackers
from graft.training.loop import Event
from tests.conftest import error_of, make_texts, tiny_recipe, write_csv

ALL = ["tensorboard", "mlflow", "wandb"]


@pytest.mark.parametrize(("output", "trackers"), [
    ({}, ["tensorboard"]),
    ({"tensorboard": True}, ["tensorboard"]),
    ({"tensorboard": False}, []),
    ({"trackers": ["mlflow"]}, ["mlflow"]),
    ({"trackers": "wandb"}, ["wandb"]),
    ({"trackers": ["mlflow"], "tensorboard": False}, ["mlflow"]),
    ({"trackers": ALL, "tensorboard": True}, ALL),
    ({"trackers": ["mlflow", "mlflow", "wandb"]}, ["mlflow", "wandb"]),
    ({"trackers": []}, []),
])
def test_trackers_and_the_older_tensorboard_switch(output: dict[str, Any], trackers: list[str]) -> None:
    spec = OutputSpec(**output)
    assert spec.trackers == trackers
    assert "tensorboard" not in spec.model_dump()  # folded into trackers: a resumed recipe cannot contradict itself


def test_set_overrides_reach_the_trackers() -> None:
    recipe = load_recipe({"data": {"train": "train.csv"}}, ["output.trackers=[tensorboard,wandb]"])
    assert recipe.output.trackers == ["tensorboard", "wandb"]
    assert load_recipe({"data": {"train": "train.csv"}}, ["output.tensorboard=false"]).output.trackers == []


@pytest.mark.parametrize("output", [{"trackers": ["mlflow"], "tensorboard": True},
                                    {"trackers": ALL, "tensorboard": False}])
def test_tensorboard_contradicting_the_trackers_is_one_line(output: dict[str, Any]) -> None:
    message = error_of(load_recipe, {"data": {"train": "train.csv"}, "output": output})
    assert "output.tensorboard" in message and "contradicts output.trackers" in message


def test_an_unknown_tracker_is_one_line_naming_the_choices() -> None:
    message = error_of(load_recipe, {"data": {"train": "train.csv"}, "output": {"trackers": ["neptune"]}})
    assert "output.trackers" in message and "'neptune'" in message and "'mlflow'" in message


@pytest.fixture
def quiet_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No API key anywhere wandb looks, its files and service under tmp_path, stopped afterwards; no tracker
    settings from the environment."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR",
                 "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    yield
    import wandb

    wandb.teardown()  # the wandb-core service process


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("trackers-data") / "train.csv", make_texts(60, seed=5))


def tracked_recipe(model: Path, data: Path, run_dir: Path, trackers: list[str], **sections: dict) -> dict[str, Any]:
    recipe = tiny_recipe(model, data, run_dir, **sections)
    recipe["output"] = {"dir": str(run_dir), "trackers": trackers}  # not the shared recipe's tensorboard: false
    return recipe


def history(record: dict[str, Any], split: str, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in record["metrics"]["history"] if h["split"] == split]


def assert_same(logged: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """The same steps, the same values (TensorBoard keeps float32)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)


def mlflow_run(run_dir: Path) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graft")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def mlflow_history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def wandb_records(run_dir: Path) -> list[Any]:
    """Every record of the run's offline .wandb files, oldest folder first. The file is a LevelDB-style log of
    protobuf records (wandb's own reader moved to its Go core): 32 KiB blocks of chunks, each with a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, chunk = 7, b""
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0:
                break
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or a record's last chunk
                record = wandb_internal_pb2.Record()
                record.ParseFromString(chunk)
                records.append(record)
                chunk = b""
    return records


def wandb_history(records: list[Any], key: str) -> list[tuple[int, float]]:
    rows = [{item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return [(row["_step"], row[key]) for row in rows if key in row]


def test_a_run_logs_train_validation_test_and_the_recipe_to_every_tracker(
        quiet_trackers: None, tiny_bert: Path, data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    record = graft.train(tracked_recipe(tiny_bert, data, run_dir, ALL, train={"epochs": 2}))
    assert "wandb: no API key" in capsys.readouterr().err  # the user is told where the offline run went
    train_loss = history(record, "train", "loss")
    val_accuracy = history(record, "validation", "accuracy")
    test_accuracy = [(record["timings"]["steps"], record["metrics"]["test"]["accuracy"])]
    assert len(train_loss) > 2 and len(val_accuracy) == 2

    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert_same(mlflow_history(client, run.info.run_id, "train/loss"), train_loss)
    assert_same(mlflow_history(client, run.info.run_id, "validation/accuracy"), val_accuracy)
    assert_same(mlflow_history(client, run.info.run_id, "test/accuracy"), test_accuracy)
    assert run.data.metrics["test/f1_macro"] == record["metrics"]["test"]["f1_macro"]
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["model.name"] == str(tiny_bert)

    records = wandb_records(run_dir)
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.project == "graft" and start.display_name == "run"
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["train.epochs"] == 2 and config["model.name"] == str(tiny_bert)
    assert config["output.trackers"] == json.dumps(ALL) and config["model.revision"] is None
    assert_same(wandb_history(records, "train/loss"), train_loss)
    assert_same(wandb_history(records, "validation/accuracy"), val_accuracy)
    assert_same(wandb_history(records, "test/accuracy"), test_accuracy)
    (end,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert end.exit_code == 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert_same([(e.step, e.value) for e in board.Scalars("train/loss")], train_loss)
    assert_same([(e.step, e.value) for e in board.Scalars("test/accuracy")], test_accuracy)

    saved = json.loads((run_dir / TRACKERS_FILE).read_text())
    assert saved["mlflow"]["run_id"] == run.info.run_id and saved["wandb"]["run_id"] == start.run_id


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, event: Event) -> None:
        if event.kind == "step" and event.state.step == self.step:
            raise KeyboardInterrupt


def test_a_resumed_run_continues_its_tracker_runs_without_logging_a_step_twice(
        quiet_trackers: None, tiny_bert: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # set by the user: honoured as it is
    run_dir = tmp_path / "run"
    # checkpoint at step 4, stopped at step 7: steps 5-6 were logged and are trained again on resume
    recipe = tracked_recipe(tiny_bert, data, run_dir, ["mlflow", "wandb"], train={"epochs": 2, "log_every": 1},
                            checkpoint={"every_steps": 4})
    with pytest.raises(KeyboardInterrupt):
        graft.train(recipe, hooks=[StopAt(7)])
    client, interrupted = mlflow_run(run_dir)
    assert interrupted.info.status == "KILLED"
    assert [s for s, _ in mlflow_history(client, interrupted.info.run_id, "train/loss")] == list(range(1, 7))

    record = graft.train(recipe, resume=True)
    client, run = mlflow_run(run_dir)  # the same (only) run, continued
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    train_loss = history(record, "train", "loss")
    assert_same(mlflow_history(client, run.info.run_id, "train/loss"), train_loss)
    assert_same(mlflow_history(client, run.info.run_id, "validation/accuracy"),
                history(record, "validation", "accuracy"))

    records = wandb_records(run_dir)  # two offline folders, one wandb run id
    assert len({r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}) == 1
    assert_same(wandb_history(records, "train/loss"), train_loss)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1, 0]


def test_wandb_goes_offline_without_an_api_key_and_never_prompts(quiet_trackers: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.training import logging

    assert logging.TRACKERS["wandb"](tmp_path, {}).init_kwargs["mode"] == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # where `wandb login` saves the key
    assert "mode" not in logging.TRACKERS["wandb"](tmp_path, {}).init_kwargs
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # a key for another server does not count
    assert logging.TRACKERS["wandb"](tmp_path, {}).init_kwargs["mode"] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert "mode" not in logging.TRACKERS["wandb"](tmp_path, {}).init_kwargs
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice stands, without looking for a key
    monkeypatch.setattr(logging, "wandb_credentials", lambda: pytest.fail("looked for a key"))
    tracker = logging.TRACKERS["wandb"](tmp_path, {"run_id": "abc123"})
    assert "mode" not in tracker.init_kwargs
    assert tracker.init_kwargs["id"] == "abc123" and tracker.init_kwargs["resume"] == "allow"


def test_every_tracker_the_recipe_accepts_has_a_builder() -> None:
    from graft.recipe.schema import TRACKER_NAMES
    from graft.training.logging import PACKAGES, TRACKERS

    assert set(TRACKER_NAMES) == set(TRACKERS) == set(PACKAGES)


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_tracker_not_installed_is_one_line_before_anything_is_written(
        package: str, tiny_bert: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # importlib finds no such package
    recipe = tracked_recipe(tiny_bert, data, tmp_path / "run", ["tensorboard", package])
    message = error_of(graft.train, recipe)
    assert message == (f"output.trackers: {package} is not installed: pip install {package} (or take {package} out "
                       f"of output.trackers)")
    assert not (tmp_path / "run").exists()


def test_mlflow_without_a_tracking_uri_needs_sqlalchemy_for_its_local_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    message = error_of(check_trackers, ["mlflow"])
    assert "needs sqlalchemy" in message and "pip install mlflow" in message and "MLFLOW_TRACKING_URI" in message
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")  # a server: no local store to make
    check_trackers(["mlflow"])
