"""Image runs through the CLI: train from a recipe file, then eval on the run's test split and on a folder."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import graft
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

    # metrics.test are the model's own probabilities (--raw); plain eval scales them by the fitted temperature
    again = runner.invoke(app, ["eval", str(tmp_path / "run"), "--raw", "--output", str(tmp_path / "m.json")])
    assert again.exit_code == 0, again.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-5)
    scaled = runner.invoke(app, ["eval", str(tmp_path / "run"), "--output", str(tmp_path / "s.json")])
    assert scaled.exit_code == 0, scaled.output
    calibrated = record["calibration"]["after"]
    assert json.loads((tmp_path / "s.json").read_text())["nll"] == pytest.approx(calibrated["nll"], rel=1e-5)

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


def _tiny_hf(kind: str, path):
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32))
    else:
        model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_hf_vision_models_train_with_augmentation_and_reload(kind, tmp_path, image_folder):
    model = {"name": str(_tiny_hf(kind, tmp_path / kind))}
    augment = {"crop_scale": [0.5, 1.0], "hflip": True, "rotation": 15, "color_jitter": 0.2}
    record = graft.train(image_recipe(model, image_folder, tmp_path / "run", strategy={"name": "two_phase"},
                                      data={"augment": augment}))
    assert record["status"] == "completed"
    assert record["groups"][-1]["from_epoch"] == 0 and record["groups"][0]["from_epoch"] == 1
    again = graft.evaluate(tmp_path / "run", raw=True)  # metrics.test: the model's own probabilities
    assert again["loss"] == pytest.approx(record["metrics"]["test"]["loss"], rel=1e-5)


def _image_list(tmp_path, image_folder, broken: bool):
    rows = [f"{p},{p.parent.name}" for p in sorted(image_folder.rglob("*.png"))]
    if broken:
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG not really")
        rows.insert(3, f"{bad},red")
    listing = tmp_path / "images.csv"
    listing.write_text("image,label\n" + "\n".join(rows) + "\n")
    return listing


def test_an_image_list_with_an_unreadable_file_can_skip_it(tmp_path, image_folder, plain_checkpoint):
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    listing = _image_list(tmp_path, image_folder, broken=True)
    recipe = image_recipe(model, listing, tmp_path / "run", train={"epochs": 1}, data={"bad_images": "skip"})
    record = graft.train(recipe)
    assert record["status"] == "completed"
    skipped = [w for w in record["data"]["warnings"] if "unreadable image" in w]
    assert len(skipped) == 1 and "broken.png" in skipped[0] and "left out 1 unreadable image" in skipped[0]


def test_an_unreadable_image_stops_the_run_before_its_directory_exists(tmp_path, image_folder, plain_checkpoint):
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    listing = _image_list(tmp_path, image_folder, broken=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(image_recipe(model, listing, tmp_path / "run", train={"epochs": 1})))
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert isinstance(result.exception, GraftError)
    message = str(result.exception)
    assert "\n" not in message and "broken.png" in message and "data.bad_images: skip" in message
    assert not (tmp_path / "run").exists()


def test_predict_on_a_folder_of_images(tmp_path, image_folder, plain_checkpoint):
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    graft.train(image_recipe(model, image_folder, tmp_path / "run", train={"epochs": 1}))
    new = make_images(tmp_path / "new", per_class=2, seed=21)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(new), "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    labels = json.loads((tmp_path / "run" / "run.json").read_text())["data"]["labels"]
    assert lines[0] == ",".join(["image", "label", "score", *(f"p_{n}" for n in labels)])
    assert len(lines) == 1 + 2 * len(labels)
    rows = graft.predict(tmp_path / "run", str(sorted(new.rglob("*.png"))[0]))
    assert len(rows) == 1 and rows[0]["label"] in labels
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_resumed_augmented_image_run_equals_an_uninterrupted_one(tmp_path, image_folder, plain_checkpoint):
    from tests.e2e.test_resume import assert_resume_matches

    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    sections = {"data": {"augment": {"rotation": 20, "color_jitter": 0.3}}, "checkpoint": {"every_steps": 2}}
    assert_resume_matches(lambda run: image_recipe(model, image_folder, run, **sections), tmp_path)
