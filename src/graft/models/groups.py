"""Layer groups: a model as ordered groups of parameters, input to output, the head last.

Groups are what freezing and learning rates act on (fastai's splitter, timm's group matcher). Per family:
Hugging Face models split their base model into its children, expanding the first list of blocks found in a
child (BERT's `encoder.layer.N`, ResNet's `encoder.stages.N`, ViT's `encoder.layer.N`); plain modules split into
their top-level children; a recipe can give regexes instead. Every parameter lands in exactly one group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from graft.errors import GraftError

HEAD = "head"


@dataclass
class Group:
    name: str
    params: list[str]
    """Parameter names, as in `root.named_parameters()`."""

    @property
    def is_head(self) -> bool:
        return self.name == HEAD


def base_model_path(root: nn.Module) -> str | None:
    """The attribute holding a Hugging Face model's pretrained body (`bert`, `resnet`, `vit`), if any."""
    prefix = getattr(root, "base_model_prefix", None)
    if prefix and isinstance(getattr(root, prefix, None), nn.Module):
        return prefix
    return None


def head_modules(root: nn.Module, output_layer: str) -> list[str]:
    """The modules that make the head: for Hugging Face models every top-level child but the base model
    (BERT's dropout and classifier), for plain modules the output layer alone."""
    base = base_model_path(root)
    if base is None:
        return [output_layer]
    return [name for name, _ in root.named_children() if name != base]


def layer_groups(root: nn.Module, head: list[str], patterns: list[str] | None = None) -> list[Group]:
    """Ordered groups covering every parameter of `root` once; the parameters under `head` form the last."""
    names = [name for name, _ in root.named_parameters()]
    in_head = [n for n in names if under(n, head)]
    body = [n for n in names if not under(n, head)]
    if patterns:
        groups = _by_patterns(body, patterns)
    else:
        owners = _block_owners(root)
        groups = _by_owner(body, owners)
    groups.append(Group(HEAD, in_head))
    _check_cover(names, groups)
    return [g for g in groups if g.params]


def backbone_children(root: nn.Module, head: list[str]) -> list[str]:
    """Module names of the backbone's children, input to output (HF: the base model's, e.g. bert.embeddings)."""
    base = base_model_path(root)
    parent = root.get_submodule(base) if base else root
    prefix = f"{base}." if base else ""
    return [f"{prefix}{name}" for name, child in parent.named_children()
            if not under(f"{prefix}{name}", head) and any(True for _ in child.parameters())]


def _block_owners(root: nn.Module) -> list[str]:
    """Module paths that each own a group: children of the base model (or of a plain root), with the first list of
    blocks inside a child expanded into one owner per block."""
    base = base_model_path(root)
    parent = root.get_submodule(base) if base else root
    prefix = f"{base}." if base else ""
    owners = []
    for name, child in parent.named_children():
        blocks = _first_block_list(child) if base else None
        if blocks is None:
            owners.append(f"{prefix}{name}")
            continue
        path, modules = blocks
        owners.append(f"{prefix}{name}")  # what the child holds outside its blocks (rarely anything)
        where = f"{prefix}{name}.{path}" if path else f"{prefix}{name}"
        owners += [f"{where}.{i}" for i in range(len(modules))]
    return owners


def _first_block_list(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The shallowest ModuleList of two or more blocks inside `module` (a breadth-first search)."""
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m) >= 2]
    if not found:
        return None
    return min(found, key=lambda item: (item[0] != "", item[0].count(".")))  # type: ignore[return-value]


def _by_owner(names: list[str], owners: list[str]) -> list[Group]:
    """Each parameter goes to the deepest owner that contains it; others (plain top-level parameters) alone."""
    groups: dict[str, list[str]] = {owner: [] for owner in owners}
    for name in names:
        matches = [o for o in owners if name.startswith(o + ".")]
        owner = max(matches, key=len) if matches else name.rpartition(".")[0] or name
        groups.setdefault(owner, []).append(name)
    ordered = sorted((g for g in groups.items() if g[1]), key=lambda g: names.index(g[1][0]))
    return [Group(owner, params) for owner, params in ordered]


def _by_patterns(names: list[str], patterns: list[str]) -> list[Group]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise GraftError(f"model.groups[{i}] = {pattern!r}: not a valid regex ({e})") from None
    groups = [Group(pattern, []) for pattern in patterns]
    unmatched = []
    for name in names:
        hit = next((g for g, rx in zip(groups, compiled, strict=True) if rx.search(name)), None)
        (hit.params if hit else unmatched).append(name)
    if unmatched:
        raise GraftError(f"model.groups: {len(unmatched)} parameters match no group (e.g. {', '.join(unmatched[:3])}); "
                         f"add a pattern for them (a last '.' catches the rest)")
    empty = [g.name for g in groups if not g.params]
    if empty:
        raise GraftError(f"model.groups: {empty[0]!r} matches no parameter (earlier patterns took them or the name "
                         f"is wrong); fix or remove it")
    return groups


def under(name: str, prefixes: Iterable[str]) -> bool:
    """Whether a dotted name (a parameter, module or state-dict key) is one of `prefixes` or inside one, on whole
    dotted components (`layer1` holds `layer1.0.weight`, not `layer10.weight`)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_cover(names: list[str], groups: list[Group]) -> None:
    seen = [p for g in groups for p in g.params]
    if sorted(seen) != sorted(names):  # a bug in graft, not in the user's recipe
        raise AssertionError(f"layer groups do not cover the parameters once: {len(seen)} vs {len(names)}")
