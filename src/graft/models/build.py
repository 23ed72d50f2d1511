"""One entry point for every model family: a Hugging Face classifier or a plain module, with its new head.

Whatever the family, the result trains the same way: `model(**batch)` gives `.loss` and `.logits`, `root` is
the module whose parameter names the recipe's groups and freeze rules use, and `head_modules` names the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from graft.errors import GraftError
from graft.models.heads import HeadReport, build_head, find_output_layer, replace_head
from graft.recipe import DataSpec, ModelSpec


@dataclass
class LoadedModel:
    model: nn.Module
    """What the loop trains: a Hugging Face model or a `PlainClassifier`."""
    processor: Any
    """Tokenizer (text), image processor (HF images), or None (plain modules)."""
    source: str
    head: HeadReport
    head_modules: list[str]
    """Module names, relative to `root`, that make the head (trained from scratch, the last layer group)."""
    new_keys: list[str] = field(default_factory=list)
    """Parameters that start from a fresh initialisation."""
    notes: list[str] = field(default_factory=list)
    """What loading found (missing or unexpected checkpoint keys), one line each."""
    input: dict[str, Any] = field(default_factory=dict)
    """Images: `image_size` (h, w), `mean`, `std`."""
    head_in_shape: list[int] = field(default_factory=list)
    source_head: nn.Module | None = None
    """The pretrained output layer the new head replaced, when it came from the checkpoint (what retention scores
    the source task with); None: the model had none, or scratch."""

    @property
    def root(self) -> nn.Module:
        return getattr(self.model, "net", self.model)


def load_model(spec: ModelSpec, task: str, labels: list[str], data: DataSpec, *, scratch: bool = False) -> LoadedModel:
    """The recipe's model ready for `task` (a head for `labels`); `scratch`: the same architecture, randomly
    initialised."""
    from graft.tasks import get_task

    return get_task(task).load_model(spec, labels, data, scratch)


def load_classifier(spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool, auto_class: str,
                    processor: str) -> LoadedModel:
    """A plain module, or a Hugging Face model through transformers' `auto_class`, with a new head for `labels`;
    `processor` (`tokenizer` or `image`) is what prepares its inputs."""
    if spec.is_factory:
        return _load_plain(spec, labels, data, scratch)
    return _load_hf(spec, labels, scratch, auto_class, processor)


def _load_hf(spec: ModelSpec, labels: list[str], scratch: bool, auto_class: str, processor: str) -> LoadedModel:
    from graft.models.groups import head_modules
    from graft.models.hf import load_hf_model, set_labels, source_labels

    loaded = load_hf_model(spec.name, auto_class, processor, spec.revision, scratch=scratch)
    check_positions(spec, loaded.model)
    model = loaded.model
    modules = head_modules(model, "")
    path = find_output_layer(model, spec.head.path, within=modules)
    old = model.get_submodule(path)
    # Rows can be copied only from a head that came from the checkpoint (not from a random one, nor in scratch).
    head_loaded = not scratch and not any(k.startswith(path + ".") for k in loaded.missing)
    known = (spec.source_labels or source_labels(model)) if head_loaded else None
    head = build_head([old.in_features], len(labels), spec.head, bias=old.bias is not None)
    report = replace_head(model, path, head, labels, known)
    set_labels(model, labels)
    if not isinstance(head, nn.Linear):  # transformers would load a Linear there: graft rebuilds the declared head
        model.config.update({HEAD_KEY: {"path": path, "in_features": old.in_features, "bias": old.bias is not None,
                                        **spec.head.model_dump(include={"batchnorm", "dropout", "hidden"})}})
    new_keys = sorted({f"{path}.{name}" for name, _ in head.named_parameters()} | set(loaded.missing))
    elsewhere = [k for k in loaded.missing if not k.startswith(path + ".")]
    notes = [f"not in the checkpoint, initialised fresh: {', '.join(elsewhere)}"] if elsewhere else []
    return LoadedModel(model, loaded.processor, loaded.source, report, modules, new_keys, notes, {},
                       [old.in_features], old if head_loaded else None)


def load_causal_lm(spec: ModelSpec, scratch: bool) -> LoadedModel:
    """A language model with its pretrained output layer (no new head) and its tokenizer."""
    from graft.models.hf import load_hf_model

    loaded = load_hf_model(spec.name, "AutoModelForCausalLM", "tokenizer", spec.revision, scratch=scratch)
    check_positions(spec, loaded.model)
    notes = [f"not in the checkpoint, initialised fresh: {', '.join(loaded.missing)}"] if loaded.missing else []
    return LoadedModel(loaded.model, loaded.processor, loaded.source, HeadReport("lm_head", kept=True), [],
                       list(loaded.missing), notes)


def check_positions(spec: ModelSpec, model: nn.Module) -> None:
    """Refuse a model.max_length beyond the positions the model has (it would fail mid-training, on the first long
    enough batch)."""
    config = getattr(model, "config", None)
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, k, None), int)), None)
    if positions is not None and spec.max_length > positions:
        raise GraftError(f"model.max_length = {spec.max_length}: this model has {positions} positions; set "
                         f"max_length to at most {positions}")


def _load_plain(spec: ModelSpec, labels: list[str], data: DataSpec, scratch: bool) -> LoadedModel:
    from graft.models.plain import PlainClassifier, build_net, head_input_shape
    from graft.models.weights import load_checkpoint

    net = build_net(spec.name, spec.kwargs)
    path = find_output_layer(net, spec.head.path)
    notes, loaded_head = [], False
    if spec.checkpoint is not None and not scratch:
        report = load_checkpoint(net, spec.checkpoint, renames=spec.renames)
        if not report.loaded:
            raise GraftError(f"model.checkpoint {spec.checkpoint}: no tensor matches the model's parameters "
                             f"({report.lines()[0]}); check model.name / model.kwargs, or map names with "
                             f"model.renames")
        in_head = [k for k in report.loaded if k.startswith(path + ".")]
        loaded_head = bool(in_head)
        notes = report.lines()
    size = _pair(data.image_size)
    if spec.head.input_from and (spec.head.input_from + ".").startswith(path + "."):
        raise GraftError(f"model.head.input_from = {spec.head.input_from!r}: the head ({path}) cannot feed itself; "
                         f"name a module before it (e.g. the last block)")
    in_shape = head_input_shape(net, path, spec.head.input_from, size)
    head = build_head(in_shape, len(labels), spec.head)
    old = net.get_submodule(path)
    report_head = replace_head(net, path, head, labels, spec.source_labels if loaded_head else None)
    model = PlainClassifier(net, path, spec.head.input_from)
    new_keys = [n for n, _ in net.named_parameters() if n.startswith(path + ".")]
    if spec.checkpoint is None or scratch:
        new_keys = [n for n, _ in net.named_parameters()]
    if data.mean is None or data.std is None:
        raise GraftError("data.mean / data.std: a plain module needs the per-channel normalisation it was trained "
                         "with (e.g. mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])")
    image = {"image_size": list(size), "mean": list(data.mean), "std": list(data.std)}
    return LoadedModel(model, None, spec.name, report_head, [path], new_keys, notes, image, in_shape,
                       old if loaded_head else None)


@dataclass
class TrainedModel:
    model: nn.Module
    processor: Any
    labels: list[str]
    input: dict[str, Any]


def load_trained(folder: Path, task: str, data: DataSpec | None) -> TrainedModel:
    """The final model of a graft run (`RUN_DIR/model`) for `task`, for eval and predict; `data` is the run's data
    section (image size and normalisation where the model folder has no image processor)."""
    from graft.tasks import get_task

    return get_task(task).load_trained(folder, data)


def load_trained_classifier(folder: Path, auto_class: str, processor: str) -> TrainedModel:
    """A plain module or a Hugging Face model saved by a graft run, and its class names."""
    from graft.models import hf, plain

    if plain.is_plain_dir(folder):
        return _load_trained_plain(folder)
    if not (folder / "config.json").is_file():
        raise GraftError(f"{folder}: no saved model here (config.json missing); did the run finish?")
    model, loaded_processor = hf.load_trained(folder, auto_class, processor)
    restore_declared_head(model, folder)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return TrainedModel(model, loaded_processor, labels, {})


HEAD_KEY = "graft_head"
"""In a saved Hugging Face model's config: the declared head (dropout, BatchNorm, hidden layer) that replaced its
output layer, which transformers alone would load as a fresh Linear."""


def restore_declared_head(model: nn.Module, folder: Path) -> None:
    """Put back the declared head a graft run trained on a Hugging Face model (its config's `graft_head`), with its
    saved weights; a head whose weights the model cannot take is an error, never a silently fresh head."""
    from safetensors import safe_open

    from graft.models.groups import head_modules, under
    from graft.recipe import HeadSpec

    saved = getattr(model.config, HEAD_KEY, None)
    prefix = saved["path"] + "." if saved else None
    keys, head_state = [], {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                keys.append(key)
                if prefix and key.startswith(prefix):
                    head_state[key.removeprefix(prefix)] = f.get_tensor(key)
    if saved:
        head = build_head([saved["in_features"]], model.config.num_labels,
                          HeadSpec(**{k: saved[k] for k in ("batchnorm", "dropout", "hidden")}), bias=saved["bias"])
        replace_head(model, saved["path"], head, [], None)
        head.load_state_dict(head_state)
        head.to(next(model.parameters()).dtype)
    expected, heads = set(model.state_dict()), head_modules(model, "")
    strays = [k for k in keys if k not in expected and under(k, heads)]
    if strays:
        raise GraftError(f"{folder}: the saved head has weights the model has no place for ({', '.join(strays[:4])}): "
                         f"a declared model.head saved before graft recorded it in config.json ({HEAD_KEY}); train "
                         f"the run again")


def _load_trained_plain(folder: Path) -> TrainedModel:
    from safetensors.torch import load_file

    from graft.models.plain import WEIGHTS_FILE, PlainClassifier, build_net, read_meta
    from graft.recipe import HeadSpec

    meta = read_meta(folder)
    module, _, function = meta["factory"].rpartition(":")
    if module.endswith(".py") and not Path(module).is_absolute():  # an export: its factory's file is beside it
        meta["factory"] = f"{folder / module}:{function}"
    net = build_net(meta["factory"], meta["kwargs"])
    head = build_head(meta["head_in_shape"], len(meta["labels"]), HeadSpec(**meta["head"]))
    replace_head(net, meta["head_path"], head, meta["labels"], None)
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model = PlainClassifier(net, meta["head_path"], meta["head"]["input_from"])
    return TrainedModel(model, None, meta["labels"], meta["input"])


def image_input(processor: Any, data: DataSpec | None) -> dict[str, Any]:
    """Input size and normalisation: the recipe's, else the model's image processor's."""
    given = data or DataSpec.model_construct()
    size = _pair(given.image_size) if given.image_size is not None else _processor_size(processor)
    mean = given.mean or getattr(processor, "image_mean", None)
    std = given.std or getattr(processor, "image_std", None)
    if size is None or mean is None or std is None:
        raise GraftError("data.image_size / mean / std: the model folder has no image processor to take them from; "
                         "set them in the recipe")
    return {"image_size": list(size), "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def _processor_size(processor: Any) -> tuple[int, int] | None:
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None)
    if not size:
        return None
    if "height" in size:
        return size["height"], size["width"]
    if "shortest_edge" in size:
        return size["shortest_edge"], size["shortest_edge"]
    return None


def _pair(size: int | tuple[int, int] | None) -> tuple[int, int]:
    if size is None:
        raise GraftError("data.image_size: set the input size (e.g. data.image_size: 32)")
    return (size, size) if isinstance(size, int) else (size[0], size[1])
