"""The search space of a sweep: SPACE.yaml maps recipe fields, written as `--set` writes them (`optim.lr`,
`strategy.lora.r`), to distributions:

    optim.lr: {low: 1.0e-5, high: 1.0e-3, log: true}     # a float (log: spread evenly over the decades)
    strategy.lora.r: {low: 4, high: 32, step: 4}           # an integer: both ends whole numbers
    strategy.name: {choices: [full, lora]}                 # one of these values

Each field is checked against the recipe before anything is written: it must be a recipe field, and the recipe must
accept both ends of its range (or every choice). Every error is one line naming the space file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from graft.errors import GraftError
from graft.recipe import Recipe, validate_recipe

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

SET_BY_SWEEP = ("output.", "data.train", "data.validation", "data.test", "data.split", "data.text_column",
                "data.image_column", "data.label_column")
"""Fields the sweep sets for every trial itself (its run directory, the written splits), so a space cannot."""
OBJECTIVE = ("eval.metric", "eval.mode")
"""What every trial is ranked by: set once, in the recipe."""
RANGE_KEYS = {"low", "high", "log", "step"}
EXAMPLE = "optim.lr: {low: 1.0e-5, high: 1.0e-3, log: true}"


def read_space(source: Path | str | dict[str, Any], recipe: Recipe) -> dict[str, BaseDistribution]:
    """The space (a YAML file, or a mapping) as optuna distributions by field, each checked against `recipe`."""
    if isinstance(source, dict):
        tree, origin = source, "space"
    else:
        tree, origin = _read_yaml(Path(source)), str(source)
    if not tree:
        raise GraftError(f"{origin}: no fields to search; map recipe fields to ranges, e.g. {EXAMPLE}")
    space = {}
    for field, spec in tree.items():
        where = f"{origin}: {field}"
        if not isinstance(field, str) or not field.strip():
            raise GraftError(f"{origin}: {field!r} is not a recipe field; write fields as --set does, e.g. optim.lr")
        if field.startswith(SET_BY_SWEEP):
            raise GraftError(f"{where}: the sweep sets it for every trial (each trial is a run directory under the "
                             f"sweep's folder, on the same written splits); search other fields")
        if field in OBJECTIVE:
            raise GraftError(f"{where}: the metric every trial is ranked by; set it in the recipe")
        space[field] = distribution(spec, where)
        for value in ends(space[field]):
            check_value(recipe, field, value, where)
    return space


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise GraftError(f"--space {path}: file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise GraftError(f"--space {path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if tree is not None and not isinstance(tree, dict):
        raise GraftError(f"--space {path}: expected a mapping of recipe fields to ranges, e.g. {EXAMPLE}")
    return tree


def distribution(spec: Any, where: str) -> BaseDistribution:
    """{low, high[, log][, step]} or {choices: [...]} as an optuna distribution; integers when both ends are."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(spec, dict) or not spec or not (set(spec) <= RANGE_KEYS or set(spec) == {"choices"}):
        hint = "fixed values go in the recipe or --set" if not isinstance(spec, dict) else f"got keys {list(spec)}"
        raise GraftError(f"{where}: expected {{low, high}} (with log: true or a step) or {{choices: [...]}}; {hint}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise GraftError(f"{where}: choices must be a non-empty list, e.g. {{choices: [full, lora]}}")
        odd = next((c for c in choices if c is not None and not isinstance(c, bool | int | float | str)), None)
        if odd is not None:
            raise GraftError(f"{where}: choice {odd!r}: choices are numbers, strings, booleans or null")
        if len(set(map(json.dumps, choices))) < len(choices):
            raise GraftError(f"{where}: a choice is listed twice; list each once")
        return CategoricalDistribution(choices)
    if "low" not in spec or "high" not in spec:
        raise GraftError(f"{where}: a range needs low and high, e.g. {EXAMPLE}")
    low, high, step = (_number(spec.get(k), f"{where}.{k}") for k in ("low", "high", "step"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise GraftError(f"{where}.log = {log!r}: true or false")
    if low >= high:
        raise GraftError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise GraftError(f"{where}: log needs low > 0 (got {low})")
    if log and step is not None and not (isinstance(step, int) and step == 1):
        raise GraftError(f"{where}: give log or a step, not both")
    if step is not None and step <= 0:
        raise GraftError(f"{where}.step = {step}: must be above 0")
    if all(isinstance(x, int) for x in (low, high)) and (step is None or isinstance(step, int)):
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _number(value: Any, where: str) -> int | float | None:
    """A YAML number; also a string that reads as one (YAML reads 1e-5, without a dot, as text)."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise GraftError(f"{where} = {value!r}: expected a number")


def ends(space_field: BaseDistribution) -> list[Any]:
    """The values that stand for the whole distribution when checking the recipe takes it: both ends, or every
    choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(space_field, CategoricalDistribution):
        return list(space_field.choices)
    return [space_field.low, space_field.high]


def check_value(recipe: Recipe, field: str, value: Any, where: str) -> None:
    """Refuse `value` for `field` as the recipe would: an unknown field, a section given a value, a value out of
    range."""
    tree = recipe.dump()
    try:
        set_field(tree, field, value)
    except GraftError as e:
        raise GraftError(f"{where}: {e}") from None
    validate_recipe(tree, origin=where)


def set_field(tree: dict[str, Any], field: str, value: Any) -> None:
    """Set a dotted field in a recipe tree, as `--set` does."""
    *sections, name = field.split(".")
    node = tree
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise GraftError(f"'{part}' is a value, not a section")
    node[name] = value


def space_record(space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The space as optuna writes distributions: what a resumed sweep must match."""
    from optuna.distributions import distribution_to_json

    return {field: json.loads(distribution_to_json(d)) for field, d in sorted(space.items())}
