"""graft sweep: the space checked before anything is written, the same seed giving the same trials, an interrupted
sweep resuming to N, pruning fed by each evaluation, the best trial tested once, the page. Tiny real runs (the tiny
BERT, two epochs on 60 texts), real Optuna."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.evaluation.metrics import scalars
from graft.rundir import read_record
from graft.sweep import format_trials
from tests.conftest import error_of, make_texts, tiny_recipe, write_csv

SPACE = {"optim.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}, "train.batch_size": {"choices": [8, 16]}}


def base_recipe(model: Path, root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    train = write_csv(root / "train.csv", make_texts(60, seed=1))
    return tiny_recipe(model, train, root / "sweep", train={"epochs": 2})


def space_file(folder: Path, space: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


class Interrupt(optuna.pruners.BasePruner):
    """Ctrl-C at trial `number`'s first evaluation (what the pruner is asked there), as a user would press it."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.number == self.number:
            raise KeyboardInterrupt
        return False


@pytest.fixture(scope="module")
def reference(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """An uninterrupted two-trial sweep: (its recipe, its sweep.json, the space file)."""
    root = tmp_path_factory.mktemp("reference")
    recipe = base_recipe(tiny_bert, root)
    space = space_file(root, SPACE)
    return recipe, graft.sweep(recipe, space, 2), space


@pytest.mark.parametrize(("space", "expected"), [
    ({"optim.lrr": {"low": 1.0e-4, "high": 1.0e-3}}, "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ({"optim.lr": {"low": 0, "high": 1.0e-3}}, "optim.lr = 0"),
    ({"strategy.name": {"choices": ["full", "bogus"]}}, "strategy.name = 'bogus'"),
    ({"optim.lr.x": {"low": 1, "high": 2}}, "'lr' is a value, not a section"),
    ({"optim": {"low": 1, "high": 2}}, "optim = 1: expected a section"),
    ({"optim.lr": 1.0e-4}, "fixed values go in the recipe or --set"),
    ({"optim.lr": {"low": 1.0e-3, "high": 1.0e-4}}, "low (0.001) must be below high (0.0001)"),
    ({"optim.lr": {"low": 0.0, "high": 1.0, "log": True}}, "log needs low > 0"),
    ({"optim.lr": {"low": "ten", "high": 1.0}}, "optim.lr.low = 'ten': expected a number"),
    ({"train.batch_size": {"choices": []}}, "choices must be a non-empty list"),
    ({"data.train": {"choices": ["a.csv", "b.csv"]}}, "the sweep sets it for every trial"),
    ({"eval.metric": {"choices": ["accuracy", "f1_macro"]}}, "the metric every trial is ranked by"),
    ({}, "no fields to search"),
])
def test_space_refused_in_one_line_before_anything_is_written(tiny_bert: Path, tmp_path: Path, space: dict,
                                                               expected: str) -> None:
    recipe = base_recipe(tiny_bert, tmp_path)
    path = space_file(tmp_path / "spaces", space)
    message = error_of(graft.sweep, recipe, path, 2)
    assert expected in message and str(path) in message, message
    key = next(iter(space), None)
    assert key is None or key in message, message
    assert not (tmp_path / "sweep").exists()


def test_trials_and_sampler_refused(tiny_bert: Path, tmp_path: Path) -> None:
    recipe, space = base_recipe(tiny_bert, tmp_path), space_file(tmp_path, SPACE)
    assert "--trials 0: give a whole number of at least 1" in error_of(graft.sweep, recipe, space, 0)
    assert "--sampler grid: choose tpe or random" in error_of(graft.sweep, recipe, space, 2, sampler="grid")
    assert "--pruner asha: choose median, hyperband, none" in error_of(graft.sweep, recipe, space, 2, pruner="asha")
    assert not (tmp_path / "sweep").exists()


def test_a_folder_that_is_not_this_sweeps_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    recipe, space = base_recipe(tiny_bert, tmp_path), space_file(tmp_path, SPACE)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "run.json").write_text(json.dumps({"status": "completed"}))
    assert "holds a run; pass --output with another folder" in error_of(graft.sweep, recipe, space, 2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sweep.db").write_text("not a database")
    message = error_of(graft.sweep, recipe, space, 2, output=tmp_path / "other")
    assert "sweep.db: not a graft sweep's study" in message and "to start fresh" in message, message
    (tmp_path / "third" / "trials" / "0000").mkdir(parents=True)
    message = error_of(graft.sweep, recipe, space, 2, output=tmp_path / "third")
    assert "holds trials but no sweep.db" in message, message
    assert sorted(p.name for p in tmp_path.rglob("*") if p.parent.name in ("other", "third")) == ["sweep.db", "trials"]


def test_string_numbers_read_as_yaml_writes_them(tiny_bert: Path, tmp_path: Path) -> None:
    """YAML reads 1e-5 (no dot) as text: a range still takes it as the number it is."""
    from graft.recipe import load_recipe
    from graft.sweep.space import read_space

    space = read_space({"optim.lr": {"low": "1e-5", "high": "1e-3", "log": True},
                        "strategy.lora.r": {"low": 4, "high": 32, "step": 4}},
                       load_recipe(base_recipe(tiny_bert, tmp_path)))
    assert (space["optim.lr"].low, space["optim.lr"].high, space["optim.lr"].log) == (1e-5, 1e-3, True)
    assert type(space["strategy.lora.r"]).__name__ == "IntDistribution" and space["strategy.lora.r"].step == 4


def test_trials_are_runs_on_the_same_splits_ranked_on_validation(reference: tuple[dict, dict, Path]) -> None:
    _, result, _ = reference
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"]
    assert result["direction"] == "maximize" and result["metric"] == "f1_macro"
    folder = Path(result["folder"])
    for trial in result["trials"]:
        record = read_record(Path(trial["run_dir"]))
        assert record["status"] == "completed"
        assert record["recipe"]["data"]["train"] == str(folder / "data" / "train.csv")
        assert record["recipe"]["optim"]["lr"] == trial["params"]["optim.lr"]
        assert record["recipe"]["train"]["batch_size"] == trial["params"]["train.batch_size"]
        # the value is the best validation metric; the pruner heard every evaluation, in order
        history = [h["f1_macro"] for h in record["metrics"]["history"] if h["split"] == "validation"]
        assert trial["evaluations"] == history and trial["value"] == max(history)
        assert trial["duration_s"] > 0
        # what resumes a run is gone once its trial ended; the model the best is tested from stays
        assert not (Path(trial["run_dir"]) / "checkpoints").exists() and (Path(trial["run_dir"]) / "model").is_dir()
    best = max(result["trials"], key=lambda t: t["value"])
    assert result["best"]["number"] in (best["number"], None)  # None: the baseline (its own test below)


def test_the_baseline_is_the_recipe_as_it_is_and_the_best_unless_a_trial_beats_it(
        reference: tuple[dict, dict, Path]) -> None:
    recipe, result, _ = reference
    baseline = result["baseline"]
    record = read_record(Path(baseline["run_dir"]))
    assert Path(baseline["run_dir"]) == Path(result["folder"]) / "baseline" and record["status"] == "completed"
    assert record["recipe"]["optim"]["lr"] == recipe["optim"]["lr"]  # its own values, none of the space's
    assert record["recipe"]["data"]["train"] == str(Path(result["folder"]) / "data" / "train.csv")
    assert baseline["value"] == record["metrics"]["validation"]["f1_macro"]
    assert not (Path(baseline["run_dir"]) / "checkpoints").exists()
    top = max(t["value"] for t in result["trials"] if t["value"] is not None)
    assert result["best"]["baseline"] == (top <= baseline["value"])
    assert result["best"]["value"] == max(top, baseline["value"])


def test_a_sweep_whose_trials_cannot_learn_hands_back_the_baseline(tiny_bert: Path, tmp_path: Path) -> None:
    recipe = base_recipe(tiny_bert, tmp_path)
    space = space_file(tmp_path, {"optim.lr": {"low": 1.0e-9, "high": 2.0e-9}})  # steps too small to move
    result = graft.sweep(recipe, space, 2)
    assert result["best"]["baseline"] is True and result["best"]["number"] is None
    assert all(t["value"] < result["baseline"]["value"] for t in result["trials"])
    assert result["best"]["test"] == scalars(read_record(tmp_path / "sweep" / "baseline")["metrics"]["test"])
    assert all(read_record(Path(t["run_dir"]))["metrics"]["test"] is None for t in result["trials"])
    assert "the baseline (no trial beat the recipe as it is" in format_trials(result)
    assert "Best: the baseline" in (tmp_path / "sweep" / "sweep.html").read_text()


def test_the_test_set_is_evaluated_once_for_the_best_trial(reference: tuple[dict, dict, Path]) -> None:
    _, result, _ = reference
    best = Path(result["best"]["run_dir"])
    for run_dir in [*(t["run_dir"] for t in result["trials"]), result["baseline"]["run_dir"]]:
        tested = read_record(Path(run_dir))["metrics"]["test"]
        assert (tested is not None) == (Path(run_dir) == best)
    record = read_record(best)
    assert result["best"]["test"]["accuracy"] == record["metrics"]["test"]["accuracy"]
    assert (best / "model" / "calibration.json").is_file() and record["calibration"]["temperature"] > 0
    assert "mistakes" in record and (best / "report.html").is_file()


def test_testing_afterwards_gives_what_training_would_have(reference: tuple[dict, dict, Path],
                                                           tmp_path: Path) -> None:
    """The best trial trained again with its test at the end, as `graft train` does: the same test metrics."""
    from graft.rundir import run_recipe

    _, result, _ = reference
    recipe = run_recipe(Path(result["best"]["run_dir"]))
    recipe.output.dir = tmp_path / "again"
    again = graft.train(recipe)["metrics"]["test"]
    tested = result["best"]["test"]
    assert again["n"] == tested["n"]
    for name in ("accuracy", "f1_macro", "loss", "ece"):
        assert again[name] == pytest.approx(tested[name], abs=1e-6), name


def test_same_seed_same_trials_and_an_interrupted_sweep_resumes_to_n(tiny_bert: Path, tmp_path: Path,
                                                                     reference: tuple[dict, dict, Path]) -> None:
    _, done, _ = reference
    recipe, space = base_recipe(tiny_bert, tmp_path), space_file(tmp_path, SPACE)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during trial 1's training
        graft.sweep(recipe, space, 2, pruner=Interrupt(1))
    assert read_record(tmp_path / "sweep" / "trials" / "0001")["status"] == "interrupted"
    # and a kill -9 during another trial: optuna's record of it stays RUNNING
    study = optuna.load_study(study_name="graft-sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'sweep.db'}")
    study.ask()
    resumed = graft.sweep(recipe, space, 2)
    states = [t["state"] for t in resumed["trials"]]
    assert states == ["complete", "interrupted", "interrupted", "complete"]
    reference_params = [t["params"] for t in done["trials"]]
    assert [t["params"] for t in resumed["trials"] if t["state"] == "complete"] == reference_params
    assert resumed["trials"][1]["params"] == reference_params[1]  # the interrupted slot, run again
    assert [t["value"] for t in resumed["trials"] if t["value"] is not None] == [t["value"] for t in done["trials"]]


def test_another_sweep_in_the_folder_is_refused(reference: tuple[dict, dict, Path]) -> None:
    recipe, result, _ = reference
    other = space_file(Path(result["folder"]).parent / "other", {"optim.lr": {"low": 1.0e-4, "high": 1.0e-2}})
    message = error_of(graft.sweep, recipe, other, 3)
    assert "sweep.db holds another sweep (its space differ" in message and "to start fresh" in message, message
    assert len(json.loads((Path(result["folder"]) / "sweep.json").read_text())["trials"]) == 2


def test_a_pruned_trial_stops_cleanly_and_is_recorded_as_pruned(tiny_bert: Path, tmp_path: Path) -> None:
    """A pruner that prunes any validation f1 below 2 (every one): the trial stops at its first evaluation."""
    recipe, space = base_recipe(tiny_bert, tmp_path), space_file(tmp_path, SPACE)
    message = error_of(graft.sweep, recipe, space, 1, pruner=optuna.pruners.ThresholdPruner(lower=2.0),
                       baseline=False)
    assert "no trial completed (1 pruned)" in message, message
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    trial = result["trials"][0]
    record = read_record(tmp_path / "sweep" / "trials" / "0000")
    assert record["status"] == "pruned" and "error" not in record
    assert not (tmp_path / "sweep" / "trials" / "0000" / "checkpoints").exists()
    assert record["reason"] == trial["reason"] and "pruned by the sweep at evaluation 1" in trial["reason"]
    first = [h["f1_macro"] for h in record["metrics"]["history"] if h["split"] == "validation"]
    assert trial["state"] == "pruned" and trial["evaluations"] == first and len(first) == 1
    assert result["best"] is None and result["importances_why"] == "0 complete trials: importances need two or more"
    assert "No trial completed" in (tmp_path / "sweep" / "sweep.html").read_text()


def test_a_failing_trial_counts_and_says_why(tiny_bert: Path, tmp_path: Path) -> None:
    recipe = base_recipe(tiny_bert, tmp_path)
    space = space_file(tmp_path, {"strategy.freeze_groups": {"choices": [99]}})
    message = error_of(graft.sweep, recipe, space, 1, overrides=["strategy.name=freeze", "strategy.freeze_groups=1"],
                       baseline=False)
    assert "no trial completed (1 failed); trial 0 failed: " in message and "freeze_groups" in message, message


def test_page_is_self_contained(reference: tuple[dict, dict, Path]) -> None:
    _, result, _ = reference
    page = (Path(result["folder"]) / "sweep.html").read_text()
    assert page.count("<svg") >= 2 and "<script" not in page and "src=\"http" not in page
    assert "Parameters of the complete trials" in page and "trials/0000/report.html" in page
    assert ("importance (share of the variance" in page) == (result["importances"] is not None)
    if result["importances"] is None:
        assert "No parameter importances: " in page


def test_importances_need_two_complete_trials_and_a_varying_parameter() -> None:
    from graft.sweep import param_importances

    x = optuna.distributions.FloatDistribution(0.0, 2.0)
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": x}, value=0.5))
    assert param_importances(study, ["x"], 0) == (None, "1 complete trial: importances need two or more")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": x}, value=0.7))
    assert param_importances(study, ["x"], 0) == (None, "no parameter took two values among the complete trials")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.5}, distributions={"x": x}, value=0.7))
    assert param_importances(study, ["x"], 0) == ({"x": 1.0}, None)


def test_cli_rerun_of_a_finished_sweep_trains_nothing(reference: tuple[dict, dict, Path]) -> None:
    recipe, result, space = reference
    path = Path(result["folder"]).parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = CliRunner().invoke(app, ["sweep", str(path), "--space", str(space), "--trials", "2", "--pruner",
                                    "hyperband"])
    assert done.exit_code == 0, done.output
    assert "2 trials: 2 complete" in done.output and "test (evaluated once, for this run)" in done.output
    assert json.loads((Path(result["folder"]) / "sweep.json").read_text())["pruner"] == "HyperbandPruner"
    assert "sweep.html" in done.output and "-> " not in done.output  # no trial started
