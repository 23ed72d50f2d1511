"""Image runs through the CLI: train from a recipe file, then eval on the run's test split and on a folder."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import GraftError
from tests.conftest import PLAIN_NETS, image_recipe, make_images


@pytest.mark.parametrize("family", ["hf_resnet", "plain_cnn"])
def test_train_then_eval_an_image_run(family, tmp_path, tiny_resnet, image_folder, plain_checkpoint):
    model = ({"name": str(tiny_resnet)} if family == "hf_resnet"
             else {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(image_recipe(model, image_folder, tmp_path / "run",
                                                  strategy={"name": "discriminative"})))
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(recipe)])
    assert trained.exit_code == 0, trained.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["test"]["n"] == 6

    again = runner.invoke(app, ["eval", str(tmp_path / "run"), "--output", str(tmp_path / "m.json")])
    assert again.exit_code == 0, again.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-5)

    holdout = make_images(tmp_path / "holdout", per_class=4, seed=11)
    other = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(holdout), "--output",
                                str(tmp_path / "h.json")])
    assert other.exit_code == 0, other.output
    assert json.loads((tmp_path / "h.json").read_text())["n"] == 12


def test_eval_on_a_folder_with_an_unknown_class_is_one_line(tmp_path, image_folder, plain_checkpoint):
    recipe = tmp_path / "recipe.yaml"
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    recipe.write_text(yaml.safe_dump(image_recipe(model, image_folder, tmp_path / "run", train={"epochs": 1})))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(recipe)]).exit_code == 0
    holdout = make_images(tmp_path / "holdout", per_class=2, seed=11)
    (holdout / "red").rename(holdout / "purple")
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(holdout)])
    assert isinstance(result.exception, GraftError)  # graft's main() prints it as one line, exit code 2
    message = str(result.exception)
    assert "\n" not in message and "purple" in message and str(holdout) in message
