"""Every recipe in examples/ loads and validates, and its data files exist: examples cannot rot."""

from pathlib import Path

import pytest

from graft.recipe import load_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_is_valid(path: Path):
    recipe = load_recipe(path)
    for name in ("train", "validation", "test"):
        file = getattr(recipe.data, name)
        assert file is None or file.is_file(), f"{path.name}: data.{name} {file} does not exist"
