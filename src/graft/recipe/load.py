"""Reading a recipe: YAML (or a dict), `--set key.path=value` overrides applied to the tree before validation (so
they get the same checks and coercion as the file), paths made absolute, and every error turned into one line that
names the field, the bad value and what is allowed."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from graft.errors import GraftError
from graft.recipe.schema import DATA_PATHS, Recipe


def load_recipe(source: Path | str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe from a YAML file (or a dict), apply `key.path=value` overrides, validate.

    Relative data paths written in a recipe file are relative to the file's folder; those given as a dict or by
    `--set` are relative to the working directory. The resolved recipe holds them absolute, so a run directory
    works from anywhere. output.dir stays as written: relative to the working directory.
    """
    if isinstance(source, dict):
        tree, origin, base = copy.deepcopy(source), "recipe", Path.cwd()
    else:
        path = Path(source)
        tree, origin, base = _read_yaml(path), str(path), path.parent
    overridden = {item.partition("=")[0].strip() for item in overrides}
    for item in overrides:
        _apply_override(tree, item)
    recipe = validate_recipe(tree, origin)
    def folder(key: str) -> Path:
        return Path.cwd() if key in overridden else base

    for name in (*DATA_PATHS, "review"):
        value = getattr(recipe.data, name)
        if isinstance(value, Path):  # not a hub dataset (hf://owner/name)
            setattr(recipe.data, name, (folder(f"data.{name}") / value.expanduser()).absolute())
    if isinstance(recipe.retention.data, Path):
        recipe.retention.data = (folder("retention.data") / recipe.retention.data.expanduser()).absolute()
    teacher = recipe.strategy.teacher
    if teacher is not None:  # a student cut from the teacher names the teacher's model (schema: _check_student)
        recipe.strategy.teacher = (folder("strategy.teacher") / teacher.expanduser()).absolute()
        if recipe.model.name == str(teacher / "model"):
            recipe.model.name = str(recipe.strategy.teacher / "model")
    if isinstance(recipe.strategy.distill.unlabelled, Path):
        unlabelled = recipe.strategy.distill.unlabelled.expanduser()
        recipe.strategy.distill.unlabelled = (folder("strategy.distill.unlabelled") / unlabelled).absolute()
    if recipe.model.checkpoint is not None:
        recipe.model.checkpoint = (folder("model.checkpoint") / recipe.model.checkpoint.expanduser()).absolute()
    module, sep, function = recipe.model.name.rpartition(":")
    if sep and module.endswith(".py"):  # a factory in a file: relative to the recipe, like the data
        recipe.model.name = f"{(folder('model.name') / Path(module).expanduser()).absolute()}:{function}"
    return recipe


def validate_recipe(tree: dict[str, Any], origin: str = "recipe") -> Recipe:
    """Validate a YAML tree into a Recipe, turning the first problem into one GraftError line."""
    _check_unknown_keys(tree, Recipe, prefix="", origin=origin)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        errors = e.errors()
        # A union's other members (`auto` beside a number) failed too: the line says they exist.
        siblings = [x["loc"][-1] for x in errors[1:] if x["loc"][:-1] == errors[0]["loc"][:-1]]
        raise GraftError(f"{origin}: {_describe({**errors[0], '_siblings': siblings})}") from None


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is written twice; keep one",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GraftError(f"recipe {path}: file not found")
    try:
        tree = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)  # a SafeLoader: no objects built
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise GraftError(f"recipe {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(tree, dict):
        raise GraftError(f"recipe {path}: expected a mapping of sections (task, model, data, ...), got {tree!r}")
    return tree


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise GraftError(f"--set {item!r}: expected key.path=value, e.g. --set optim.lr=1e-4")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise GraftError(f"--set {item!r}: '{part}' is a value, not a section")
        node = child
    # YAML parsing gives lists, null, booleans and numbers; pydantic then coerces to the field's type.
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _check_unknown_keys(tree: Any, model: type[BaseModel], prefix: str, origin: str) -> None:
    if not isinstance(tree, dict):
        return
    fields = model.model_fields
    for key, value in tree.items():
        if key not in fields:
            where = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed: {', '.join(fields)}"
            raise GraftError(f"{origin}: unknown key '{where}'; {hint}")
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_unknown_keys(value, sub, f"{prefix}{key}.", origin)


def _describe(err: dict[str, Any]) -> str:
    # Field names only: a union's member ('constrained-float', "literal['auto']") and validators are not fields.
    field = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or str(p).isidentifier())
    value = err.get("input")
    allowed = _allowed(err)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"'{field}' is required" + (" (at least data.train: the training file)" if field == "data" else "")
    if err["type"] == "value_error" and isinstance(value, (dict, BaseModel)):
        return msg  # a whole-section check (model validator): its message names the field itself
    if err["type"] == "model_type":
        return f"{field} = {value!r}: expected a section of keys, e.g. {field}: {{...}}"
    shown = f"{value!r}" if not isinstance(value, dict) else "a mapping"
    either = " (or auto)" if any("literal['auto']" in str(e) for e in err.get("_siblings", ())) else ""
    return f"{field} = {shown}: {allowed or msg[:1].lower() + msg[1:]}{either}"


def _allowed(err: dict[str, Any]) -> str | None:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error":
        return f"allowed: {ctx.get('expected', '').replace(' or ', ', ')}"
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return err["msg"].lower()
    return None


