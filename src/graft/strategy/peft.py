"""Parameter-efficient strategies: LoRA (DoRA, rsLoRA), IA³, prompt tuning and P-tuning through the `peft`
library; prefix tuning (encoders and decoders alike) and bottleneck adapters are graft's own (`prefix.py`,
`adapters.py`).

`attach` turns a loaded model into what trains: the pretrained weights are frozen, the added parameters and the
new head train. Which parameters train is read off `requires_grad` as the method leaves it, so the plan never
second-guesses peft. The head is in peft's `modules_to_save`, so an adapter saved by peft carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from graft.errors import GraftError
from graft.models.groups import Group, layer_groups, under
from graft.recipe import StrategySpec
from graft.tasks import get_task

PEFT_LIBRARY = ("lora", "ia3", "prompt", "ptuning")
"""Methods that go through the peft library; the others are graft's own."""
MERGEABLE = ("lora", "ia3")
"""Methods whose update folds into the base weights (`graft export --merge`)."""


@dataclass
class Attached:
    model: nn.Module
    """What trains and evaluates: `model(**batch)` gives `.loss` and `.logits`."""
    root: nn.Module
    """The module whose parameter names the plan, the optimiser and the group table use."""
    groups: list[Group]
    trains: set[str]
    """Parameters of `root` that train: the added ones and the head (and norms, where the method says so)."""
    peft_model: Any = None
    """The peft.PeftModel (peft's methods): what saves the adapter in peft's format and merges it."""
    notes: list[str] = field(default_factory=list)


def attach(model: nn.Module, root: nn.Module, head: list[str], spec: StrategySpec, task: str,
           group_patterns: list[str] | None) -> Attached:
    """Add `spec.name`'s parameters to `model` (whose parameters live in `root`, its head in the modules `head`),
    for a model of `task` (which strategies a task takes, the recipe has checked)."""
    if spec.name in PEFT_LIBRARY:
        return _attach_peft(model, root, head, spec, task, group_patterns)
    if spec.name == "prefix":
        from graft.strategy.prefix import PrefixTuned

        wrapped = PrefixTuned(model, spec.prompt.num_virtual_tokens)
        trains = _freeze_all_but(wrapped, lambda n: n == "prefix" or under(n.removeprefix("model."), head))
        groups = _groups_inside(wrapped, model, "model.", head, group_patterns, "prefix")
        return Attached(wrapped, wrapped, groups, trains)
    from graft.strategy.adapters import add_adapters

    added = add_adapters(root, spec.adapter)
    norms = set(_norm_params(root)) if spec.adapter.train_norms else set()
    trains = _freeze_all_but(root, lambda n: n in added or n in norms or under(n, head))
    return Attached(model, root, layer_groups(root, head, group_patterns), trains,
                    notes=[f"adapters ({spec.adapter.kind}): {len(added) // 4} bottlenecks added"])


def _attach_peft(model: nn.Module, root: nn.Module, head: list[str], spec: StrategySpec, task: str,
                 group_patterns: list[str] | None) -> Attached:
    import peft

    saved = [h for h in head if any(True for _ in root.get_submodule(h).parameters())]
    common: dict[str, Any] = {"modules_to_save": saved or None}
    task_type = get_task(task).peft_task_type
    if task_type is not None:
        common["task_type"] = getattr(peft.TaskType, task_type)
    if spec.name == "lora":
        lo = spec.lora
        config = peft.LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, bias=lo.bias,
                                 use_dora=lo.use_dora, use_rslora=lo.use_rslora,
                                 target_modules=_targets(root, head, lo.target_modules, "lora", model), **common)
    elif spec.name == "ia3":
        targets = _targets(root, head, spec.ia3.target_modules, "ia3", model)
        feedforward = spec.ia3.feedforward_modules
        if feedforward is None and targets is not None:
            feedforward = targets
        config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, **common)
    elif spec.name == "prompt":
        config = peft.PromptTuningConfig(num_virtual_tokens=spec.prompt.num_virtual_tokens, **common)
    else:
        config = peft.PromptEncoderConfig(num_virtual_tokens=spec.prompt.num_virtual_tokens,
                                          encoder_hidden_size=spec.prompt.encoder_hidden_size, **common)
    try:
        wrapped = peft.get_peft_model(root, config)
    except ValueError as e:
        raise GraftError(f"strategy.{spec.name}: peft cannot apply it to this model ({_first_line(e)}); set "
                         f"strategy.{'lora' if spec.name == 'lora' else 'ia3'}.target_modules") from None
    if spec.name in ("lora", "ia3"):
        # The update lives inside the model's own layers: train the model itself, as it was wrapped by nothing.
        trains = {n for n, p in root.named_parameters() if p.requires_grad}
        groups = layer_groups(root, head, group_patterns)
        trained = model
        return Attached(trained, root, groups, trains, wrapped)
    # Virtual tokens are added by peft's forward: train through it.
    trains = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    groups = _groups_inside(wrapped, root, "base_model.", head, group_patterns, "prompt")
    return Attached(wrapped, wrapped, groups, trains, wrapped)


