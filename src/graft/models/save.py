"""The final model of a run, in the format its ecosystem loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.files import writing

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from graft.models.build import LoadedModel
    from graft.recipe import Recipe
    from graft.strategy.peft import Attached
    from graft.tasks import Task


def graft_config(model: nn.Module) -> dict[str, Any]:
    """What graft wrote into the model's config (`graft_*` keys, a regression's target scale): a full run's
    config.json keeps them, a PEFT run's rebuilt base and an ONNX graph have none, so their meta files carry
    them."""
    config = getattr(model, "config", None)
    items = config.to_dict().items() if hasattr(config, "to_dict") else ()
    return {k: v for k, v in items if k.startswith("graft_")}


def save_final_model(accelerator: Accelerator, model: nn.Module, loaded: LoadedModel, recipe: Recipe,
                     labels: list[str], path: Path, attached: Attached | None = None) -> None:
    """save_pretrained with tokenizer / image processor and label names, or for a plain module safetensors plus how
    to rebuild it; a PEFT run saves what it trained (peft's adapter format where peft made it) and how to rebuild
    the base. Written beside, then renamed into place. Every process must call this."""
    from graft.models.plain import PlainClassifier, save_plain

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        with writing(path) as tmp:
            if attached is not None:
                from graft.strategy.peft import save_peft_run

                save_peft_run(tmp, attached, recipe, labels, loaded.input)
            elif isinstance(unwrapped, PlainClassifier):
                save_plain(unwrapped, state_dict, tmp,
                           plain_meta(recipe, labels, unwrapped.head_path, loaded.head_in_shape, loaded.input))
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict)
            if loaded.processor is not None:
                loaded.processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def plain_meta(recipe: Recipe, labels: list[str], head_path: str, head_in_shape: list[int],
               image_input: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild a plain module: its factory, kwargs, head and input."""
    spec = recipe.model
    return {"factory": spec.name, "kwargs": spec.kwargs, "head_path": head_path, "head": spec.head.model_dump(),
            "head_in_shape": head_in_shape, "labels": labels, "input": image_input}


# The model card: README.md in the final model folder, as the Hugging Face Hub reads it (YAML front matter, then
# Markdown). It is written from run.json alone, so every run and every export gets the same account of itself, and it
# names files, never the paths they had on the machine that trained the model.

CARD_FILE = "README.md"
EXAMPLES = {"text": '["an example text"]', "image": '["photo.jpg"]', None: '["a question"]'}
"""What the card's code snippets predict on, by the task's input kind."""


def write_run_card(run_dir: Path) -> Path:
    """The model card of a finished run, in its model folder."""
    from graft.rundir import MODEL_DIR, read_record

    record = read_record(run_dir)
    written = record["recipe"]["output"]["dir"]
    name = written if not Path(written).is_absolute() else Path(written).name
    return write_model_card(run_dir / MODEL_DIR, record, f"{name}/{MODEL_DIR}", run=name)


def write_model_card(folder: Path, record: dict[str, Any], where: str, *, run: str | None = None) -> Path:
    """README.md in `folder`, a run's model/ (`run`: how to name the run) or an export (`run` None), which code
    snippets call `where`: what the model is, the data it learnt from (files, sizes, labels), the recipe, its test
    metrics and how to load it. Replaces peft's own card, which names the base model by its local path."""
    from graft.files import write_text

    return write_text(folder / CARD_FILE, model_card(folder, record, where, run))


def model_card(folder: Path, record: dict[str, Any], where: str, run: str | None) -> str:
    import yaml

    from graft.tasks import get_task

    recipe, task = record["recipe"], get_task(record["recipe"]["task"])
    kind = model_kind(folder)
    base = hub_id(recipe["model"]["name"])
    library = {"plain": "graft", "peft": "peft", "onnx": "onnx"}.get(kind, "transformers")
    front: dict[str, Any] = {"library_name": library, "pipeline_tag": task.pipeline_tag}
    if base is not None:
        front["base_model"] = base
    strategy = recipe["strategy"]["name"]
    front["tags"] = ["graft", task.pipeline_tag, strategy, *([kind] if kind in ("peft", "onnx") else [])]
    title = Path(run or where).name
    parts = [f"---\n{yaml.safe_dump(front, sort_keys=False)}---", f"# {title}",
             f"{_what(record, task)} Trained with graft (`strategy: {strategy}`).",
             _data_section(record), _recipe_section(record), _metrics_section(record),
             _usage_section(folder, record, task, kind, where, run)]
    return scrub_paths("\n\n".join(p for p in parts if p).rstrip() + "\n")


def model_kind(folder: Path) -> str:
    """`peft` (graft_peft.json), `plain` (a factory-built module), `onnx` (graft export --format onnx) or
    `transformers`."""
    from graft.models.plain import is_plain_dir
    from graft.onnx_export import is_onnx_export
    from graft.strategy.peft import is_peft_run

    if is_onnx_export(folder):
        return "onnx"
    return "peft" if is_peft_run(folder) else "plain" if is_plain_dir(folder) else "transformers"


def hub_id(name: str) -> str | None:
    """The Hugging Face Hub id a model name stands for (a packaged short name: the model it is a copy of), or None
    for a local folder or a plain module's factory."""
    from graft.models.hf import SHORT_NAMES

    if name.lower() in SHORT_NAMES:
        maker = SHORT_NAMES[name.lower()]
        return next((n for n, m in SHORT_NAMES.items() if m is maker and "/" in n), None)
    if ":" in name or name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).expanduser().exists():
        return None
    return name


