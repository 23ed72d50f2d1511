"""Where each split's rows come from: the recipe's files, folders and globs as they are, and the splits of a
DatasetDict, a folder made by `DatasetDict.save_to_disk` or a Hugging Face Hub dataset (`hf://owner/name`, with
`:config` and `@revision` optional) loaded through `datasets.load_dataset`.

A DatasetDict's splits map by name: train; validation, valid, val or dev; test. As data.train it gives every split it
has; as data.validation or data.test, that split. A split the recipe gives itself is read from the recipe's source,
and the DatasetDict's split of that name is left out with a warning.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import datasets
import httpx
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RevisionNotFoundError

from graft.data.tables import LoadedSplit, Source, quiet_datasets_logs, root_cause, source_name
from graft.errors import GraftError
from graft.recipe.schema import DATA_PATHS, HUB_ID, HUB_PREFIX

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
"""A DatasetDict's split names for each of graft's splits, in order of preference."""


def locate_splits(train: Path | str, validation: Path | str | None,
                  test: Path | str | None) -> tuple[dict[str, Source], list[str]]:
    """The source of each split that the recipe or a DatasetDict gives (train first), and warning lines."""
    given = {key: value for key, value in zip(DATA_PATHS, (train, validation, test), strict=True) if value is not None}
    unique = {str(value): value for value in given.values()}  # one load for an id given twice
    loaded = {text: _dataset_dict(value) for text, value in unique.items()}
    dicts = {key: loaded[str(value)] for key, value in given.items()}
    located: dict[str, Source] = {}
    for key, value in given.items():
        found = dicts[key]
        located[key] = Path(value) if found is None else _split(found, key, value, required=True)
    warnings = []
    if dicts["train"] is not None:
        for key in DATA_PATHS[1:]:
            split = _split(dicts["train"], key, train, required=False)
            if split is None:
                continue
            if key in given:
                warnings.append(f"data.{key}: {source_name(located[key])} is used, not the {split.split!r} split of "
                                f"{source_name(train) if isinstance(train, Path) else train}")
            else:
                located[key] = split
    return {key: located[key] for key in DATA_PATHS if key in located}, warnings


def _dataset_dict(source: Path | str) -> datasets.DatasetDict | None:
    """The DatasetDict `source` holds; None when it is a file, a glob or a saved single Dataset."""
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return load_hub_dataset(source)
    path = Path(source)
    if not (path / "dataset_dict.json").is_file():
        return None
    with quiet_datasets_logs():
        return datasets.load_from_disk(str(path))


def _split(found: datasets.DatasetDict, key: str, source: Path | str, required: bool) -> LoadedSplit | None:
    name = next((name for name in SPLIT_NAMES[key] if name in found), None)
    if name is not None:
        shown = f"{source}[{name}]" if isinstance(source, str) else f"{Path(source).name}/{name}"
        return LoadedSplit(shown, name, found[name])
    if not required:
        return None
    wanted = " or ".join(repr(name) for name in SPLIT_NAMES[key])
    raise GraftError(f"data.{key}: {source} has no {wanted} split (its splits: {', '.join(found)}); give data.{key} "
                     f"a DatasetDict with one, or a file or folder of that split")


def load_hub_dataset(ref: str) -> datasets.DatasetDict:
    """Every split of the Hugging Face Hub dataset `ref` (`hf://owner/name[:config][@revision]`); offline, from
    the local cache."""
    parts = HUB_ID.fullmatch(ref)
    if parts is None:
        raise GraftError(f"{ref}: not a hub dataset id; write hf://owner/name, optionally with :config and @revision")
    try:
        with quiet_datasets_logs():
            loaded = datasets.load_dataset(parts["repo"], parts["config"], revision=parts["revision"])
    except Exception as error:
        raise GraftError(f"{ref}: {_hub_problem(error, parts['repo'])}") from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise GraftError(f"{ref}: datasets.load_dataset gave a {type(loaded).__name__}, not a DatasetDict of splits")
    return loaded


def _hub_problem(error: Exception, repo: str) -> str:
    """What went wrong loading a hub dataset, in one line with the fix."""
    if _unreachable(error):
        why = "the hub is switched off (HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else \
            "the Hugging Face Hub is not reachable"
        return (f"{why} and the dataset is not in the local cache; load it once where the hub is reachable (it is "
                f"cached then), or give a folder made by DatasetDict.save_to_disk")
    if isinstance(error, DatasetNotFoundError):
        return "no such dataset on the Hugging Face Hub (a gated or private one needs `hf auth login`); check the id"
    configs = re.search(r"(?:Config name is missing|BuilderConfig).*?(\[[^\]]*\])", str(error), re.DOTALL)
    names = ast.literal_eval(configs.group(1)) if isinstance(error, ValueError) and configs else None
    if names:  # datasets lists the configurations in its message
        return (f"pick one of its configurations after a colon, e.g. hf://{repo}:{names[0]} (configurations: "
                f"{', '.join(names)})")
    if isinstance(error, RevisionNotFoundError):
        return "no such revision (a branch, tag or commit of the dataset's repository); fix the part after @"
    return f"datasets.load_dataset failed ({root_cause(error)})"


def _unreachable(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) says the hub could not be reached or is switched off."""
    while error is not None:
        if isinstance(error, ConnectionError | TimeoutError | httpx.TransportError | OfflineModeIsEnabled
                      | LocalEntryNotFoundError):
            return True
        error = error.__cause__ or error.__context__
    return False