def _targets(root: nn.Module, head: list[str], given: list[str] | str | None, method: str,
             model: nn.Module) -> list[str] | str | None:
    """The recipe's targets, else peft's defaults for a known transformer, else every Linear/Conv2d of the
    backbone (CNNs, plain modules)."""
    if given is not None:
        return given
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

    known = {"lora": TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
             "ia3": TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING}[method]
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None) in known:
        return None
    layers = [name for name, m in root.named_modules()
              if isinstance(m, nn.Linear | nn.Conv2d) and not under(name, head)]
    if not layers:
        raise GraftError(f"strategy.{method}.target_modules: the model has no Linear or Conv2d layer outside its "
                         f"head; name the modules to adapt")
    return layers


def _groups_inside(outer: nn.Module, inner: nn.Module, prefix: str, head: list[str],
                   patterns: list[str] | None, extra_name: str) -> list[Group]:
    """Groups of `inner` (reachable from `outer` under `prefix`) renamed for `outer`, plus `outer`'s own added
    parameters as a first group."""
    groups = [Group(g.name, [prefix + n for n in g.params]) for g in layer_groups(inner, head, patterns)]
    covered = {n for g in groups for n in g.params}
    extra = [n for n, _ in outer.named_parameters() if n not in covered]
    return [Group(extra_name, extra), *groups] if extra else groups


def _freeze_all_but(module: nn.Module, keep: Callable[[str], bool]) -> set[str]:
    trains = {name for name, _ in module.named_parameters() if keep(name)}
    for name, p in module.named_parameters():
        p.requires_grad_(name in trains)
    return trains


def _norm_params(model: nn.Module) -> list[str]:
    return [f"{m_name}.{p_name}" if m_name else p_name for m_name, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) for p_name, _ in m.named_parameters(recurse=False)]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def trainable_state(root: nn.Module, trains: set[str]) -> dict[str, Any]:
    """The tensors a PEFT run changed (added parameters, head, trained norms), by their names in `root`."""
    return {n: p.detach().cpu().contiguous() for n, p in root.named_parameters() if n in trains}


def load_trainable_state(root: nn.Module, state: dict[str, Any], where: Path) -> None:
    own = dict(root.named_parameters())
    missing = sorted(set(state) - set(own))
    if missing:
        raise GraftError(f"{where}: {len(missing)} saved tensors have no place in the rebuilt model (e.g. "
                         f"{missing[0]}); was the base model changed since the run?")
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise GraftError(f"{where}: {name} has shape {list(tensor.shape)}, the rebuilt model "
                             f"{list(own[name].shape)}; was the base model changed since the run?")
        own[name].data.copy_(tensor)



META_FILE = "graft_peft.json"
WEIGHTS_FILE = "graft_peft.safetensors"


def save_peft_run(folder: Path, attached: Attached, recipe: Any, labels: list[str], image_input: dict) -> None:
    """What a PEFT run trained, and how to rebuild the rest: the base model is the recipe's, by reference."""
    import json

    from safetensors.torch import save_file

    from graft.models.save import graft_config

    folder.mkdir(parents=True, exist_ok=True)
    if attached.peft_model is not None:
        attached.peft_model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
    save_file(trainable_state(attached.root, attached.trains), str(folder / WEIGHTS_FILE))
    meta = {"method": recipe.strategy.name, "task": recipe.task, "labels": labels, "input": image_input,
            "model": recipe.model.model_dump(mode="json"), "data": recipe.data.model_dump(mode="json"),
            "strategy": recipe.strategy.model_dump(mode="json"), "config": graft_config(attached.model)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))



def is_peft_run(folder: Path) -> bool:
    return (folder / META_FILE).is_file()


@dataclass
class RebuiltRun:
    attached: Attached
    processor: Any
    labels: list[str]
    input: dict[str, Any]
    meta: dict[str, Any]
    plain_head: tuple[str, list[int]] | None
    """Plain modules: the head's path and input shape (to save a merged model)."""


def load_peft_run(folder: Path) -> RebuiltRun:
    """A PEFT run's model, rebuilt: the base from the recipe's model section, the method attached, the trained
    tensors loaded."""
    import json

    from safetensors.torch import load_file

    from graft.models.build import load_model
    from graft.recipe import DataSpec, ModelSpec

    meta = json.loads((folder / META_FILE).read_text())
    model_spec, strategy = ModelSpec(**meta["model"]), StrategySpec(**meta["strategy"])
    loaded = load_model(model_spec, meta["task"], meta["labels"], DataSpec(**meta["data"]))
    if meta.get("config"):
        loaded.model.config.update(meta["config"])
    attached = attach(loaded.model, loaded.root, loaded.head_modules, strategy, meta["task"], model_spec.groups)
    load_trainable_state(attached.root, load_file(str(folder / WEIGHTS_FILE)), folder / WEIGHTS_FILE)
    plain = (loaded.head.path, loaded.head_in_shape) if model_spec.is_factory else None
    return RebuiltRun(attached, loaded.processor, meta["labels"], loaded.input, meta, plain)


def merged_model(run: RebuiltRun, where: Path) -> nn.Module:
    """The base model with the update folded into its weights and the trained head in place: no peft needed."""
    method = run.meta["method"]
    if method not in MERGEABLE:
        why = "adds layers" if method == "adapter" else "adds virtual tokens"
        raise GraftError(f"graft export --merge: {where} was trained with '{method}', which {why} and cannot be "
                         f"merged into the base weights; export without --merge (graft loads it), or train with "
                         f"lora or ia3")
    return run.attached.peft_model.merge_and_unload()
