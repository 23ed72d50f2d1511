"""Causal language models on instructions, the torch side: chat rendering, loss on responses only, packing, LM
metrics, samples (the task itself is `graft.tasks.causal_lm`).

A conversation is rendered with the tokenizer's own chat template, or graft's default (`DEFAULT_TEMPLATE`) when it
has none. Tokens inside an assistant turn (through its end-of-turn marker) are the labels; everything else is -100,
so the loss is on responses only, on every assistant turn of a multi-turn chat. The model shifts labels by one
itself. Packing hands a batch to transformers' `DataCollatorWithFlattening`: one row, positions restarting at each
example, which transformers turns into attention that never crosses examples (with the cache off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from graft.errors import GraftError
from graft.tasks.text import EpochShuffle

IGNORE = -100
DEFAULT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ '### System:\\n' + m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '### User:\\n' + m['content'] + '\\n\\n' }}"
    "{%- else -%}{{ '### Assistant:\\n' + m['content'] + eos_token + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:\\n' }}{%- endif -%}"
)
"""graft's chat template for tokenizers without one: `### System:` / `### User:` / `### Assistant:` blocks, each
answer closed by the end-of-sequence token so that generation knows where to stop."""


def prepare_tokenizer(tokenizer: Any) -> list[str]:
    """Give the tokenizer what instruction tuning needs (a chat template, an end and a pad token); say what was
    added, so the run can print it."""
    notes = []
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_TEMPLATE
        notes.append("the tokenizer has no chat template: graft's default (### System / ### User / ### Assistant)")
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token or tokenizer.pad_token
        notes.append(f"no end-of-sequence token: {tokenizer.eos_token!r} ends each answer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "is_fast", False):
        raise GraftError("model.name: a fast tokenizer is needed (offsets tell which tokens are the response)")
    return notes


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels (-100 but on assistant turns), cut to `max_length`; None when the cut leaves no
    response token."""
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        upto = render(tokenizer, messages[: i + 1])
        if not text.startswith(upto):
            raise GraftError("the chat template renders a conversation's start differently from the whole "
                             "conversation, so responses cannot be located; use a template without that")
        spans.append((start, len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    if _needs_bos(tokenizer, ids):
        ids, offsets = [tokenizer.bos_token_id, *ids], [(0, 0), *offsets]
    labels = [t if any(s <= a < e for s, e in spans) and b > a else IGNORE
              for t, (a, b) in zip(ids, offsets, strict=True)]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def _needs_bos(tokenizer: Any, ids: list[int]) -> bool:
    """The tokenizer has a beginning-of-sequence token that the rendered text did not already start with."""
    bos = tokenizer.bos_token_id
    return bos is not None and (not ids or ids[0] != bos)


class Encoded(Dataset):
    """Encoded conversations; `dropped` counts those whose responses were cut away by max_length."""

    def __init__(self, conversations: list[list[dict[str, str]]], tokenizer: Any, max_length: int) -> None:
        encoded = [encode(tokenizer, c, max_length) for c in conversations]
        self.tokenizer = tokenizer
        self.items = [e for e in encoded if e is not None]
        self.conversations = [c for c, e in zip(conversations, encoded, strict=True) if e is not None]
        self.dropped = len(encoded) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


@dataclass
class Pad:
    """Pad a batch to its longest example: pad ids, attention mask 0, labels -100."""

    pad_id: int

    def __call__(self, items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_loader(ds: Encoded, pad_id: int, batch_size: int, seed: int, group_by_length: bool, packing: bool,
                 num_workers: int = 0) -> DataLoader:
    """Shuffled batches (a pure function of seed and epoch), padded, or packed into one row each."""
    from transformers import DataCollatorWithFlattening

    sampler = EpochShuffle([len(x["input_ids"]) for x in ds.items], batch_size, seed, group_by_length)
    collate = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE) if packing else Pad(pad_id)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))


def eval_loader(ds: Encoded, pad_id: int, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, collate_fn=Pad(pad_id), num_workers=num_workers)


@torch.no_grad()
def evaluate_lm(accelerator: Any, model: torch.nn.Module, loader: DataLoader, label_names: Any = None) -> dict:
    """Mean loss per response token, its perplexity, and the share of response tokens predicted exactly, each with
    its standard error over examples (`loss_se`...: the tokens of one answer are not independent, so an example is
    the unit of sampling; compare judges ties with them)."""
    model.eval()
    # Per example i: loss sum L, tokens T, correct C; kept as the sums a ratio estimator's variance needs.
    sums = torch.zeros(len(_MOMENTS), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
        target = batch["labels"][:, 1:]
        logits = logits[:, -target.shape[1] - 1: -1]  # prompt-learning methods prepend virtual tokens
        keep = target != IGNORE
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE,
                                                       reduction="none")
        per = {"L": token_loss.double().sum(1), "T": keep.double().sum(1),
               "C": ((logits.argmax(-1) == target) & keep).double().sum(1)}
        per["n"] = torch.ones_like(per["T"])
        sums += torch.stack([per[a] * per[b] if b else per[a] for a, b in _MOMENTS]).sum(1)
    total = dict(zip(_MOMENTS, accelerator.reduce(sums, "sum").tolist(), strict=True))
    tokens = max(total["T", ""], 1.0)
    loss, accuracy = total["L", ""] / tokens, total["C", ""] / tokens
    loss_se, accuracy_se = (_ratio_se(total, part, ratio) for part, ratio in (("L", loss), ("C", accuracy)))
    perplexity = math.exp(min(loss, 50.0))
    return {"n": int(total["n", ""]), "tokens": int(total["T", ""]), "loss": loss, "perplexity": perplexity,
            "token_accuracy": accuracy, "loss_se": loss_se, "perplexity_se": perplexity * loss_se,
            "token_accuracy_se": accuracy_se}


_MOMENTS = (("n", ""), ("T", ""), ("L", ""), ("C", ""), ("T", "T"), ("L", "L"), ("L", "T"), ("C", "C"), ("C", "T"))


def _ratio_se(total: dict[tuple[str, str], float], part: str, ratio: float) -> float:
    """The standard error of sum(part_i) / sum(T_i) over n examples: sqrt(n/(n-1) sum (part_i - ratio T_i)^2) /
    sum(T_i), from the sums alone (so processes can add theirs). With one example there is no estimate: 0, and
    compare treats a test split of one example as telling nothing apart."""
    n = total["n", ""]
    if n < 2 or total["T", ""] <= 0:
        return 0.0
    squares = total[part, part] - 2 * ratio * total[part, "T"] + ratio * ratio * total["T", "T"]
    return math.sqrt(max(squares, 0.0) * n / (n - 1)) / total["T", ""]


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, conversations: list[list[dict[str, str]]],
             max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy answers to each conversation's last user turn (everything before its last assistant turn)."""
    model.eval()
    out = []
    device = next(model.parameters()).device
    for messages in conversations:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if any(
            m["role"] == "assistant" for m in messages) else len(messages)
        prompt = render(tokenizer, messages[:last], add_generation_prompt=True)
        tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if _needs_bos(tokenizer, tokens):
            tokens = [tokenizer.bos_token_id, *tokens]
        ids = torch.tensor([tokens], device=device)
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, use_cache=True)[0, ids.shape[1]:]
        out.append({"prompt": messages[last - 1]["content"] if last else "",
                    "reference": messages[last]["content"] if last < len(messages) else None,
                    "generated": tokenizer.decode(new, skip_special_tokens=True).strip()})
    return out
