"""The task registry: every task supplies the whole interface, and a recipe is checked against its task (fields,
strategies, metrics, models) in one line before any data or model is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graft.recipe import load_recipe
from graft.tasks import TASKS, Task
from tests.conftest import PLAIN_NETS, error_of

SRC = Path(__file__).resolve().parents[1] / "src" / "graft"
MISSING = "no-such-file.csv"  # the checks run before any data is read: the file need not exist


def members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_supplies_the_whole_interface(name):
    task = TASKS[name]
    missing = [m for m in members(Task) if not hasattr(task, m)]
    assert not missing, f"{name} lacks {missing}"
    assert task.name == name and task.default_metric in task.metrics
    data = load_recipe({"data": {"train": MISSING}}).data
    for path in task.data_fields:  # a field of data, or of one of its sections (augment.hflip)
        section, _, field = path.rpartition(".")
        assert field in (getattr(data, section) if section else data).model_fields, path


def test_no_module_outside_the_tasks_names_a_task():
    """What differs between tasks is asked of the task: no `task ==` branch, no task name, outside graft/tasks."""
    found = []
    for path in SRC.rglob("*.py"):
        if "tasks" in path.relative_to(SRC).parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            default = "Literal[tuple(TASKS)]" in line  # the recipe's default task: a name it must say
            if re.search(r"\btask (==|!=|in) |\"(text_classification|image_classification|causal_lm)\"", line) \
                    and not default:
                found.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert found == []


def recipe(task: str, **sections: dict) -> dict:
    tree: dict = {"task": task, "data": {"train": MISSING}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


@pytest.mark.parametrize(("task", "sections", "message"), [
    ("text_classification", {"data": {"packing": True}}, "data.packing: text_classification does not read it (it is "
                                                         "for causal_lm); remove it"),
    ("text_classification", {"data": {"image_size": 32}}, "data.image_size: text_classification does not read it (it "
                                                          "is for image_classification)"),
    ("image_classification", {"data": {"system": "Be brief."}}, "data.system: image_classification does not read it"),
    ("image_classification", {"data": {"augment": {"hflip": False}}}, None),
    ("text_classification", {"data": {"augment": {"hflip": False}}}, "data.augment.hflip: text_classification does "
                                                                     "not read it (it is for image_classification)"),
    ("image_classification", {"data": {"augment": {"swap": 0.1}}}, "data.augment.swap: image_classification does "
                                                                   "not read it (it is for text_classification)"),
    ("causal_lm", {"data": {"augment": {"synonym": 0.1}}}, "data.augment.synonym: causal_lm does not read it"),
    ("text_classification", {"data": {"augment": {"delete": 0.1, "synonym_similarity": 0.7}}}, None),
    ("causal_lm", {"data": {"normalize_labels": True}}, "data.normalize_labels: causal_lm does not read it (it is for "
                                                        "text_classification)"),
    ("causal_lm", {"data": {"label_column": "y"}}, "data.label_column: causal_lm does not read it (it is for "
                                                   "text_classification and image_classification and regression)"),
    ("image_classification", {"strategy": {"name": "prompt"}}, "strategy.name = 'prompt': virtual tokens are for "
                                                               "text transformers"),
    ("causal_lm", {"strategy": {"name": "head_only"}}, "strategy.name = 'head_only': a causal LM keeps its "
                                                       "pretrained output layer"),
    ("causal_lm", {"eval": {"metric": "accuracy"}}, "eval.metric = 'accuracy': causal_lm is scored by loss, "
                                                    "perplexity, token_accuracy"),
    ("text_classification", {"eval": {"metric": "perplexity"}}, "eval.metric = 'perplexity': text_classification is "
                                                                "scored by loss, accuracy"),
    ("text_classification", {"model": {"name": f"{PLAIN_NETS}:small_cnn"}}, "model.name: plain nn.Module factories "
                                                                            "are for task: image_classification"),
    ("image_classification", {"model": {"name": f"{PLAIN_NETS}:small_cnn"}, "data": {"image_size": 16},
                              "train": {"gradient_checkpointing": True}}, "train.gradient_checkpointing: for Hugging "
                                                                          "Face models"),
    ("image_classification", {"model": {"name": f"{PLAIN_NETS}:small_cnn"}}, "data.image_size: a plain module needs "
                                                                             "its input size"),
])
def test_a_recipe_is_checked_against_its_task_before_anything_is_read(task, sections, message):
    tree = recipe(task, **sections)
    if message is None:
        assert load_recipe(tree).task == task
        return
    assert message in error_of(load_recipe, tree)


def test_defaults_of_every_task_pass_and_a_dumped_recipe_loads_again():
    for name in TASKS:
        loaded = load_recipe(recipe(name))
        assert loaded.eval.metric == TASKS[name].default_metric
        assert load_recipe(loaded.dump()).dump() == loaded.dump()  # compare and --cv reload dumped recipes


def test_a_foreign_field_is_refused_by_the_cli_with_one_line_and_no_run(tmp_path, monkeypatch, capsys):
    from tests.e2e.test_cli import user_error

    path = tmp_path / "recipe.yaml"
    path.write_text(f"task: text_classification\ndata: {{train: {MISSING}, packing: true}}\n"
                    f"output: {{dir: {tmp_path / 'run'}}}\n")
    line = user_error(monkeypatch, capsys, "train", str(path))
    assert line.startswith(f"error: {path}: data.packing: text_classification does not read it")
    assert not (tmp_path / "run").exists()
