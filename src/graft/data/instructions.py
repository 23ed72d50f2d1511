"""Instruction data for causal language models: prompt/response columns or chat `messages`, checked and split.

Every example becomes a conversation, a list of `{"role": "system" | "user" | "assistant", "content": str}` with at
least one assistant turn; the recipe's system prompt goes first where an example has none. Splits not given are
carved from train at random (seeded); a conversation in two splits is leakage, handled as `data.leakage` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.data.checks import Labelled, drop_duplicate_texts, format_rows, require_column
from graft.data.sources import locate_splits
from graft.data.splits import SPLITS, remove_leakage, split_sources, stratified_split
from graft.data.tables import Source, TableFormat, read_rows, source_name
from graft.errors import GraftError

ROLES = ("system", "user", "assistant")
Conversation = list[dict[str, str]]


@dataclass
class InstructionSplits:
    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    """Empty: a language model has no classes (kept so runs of every task read alike)."""


def load_instruction_splits(train: Path | str, validation: Path | str | None, test: Path | str | None, *,
                            data: Any, split: tuple[float, float, float], seed: int) -> InstructionSplits:
    """Read, check and split conversations; `data` is the recipe's data section (columns, system prompt, format)."""
    given, warnings = locate_splits(train, validation, test)
    names = {key: source_name(source) for key, source in given.items()}
    parts = {key: read_conversations(source, names[key], data) for key, source in given.items()}
    # Leakage and duplicates are found on the conversation's text, through the same checks as for texts.
    keyed = {key: Labelled(names[key], [json.dumps(c, sort_keys=True) for c in convs], ["-"] * len(convs),
                           list(range(1, len(convs) + 1)), noun="example")
             for key, convs in parts.items()}
    by_key = {key: dict(zip(keyed[key].texts, parts[key], strict=True)) for key in parts}
    keyed, found = remove_leakage(keyed, data.leakage)
    warnings += found
    carve = {key: fraction for key, fraction in zip(SPLITS[1:], split[1:], strict=True) if key not in given}
    if carve:
        keyed["train"], found = drop_duplicate_texts(keyed["train"])
        warnings += found
        n = len(keyed["train"].texts)
        picked = stratified_split(["-"] * n, carve, seed)
        if any(not picked[key] for key in carve) or not picked["train"]:
            raise GraftError(f"{names['train']}: {n} examples are too few to carve "
                             f"{', '.join(carve)} from; add examples or give data.validation / data.test")
        keyed = {**keyed, **{key: keyed["train"].select(indices) for key, indices in picked.items()}}
    out = {key: [by_key.get(key, by_key["train"])[text] for text in keyed[key].texts] for key in SPLITS}
    sources = split_sources(names, given)
    return InstructionSplits(out["train"], out["validation"], out["test"], sources, warnings)


def read_conversations(path: Source, name: str, data: Any) -> list[Conversation]:
    """The file's examples as conversations: its `messages` column when it has one, else prompt + response."""
    table, rows = read_rows(path, TableFormat.of(data))
    if len(table) == 0:
        raise GraftError(f"{name}: no data rows; add examples")
    columns = table.column_names
    if data.messages_column in columns:
        messages = table.select_columns([data.messages_column]).to_dict()[data.messages_column]
        conversations = [checked_messages(m, name, row, data.messages_column)
                         for row, m in zip(rows, messages, strict=True)]
    else:
        for column, key in ((data.prompt_column, "data.prompt_column"), (data.response_column, "data.response_column")):
            if column not in columns:
                require_column(columns, column, name, f"{key} (or a '{data.messages_column}' column of chat "
                                                      f"messages)")
        values = table.select_columns([data.prompt_column, data.response_column]).to_dict()
        pairs = zip(values[data.prompt_column], values[data.response_column], strict=True)
        blank = [not str(p or "").strip() or not str(r or "").strip() for p, r in pairs]
        empty = [row for row, is_blank in zip(rows, blank, strict=True) if is_blank]
        if empty:
            raise GraftError(f"{name}: empty prompt or response in {format_rows(empty)}; fill or remove those rows")
        conversations = [[{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                         for p, r in zip(values[data.prompt_column], values[data.response_column], strict=True)]
    return with_system(conversations, data.system)


def with_system(conversations: list[Conversation], system: str | None) -> list[Conversation]:
    """`system` first in every conversation that has no system message of its own."""
    if not system:
        return conversations
    return [c if c[0]["role"] == "system" else [{"role": "system", "content": system}, *c] for c in conversations]


def checked_messages(value: Any, name: str, row: int, column: str, need_answer: bool = True) -> Conversation:
    """One row's chat messages, checked; `need_answer`: it must hold an assistant turn (training data)."""
    where = f"{name}: row {row}, column {column!r}"
    if not isinstance(value, list) or not value:
        raise GraftError(f"{where}: expected a list of messages [{{role, content}}, ...], got {str(value)[:60]!r}")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise GraftError(f"{where}: message {i + 1} must be {{role: system|user|assistant, content: text}}, got "
                             f"{str(m)[:80]!r}")
        if not m["content"].strip():
            raise GraftError(f"{where}: message {i + 1} ({m['role']}) is empty; fill or remove it")
        messages.append({"role": m["role"], "content": m["content"]})
    if need_answer and not any(m["role"] == "assistant" for m in messages):
        raise GraftError(f"{where}: no assistant message, so nothing to learn from it; add the answer or remove "
                         f"the row")
    return messages