def portable_name(name: str) -> str:
    """A model reference as another machine can read it: a hub id as it is, a factory in a file as `file.py:f`, a
    module's factory as it is, a local folder or file by its name."""
    module, sep, function = name.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).name}:{function}"
    if sep and not Path(name).exists():
        return name
    return hub_id(name) or Path(name).name


def scrub_paths(text: str) -> str:
    """Absolute paths (`/a/b/c`, `~/b/c`) in free text replaced by their last part (`c`): what a card or an export
    may say of the machine that made it."""
    return _ABSOLUTE.sub(lambda m: m[1], text)


_ABSOLUTE = re.compile(r"(?<![\w.~/:-])(?:~|/[^\s/`'\"<>|()\[\]]+)(?:/[^\s/`'\"<>|()\[\]]+)*/([^\s/`'\"<>|()\[\]]+)")


def _what(record: dict[str, Any], task: Task) -> str:
    base = portable_name(record["recipe"]["model"]["name"])
    labels = record.get("data", {}).get("labels", [])
    if not labels:
        return f"`{base}` fine-tuned to answer instructions."
    shown = ", ".join(f"`{n}`" for n in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    if task.pipeline_tag == "token-classification":
        return f"`{base}` fine-tuned to tag each word with one of {len(labels)} tags (BIO): {shown}."
    if "label_counts" in record["data"]:  # a multi-label run: any number of labels each
        return f"`{base}` fine-tuned to tag {task.input_kind}s with any of {len(labels)} labels: {shown}."
    if record["data"].get("targets"):  # a regression's labels are its targets
        return f"`{base}` fine-tuned to predict {len(labels)} numeric value(s) of each {task.input_kind}: {shown}."
    return f"`{base}` fine-tuned to classify {task.input_kind}s into {len(labels)} classes: {shown}."


def _data_section(record: dict[str, Any]) -> str:
    data = record.get("data", {})
    sizes, sources = data.get("sizes", {}), data.get("sources", {})
    rows = [f"| {split} | {sources.get(split, '')} | {sizes.get(split, '')} |" for split in ("train", "validation",
                                                                                              "test") if split in sizes]
    lines = ["## Data", "", "| split | from | examples |", "|---|---|---|", *rows]
    counts = data.get("class_counts")
    if counts:
        lines += ["", "Examples of each class in train: " + ", ".join(f"{n} {c}" for n, c in counts.items()) + "."]
    lines += [f"\nNote: {w}" for w in data.get("warnings", [])]
    return "\n".join(lines)


def _recipe_section(record: dict[str, Any]) -> str:
    import yaml

    r = record["recipe"]
    optim, params = record.get("optim", {}), record.get("params", {})
    facts = [("model", f"`{portable_name(r['model']['name'])}`"), ("strategy", r["strategy"]["name"]),
             ("optimiser", f"{optim.get('name', r['optim']['name'])}, lr {optim.get('lr', r['optim']['lr'])}, weight "
                           f"decay {optim.get('weight_decay', r['optim']['weight_decay'])}"),
             ("schedule", r["schedule"]["name"]),
             ("epochs", f"{r['train']['epochs']} (batch size {r['train']['batch_size']}, seed {r['train']['seed']})"),
             ("precision", record.get("precision", {}).get("used", r["train"]["precision"]))]
    if params:
        facts.append(("parameters", f"{params.get('trainable', 0):,} trained of {params.get('total', 0):,}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in facts)
    full = yaml.safe_dump(r, sort_keys=False)
    return (f"## Recipe\n\n| | |\n|---|---|\n{table}\n\n<details><summary>The full recipe (paths shown by "
            f"their file names)</summary>\n\n```yaml\n{full}```\n\n</details>")


def _metrics_section(record: dict[str, Any]) -> str:
    test = record.get("metrics", {}).get("test") or {}
    if not test:
        return ""
    shown = [k for k, v in test.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"
             and not k.startswith("baseline_")]
    n = f" ({test['n']} examples)" if "n" in test else ""
    if not any(k.startswith("baseline_") for k in test):
        rows = [f"| {k} | {_number(test[k])} |" for k in shown]
        return "\n".join([f"## Test metrics\n\nOn the test split{n}:\n\n| metric | value |\n|---|---|", *rows])
    rows = [f"| {k} | {_number(test[k])} | {_number(test.get(f'baseline_{k}'))} |" for k in shown]
    constant, named = (("the training mean", "mean predictor") if "baseline_rmse" in test else
                       ("the most frequent class", "majority baseline"))
    lines = [f"## Test metrics\n\nOn the test split{n}, beside a model that always answers {constant}:\n\n"
             f"| metric | value | {named} |\n|---|---|---|", *rows]
    per_class = test.get("per_class") or {}
    if per_class:
        lines += ["", "Per class:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_number(c.get('precision'))} | {_number(c.get('recall'))} | {_number(c.get('f1'))} "
                  f"| {c.get('support', '')} |" for n, c in per_class.items()]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _usage_section(folder: Path, record: dict[str, Any], task: Task, kind: str, where: str,
                   run: str | None) -> str:
    example = EXAMPLES[task.input_kind]
    lines = ["## How to use", ""]
    if run:
        lines += ["With graft (loads once, predicts on texts, images or prompts in memory):", "", "```python",
                  "import graft", "", f'predictor = graft.Predictor("{run}")', f"predictor.predict({example})",
                  "```", "", f"or `graft predict {run} INPUT`."]
    lines += ["", *_outside_graft(folder, record, task, kind, where, run)]
    image_input = record.get("model", {}).get("input") or {}
    if task.input_kind == "image" and image_input:
        lines += ["", f"Images are resized and centre-cropped to {image_input.get('image_size')} and normalised with "
                      f"mean {image_input.get('mean')} and std {image_input.get('std')} (RGB, 0-1)."]
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def _outside_graft(folder: Path, record: dict[str, Any], task: Task, kind: str, where: str,
                   run: str | None) -> list[str]:
    from graft.strategy.peft import MERGEABLE

    loads = f"`graft.models.build.load_trained(\"{where}\", \"{task.name}\", None)`"
    if kind == "onnx":
        from graft.onnx_export import onnx_usage

        return onnx_usage(folder, task, where)
    if kind == "plain":
        factory = portable_name(record["recipe"]["model"]["name"])
        return [f"The network is built by `{factory}` with its head replaced (see `graft_model.json`); "
                f"`model.safetensors` holds its state dict. graft rebuilds it: {loads}."]
    if kind == "peft":
        method = record["recipe"]["strategy"]["name"]
        merge = (f"`graft export {run or 'RUN_DIR'} --merge --output DIR` folds the update into the base weights: "
                 f"a plain transformers model." if method in MERGEABLE else
                 f"`{method}` adds to the model, so it loads through graft.")
        base = hub_id(record["recipe"]["model"]["name"])
        named = f"`{base}`" if base else (f"the local model `{portable_name(record['recipe']['model']['name'])}` "
                                          f"(not included)")
        return [f"The trained update ({method}) on top of {named}; {merge}"]
    if task.pipeline_tag == "token-classification":
        return ["With transformers (entities as spans of the text):", "", "```python",
                "from transformers import pipeline", "",
                f'tag = pipeline("{task.pipeline_tag}", model="{where}", aggregation_strategy="first")',
                'tag("an example text")', "```"]
    if task.input_kind is None:
        return ["With transformers (the chat template is in the tokenizer):", "", "```python",
                "from transformers import pipeline", "",
                f'chat = pipeline("{task.pipeline_tag}", model="{where}")',
                'chat([{"role": "user", "content": "a question"}], max_new_tokens=64)', "```"]
    from graft.files import read_json

    config = read_json(folder / "config.json")
    pooling = config.get("graft_pooling", "pooler")
    if pooling != "pooler":
        return [f"The classifier reads the {pooling} of the token states (`graft_pooling` in config.json), which "
                f"transformers' own classes do not do (they would read an untrained pooler), so load it through "
                f"graft: {loads}."]
    if config.get("graft_head"):
        return [f"Its head is the one the recipe declared (`model.head`, recorded as `graft_head` in config.json), "
                f"which transformers' own classes would replace by an untrained layer, so load it through graft: "
                f"{loads}."]
    if task.input_kind == "image" and not (folder / "preprocessor_config.json").is_file():
        return ["transformers loads it with `AutoModelForImageClassification.from_pretrained"
                f"(\"{where}\")`; the folder has no image processor, so prepare images as below."]
    scores = task.pipeline_arguments
    return ["With transformers:", "", "```python", "from transformers import pipeline", "",
            f'classify = pipeline("{task.pipeline_tag}", model="{where}", {scores})',
            f"classify({EXAMPLES[task.input_kind]})", "```"]
