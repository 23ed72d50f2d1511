"""Monte-Carlo dropout: N stochastic passes of a trained classifier, summarised per example by the mean probabilities
and by how much the passes disagree (predictive entropy, mutual information, per-class standard deviation); and
abstention, which answers `abstain` where the top probability is below a threshold.

Dropout is switched on module by module, never with `model.train()`: the model goes to eval mode, then only the
dropout layers, and the attention modules that apply their dropout functionally from their own `training` flag
(transformers' BERT, RoBERTa, DistilBERT, ViT, Llama: `dropout=0.0 if not self.training else p`; torch's
MultiheadAttention), are marked training, each alone and not its children. BatchNorm and every other layer with
running statistics stays in eval mode, so its statistics are read and never updated. Every module's mode is restored
afterwards. The N passes run batched: each example repeated N times in one forward (dropout draws a mask per row, so
the repeats differ), as many examples per forward as `max_rows` allows. Written here because neither torch nor
transformers has an MC-dropout switch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from graft.errors import GraftError

MAX_ROWS = 256
"""Rows (examples × passes) per forward by default: the memory budget of one MC forward. Lower it for large models."""

ABSTAIN = "abstain"
"""The label of a prediction whose top probability is below `--min-confidence`."""

NO_DROPOUT = ("--mc-dropout: the model has no dropout (no dropout layer or attention dropout with p > 0), so every "
              "pass would give the same answer; train it with model.head.dropout (e.g. 0.1: dropout before the new "
              "head), then predict with --mc-dropout")

T = TypeVar("T")


@dataclass
class MCPrediction:
    """Per example: the mean of the passes' probabilities and how much the passes disagree (entropies in nats)."""

    probabilities: np.ndarray
    """[examples, classes]: the mean over the passes of each pass's softmax."""
    entropy: np.ndarray
    """[examples]: predictive entropy, the entropy of the mean probabilities (all uncertainty)."""
    mutual_information: np.ndarray
    """[examples]: the entropy of the mean less the mean of the passes' entropies (BALD): the part of the uncertainty
    that comes from the model's weights (the passes disagree), not from the data; 0 when every pass agrees."""
    std: np.ndarray
    """[examples, classes]: each class's probability's standard deviation over the passes (population, ddof 0)."""

    @staticmethod
    def concat(parts: list[MCPrediction], classes: int = 0) -> MCPrediction:
        if not parts:
            return MCPrediction(np.zeros((0, classes)), np.zeros(0), np.zeros(0), np.zeros((0, classes)))
        return MCPrediction(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                              ("probabilities", "entropy", "mutual_information", "std")))


