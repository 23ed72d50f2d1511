"""Every recipe in examples/ loads and validates, and its data and weights exist: examples cannot rot.

Recipes that point into ../shared/data (development data users do not have) are checked where it exists.
"""

from pathlib import Path

import pytest

from graft.recipe import load_recipe
from tests.conftest import SHARED_DATA

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_is_valid(path: Path):
    recipe = load_recipe(path)
    files = {f"data.{name}": getattr(recipe.data, name) for name in ("train", "validation", "test")}
    files["model.checkpoint"] = recipe.model.checkpoint
    shared = any(f is not None and f.resolve().is_relative_to(SHARED_DATA) for f in files.values())
    if shared and not SHARED_DATA.exists():
        pytest.skip(f"{path.name} uses {SHARED_DATA}, absent here")
    for field, file in files.items():
        assert file is None or file.exists(), f"{path.name}: {field} {file} does not exist"
    if recipe.model.is_factory:
        from graft.models.plain import import_factory

        assert callable(import_factory(recipe.model.name))
