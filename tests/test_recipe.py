"""The recipe: defaults, overrides with type coercion, and one clear line per mistake."""

from pathlib import Path

import pytest

from graft.errors import GraftError
from graft.recipe import Recipe, load_recipe

MINIMAL = {"data": {"train": "train.csv"}}


def error(tree: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(GraftError) as e:
        load_recipe(tree, overrides)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_defaults_match_the_interface_contract():
    r = load_recipe(MINIMAL)
    assert r.task == "text_classification"
    # SPEC §5: the next capabilities' keys, `auto` where graft measures or looks instead of guessing.
    assert (r.optim.name, r.optim.lr, r.optim.weight_decay) == ("auto", "auto", None)
    assert (r.train.precision, r.loss.class_weights, r.model.pooling) == ("auto", "auto", "auto")
    assert (r.schedule.name, r.schedule.warmup_ratio) == ("linear", 0.1)
    assert (r.train.epochs, r.train.batch_size, r.train.seed) == (3, 32, 0)
    assert r.data.split == (0.7, 0.15, 0.15)
    assert r.output.dir == Path("runs/example")


def test_overrides_are_coerced_to_the_field_type():
    r = load_recipe(MINIMAL, ["optim.lr=1e-4", "train.epochs=5", "train.max_grad_norm=null",
                              "data.group_by_length=false", "data.split=[0.8, 0.1, 0.1]", "optim.name=sgd"])
    assert r.optim.lr == pytest.approx(1e-4) and isinstance(r.optim.lr, float)
    assert r.train.epochs == 5
    assert r.train.max_grad_norm is None
    assert r.data.group_by_length is False
    assert r.data.split == (0.8, 0.1, 0.1)
    assert r.optim.name == "sgd"


def test_unknown_key_suggests_the_close_one():
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in error(MINIMAL, ["optim.lrr=1"])
    assert "unknown key 'modle'; did you mean 'model'?" in error({**MINIMAL, "modle": {}})


def test_unknown_key_without_a_close_one_lists_what_is_allowed():
    assert "allowed: name, kwargs, checkpoint" in error(MINIMAL, ["model.zzz=1"])


def test_bad_choice_names_field_value_and_choices():
    msg = error(MINIMAL, ["optim.name=adamx"])
    assert "optim.name = 'adamx'" in msg and "'adamw', 'adam', 'sgd'" in msg


def test_out_of_range_and_unparsable_values():
    assert "optim.lr = -1: input should be greater than 0 (or auto)" in error(MINIMAL, ["optim.lr=-1"])
    assert "optim.lr = 'abc'" in error(MINIMAL, ["optim.lr=abc"])
    assert "train.epochs = 0" in error(MINIMAL, ["train.epochs=0"])


def test_split_fractions_must_sum_to_one():
    assert "summing to 1" in error(MINIMAL, ["data.split=[0.5,0.2,0.2]"])


def test_data_train_is_required():
    assert "'data' is required" in error({})
    assert "'data.train' is required" in error({"data": {}})


def test_bad_override_syntax():
    assert "expected key.path=value" in error(MINIMAL, ["train.epochs"])


def test_section_given_a_value():
    assert "train = 3: expected a section" in error(MINIMAL, ["train=3"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("data:\n  train: [unclosed\n")
    with pytest.raises(GraftError, match=r"r.yaml line \d+: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(GraftError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(GraftError, match="expected a mapping"):
        load_recipe(bad)


def test_relative_data_paths_resolve_beside_the_recipe_and_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text("data:\n  train: train.csv\n  test: ../test.csv\n")
    (tmp_path / "train.csv").write_text("a decoy in the working directory must not win\n")
    monkeypatch.chdir(tmp_path)
    r = load_recipe(recipe)
    assert r.data.train == tmp_path / "sub" / "train.csv"
    assert r.data.test == tmp_path / "sub" / ".." / "test.csv"
    assert r.data.train.is_absolute()


def test_paths_given_by_set_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text("data:\n  train: train.csv\n")
    monkeypatch.chdir(tmp_path)
    r = load_recipe(recipe, ["data.validation=val.csv"])
    assert r.data.validation == tmp_path / "val.csv"
    assert r.data.train == tmp_path / "sub" / "train.csv"


def test_dump_round_trips():
    r = load_recipe(MINIMAL, ["optim.lr=2e-5"])
    assert Recipe.model_validate(r.dump()) == r