def stochastic_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose own `training` flag turns dropout on: dropout layers with p > 0, and attention modules
    (class name containing `Attention`) that own a dropout probability > 0, as a dropout child or a float attribute
    named like `dropout` (`attention_dropout`, torch's MultiheadAttention `dropout`)."""
    found = []
    for module in model.modules():
        if isinstance(module, _DropoutNd):
            if module.p > 0:
                found.append(module)
        elif "Attention" in type(module).__name__ and _owned_dropout(module) > 0:
            found.append(module)
    return found


def _owned_dropout(module: nn.Module) -> float:
    layers = [c.p for c in module.children() if isinstance(c, _DropoutNd)]
    floats = [v for k, v in vars(module).items() if "dropout" in k.lower() and isinstance(v, float)]
    return max(layers + floats, default=0.0)


@contextmanager
def dropout_active(model: nn.Module) -> Iterator[list[nn.Module]]:
    """`model` in eval mode with only its dropout on (see `stochastic_modules`, which it yields); every module's
    mode as it was afterwards. A model without dropout is a GraftError saying how to add it."""
    stochastic = stochastic_modules(model)
    if not stochastic:
        raise GraftError(NO_DROPOUT)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for module in stochastic:
            module.training = True  # this module alone: its children (a BatchNorm among them) stay in eval mode
        yield stochastic
    finally:
        for module, mode in modes:
            module.training = mode


def mc_dropout_predict(model: nn.Module, batches: Iterable[Mapping[str, Any]], n: int, *, temperature: float = 1.0,
                       max_rows: int = MAX_ROWS, seed: int | None = 0,
                       gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> MCPrediction:
    """`n` dropout passes of a classifier (`model(**batch).logits`) over `batches` (a `labels` entry is ignored),
    summarised per example in loader order; logits are divided by `temperature` before each pass's softmax.
    `seed` makes the passes reproducible (the global RNG is left as it was; None: drawn from it). `gather` (e.g.
    `accelerator.gather_for_metrics`) collects each batch's passes from every process."""
    check_temperature(temperature)

    def summary(logits: torch.Tensor) -> MCPrediction:
        return summarise_passes(gather(logits) if gather is not None else logits, temperature)

    return MCPrediction.concat(_each_batch(model, batches, n, max_rows, seed, summary))


def mc_dropout_logits(model: nn.Module, batches: Iterable[Mapping[str, Any]], n: int, *, max_rows: int = MAX_ROWS,
                      seed: int | None = 0) -> np.ndarray:
    """Every pass's logits, [examples, n, classes] (fp32): what `mc_dropout_predict` summarises, kept whole (examples
    × n × classes floats in memory)."""
    parts = _each_batch(model, batches, n, max_rows, seed, lambda logits: logits.numpy())
    return np.concatenate(parts) if parts else np.zeros((0, n, 0), dtype=np.float32)


def summarise_passes(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> MCPrediction:
    """Mean probabilities, predictive entropy, mutual information and per-class std of passes' logits
    [examples, n, classes], in float64."""
    log_p = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=-1)
    p = log_p.exp()
    mean = p.mean(dim=1)
    entropy = -torch.special.xlogy(mean, mean).sum(dim=-1)
    each = -torch.where(p > 0, p * log_p, 0.0).sum(dim=-1)  # a -inf logit: 0 · log 0 = 0
    # Jensen makes it ≥ 0; a tiny negative is rounding, when the passes all but agree
    mutual = (entropy - each.mean(dim=1)).clamp(min=0.0)
    return MCPrediction(mean.numpy(), entropy.numpy(), mutual.numpy(), p.std(dim=1, correction=0).numpy())


def mc_predict_rows(model: nn.Module, batches: Iterable[Mapping[str, Any]], labels: list[str], n: int, *,
                    temperature: float = 1.0, max_rows: int = MAX_ROWS, seed: int | None = 0,
                    gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """A row per example, in loader order, as `graft predict --mc-dropout N` writes them (the caller adds the input):
    `label` and `score` from the mean probabilities, `probabilities` and `std` by class name, `entropy` and
    `mutual_information`. Arguments as `mc_dropout_predict`."""
    mc = mc_dropout_predict(model, batches, n, temperature=temperature, max_rows=max_rows, seed=seed, gather=gather)
    if len(mc.probabilities) and mc.probabilities.shape[1] != len(labels):
        raise GraftError(f"the model gives {mc.probabilities.shape[1]} classes and the run names {len(labels)}; the "
                         f"run's model and its labels disagree: train the run again")
    return [{"label": labels[int(row.argmax())], "score": float(row.max()),
             "probabilities": dict(zip(labels, row.tolist(), strict=True)),
             "entropy": float(h), "mutual_information": float(mi),
             "std": dict(zip(labels, s.tolist(), strict=True))}
            for row, h, mi, s in zip(mc.probabilities, mc.entropy, mc.mutual_information, mc.std, strict=True)]


def mc_columns(labels: list[str], input_column: str) -> list[str]:
    """The CSV columns of `mc_predict_rows`' rows with their input, `probabilities` and `std` spread out as
    `p_<label>` and `std_<label>`."""
    return [input_column, "label", "score", *(f"p_{n}" for n in labels), "entropy", "mutual_information",
            *(f"std_{n}" for n in labels)]


def check_passes(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise GraftError(f"--mc-dropout {n!r}: give a whole number of passes of at least 2 (10 to 30 is usual)")


def check_temperature(temperature: float) -> None:
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not temperature > 0:
        raise GraftError(f"temperature = {temperature!r}: give a number above 0 (1 leaves the logits as they are)")


def _each_batch(model: nn.Module, batches: Iterable[Mapping[str, Any]], n: int, max_rows: int, seed: int | None,
                reduce: Callable[[torch.Tensor], T]) -> list[T]:
    """`reduce` of each batch's pass logits [examples, n, classes] (fp32, on the CPU), dropout on throughout."""
    check_passes(n)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise GraftError(f"max_rows = {max_rows!r}: give a whole number of rows per forward of at least 1")
    device = next(model.parameters()).device
    out: list[T] = []
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            dropout_active(model):
        if seed is not None:
            torch.manual_seed(seed)
        for batch in batches:
            out.append(reduce(_batch_passes(model, batch, n, max_rows, device)))
    return out


def _batch_passes(model: nn.Module, batch: Mapping[str, Any], n: int, max_rows: int,
                  device: torch.device) -> torch.Tensor:
    """The batch's examples, each repeated `n` times (rows x0 x0 ... x1 x1 ...), through the model at most
    `max_rows` rows per forward: logits [examples, n, classes]."""
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    size = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
    per_forward = max(1, max_rows // n)
    out = []
    for start in range(0, size, per_forward):
        stop = min(start + per_forward, size)
        repeated = {k: v[start:stop].repeat_interleave(n, dim=0) if _per_example(v, size) else v
                    for k, v in inputs.items()}
        rows = (stop - start) * n
        logits = [model(**_rows(repeated, lo, min(lo + max_rows, rows), rows)).logits.float()
                  for lo in range(0, rows, max_rows)]
        out.append(torch.cat(logits).view(stop - start, n, -1).cpu())
    return torch.cat(out)


def _per_example(value: Any, size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size


def _rows(inputs: dict[str, Any], lo: int, hi: int, rows: int) -> dict[str, Any]:
    if lo == 0 and hi == rows:
        return inputs
    return {k: v[lo:hi] if _per_example(v, rows) else v for k, v in inputs.items()}


# --- abstention ----------------------------------------------------------------------------------------------------


def abstained(probabilities: np.ndarray, min_confidence: float) -> np.ndarray:
    """[examples] bool: whether each row's top probability is below `min_confidence`."""
    check_min_confidence(min_confidence)
    probabilities = np.asarray(probabilities)
    if probabilities.size == 0:
        return np.zeros(len(probabilities), dtype=bool)
    return probabilities.max(axis=-1) < min_confidence


def abstain_rows(rows: list[dict[str, Any]], min_confidence: float) -> list[dict[str, Any]]:
    """Prediction rows (with `probabilities` by class name) whose top probability is below `min_confidence` get the
    label `abstain`; `score` and `probabilities` stay, so what the model would have said is still there."""
    check_min_confidence(min_confidence)
    if rows and ABSTAIN in rows[0]["probabilities"]:
        raise GraftError(f"--min-confidence: the model has a class named {ABSTAIN!r}, which abstentions would be "
                         f"mistaken for; rename that class in the data and train again, or leave --min-confidence out")
    low = abstained(np.array([list(r["probabilities"].values()) for r in rows]), min_confidence)
    return [{**r, "label": ABSTAIN} if below else r for r, below in zip(rows, low, strict=True)]


def check_min_confidence(min_confidence: float) -> None:
    if (isinstance(min_confidence, bool) or not isinstance(min_confidence, int | float)
            or not 0 <= min_confidence <= 1):
        raise GraftError(f"--min-confidence {min_confidence!r}: give a probability from 0 to 1 (e.g. 0.8: answer only "
                         f"when the top class has at least 80%)")
