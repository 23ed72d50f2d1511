"""The model card: README.md in every run's model/ folder, in the Hugging Face Hub's convention (YAML front matter,
then Markdown): what the model is, its data (files, sizes, labels), the recipe, the test metrics and how to load
it, naming files, never a path of the machine that trained it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import graft
from graft.models.save import hub_id, portable_name, scrub_paths
from tests.conftest import PLAIN_NETS, image_recipe, make_texts, tiny_recipe, write_csv


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def runs(tiny_bert, image_folder, plain_checkpoint, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    root = tmp_path_factory.mktemp("cards")
    train = write_csv(root / "train.csv", make_texts(90, seed=1))
    out = {}
    for strategy in ("full", "lora"):
        out[strategy] = (graft.train(tiny_recipe(tiny_bert, train, root / strategy, train={"epochs": 1},
                                                 strategy={"name": strategy})), root / strategy)
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    out["plain"] = (graft.train(image_recipe(model, image_folder, root / "plain", train={"epochs": 1})), root / "plain")
    return out


def test_a_text_run_card_has_data_recipe_metrics_and_loading(runs):
    record, run = runs["full"]
    card = (run / "model" / "README.md").read_text()
    front = front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    assert "base_model" not in front  # a local folder is no hub id
    assert {"graft", "full"} <= set(front["tags"])
    assert f"| train | train.csv | {record['data']['sizes']['train']} |" in card
    assert "`billing`, `delivery`, `login`" in card
    assert f"| accuracy | {record['metrics']['test']['accuracy']:.4f} |" in card
    assert "| strategy | full |" in card and "lr 0.003" in card
    assert f'graft.Predictor("{run.name}")' in card
    assert f'pipeline("text-classification", model="{run.name}/model"' in card


@pytest.mark.parametrize("name", ["full", "lora", "plain"])
def test_no_card_names_a_path_of_the_machine(name, runs):
    _, run = runs[name]
    card = (run / "model" / "README.md").read_text()
    for prefix in (str(run.parent), str(PLAIN_NETS.parent), str(Path.home()), "site-packages"):
        assert prefix not in card
    assert "train: " in card  # the recipe is there, its paths by file name


def test_a_lora_card_replaces_peft_own_and_a_plain_card_says_how_to_rebuild(runs):
    lora = (runs["lora"][1] / "model" / "README.md").read_text()
    assert front_matter(lora)["library_name"] == "peft" and "lora" in front_matter(lora)["tags"]
    assert "--merge" in lora and "## Test metrics" in lora
    plain = (runs["plain"][1] / "model" / "README.md").read_text()
    assert front_matter(plain)["pipeline_tag"] == "image-classification"
    assert "`plain_nets.py:small_cnn`" in plain and "[16, 16]" in plain and "classify images into 3 classes" in plain


def test_names_and_paths_as_a_card_shows_them():
    assert hub_id("minilm") == "sentence-transformers/all-minilm-l6-v2"  # graft's packaged copy of a hub model
    assert hub_id("org/model") == "org/model" and hub_id("/models/bert") is None
    assert portable_name("/a/b/nets.py:make") == "nets.py:make" and portable_name("torchvision.models:resnet18") == (
        "torchvision.models:resnet18")
    assert portable_name("/srv/models/bert") == "bert"
    assert scrub_paths("data.train: /home/me/data/train.csv (split); see https://example.org/a/b") == (
        "data.train: train.csv (split); see https://example.org/a/b")
