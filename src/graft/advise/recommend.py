"""The recommendation, as pure functions of a few measured signals: the four quadrants of the transfer-learning
rule of thumb (little or much data × a similar or a different domain), refined by how much of the task the frozen
features already solve, and for language models by what the model already knows of the answers and what fits in
memory. Each answer names its strategy, the recipe fragment that uses it, the quadrant, the reasons and a runner-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MUCH_DATA = 1000
"""Examples of the smallest class from which a classifier has "much" data: every layer is then fine-tuned, whatever
the probe; below it the probe's strength decides between the head alone and discriminative LRs. A judgement call
above what graft measured as "little": the CIFAR ResNet-20 with 85-425 images a class (its probe tied fine-tuning)
and MiniLM with 850 sentences a class (fine-tuning beat its weak probe by 7 points)."""
STRONG_PROBE = 0.75
"""The share of the majority baseline's errors a linear probe on frozen features must remove for the features to
count as solving the task already (advise measured 0.95 and 0.96 for the CIFAR ResNet-20's features on animal or
vehicle and on the vehicles, where the probe ties fine-tuning; 0.47 for MiniLM's on rt-polarity, where it does not)."""
LM_MUCH_TOKENS = 500_000
"""Response tokens in the training data from which a language model has "much" data to fine-tune every weight on."""
LM_KNOWS = 0.5
"""How far the pretrained model's loss on the responses is from knowing nothing (uniform over the vocabulary, ln V)
towards perfect, from which its pretraining counts as similar to the task."""
MEMORY_SHARE = 0.8
"""A method fits when its weights, gradients and optimiser state take at most this share of the device's memory
(activations need the rest)."""
HEAVY = ("full", "discriminative", "scratch", "freeze")
"""Strategies that train whole layers of the backbone: a full fine-tune's memory, give or take the frozen part."""


@dataclass(frozen=True)
class Signals:
    """What a classifier's recommendation reads."""

    per_class: int
    """Training examples of the smallest class."""
    probe: float
    """Validation accuracy of the best linear probe on the pretrained features the head can read."""
    random_probe: float
    """The same on a random initialisation of the same architecture."""
    baseline: float
    """Validation accuracy of always answering the most frequent class."""
    n_validation: int
    """Examples the probes were scored on."""
    groups: int
    """Backbone layer groups."""
    transfer_depth: int = 1
    """Backbone groups, from the input, whose pretrained features beat random ones: the early layers worth keeping."""
    pooling: str | None = None
    """Text: the pooling the best probe read, when the recipe's own reads another."""
    full_fits: bool = True
    """Whether a full fine-tune's weights, gradients and optimiser state fit in the device's memory."""


@dataclass
class Advice:
    strategy: str
    fragment: dict[str, Any]
    quadrant: str
    reasons: list[str]
    runner_up: str
    runner_up_fragment: dict[str, Any]
    runner_up_why: str
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "fragment": self.fragment, "quadrant": self.quadrant,
                "reasons": self.reasons, "warnings": self.warnings,
                "runner_up": {"strategy": self.runner_up, "fragment": self.runner_up_fragment,
                              "why": self.runner_up_why}}


def standard_error(accuracy: float, n: int) -> float:
    """The sampling error of an accuracy measured on n examples (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-4) / max(n, 1))


def skill(accuracy: float, baseline: float) -> float:
    """The share of the majority baseline's errors that a model removes (1: none left; 0: no better)."""
    return (accuracy - baseline) / max(1 - baseline, 1e-9)


def recommend(s: Signals) -> Advice:
    """The strategy for a classifier, by quadrant, with its reasons and a runner-up."""
    noise = 2 * math.hypot(standard_error(s.probe, s.n_validation), standard_error(s.random_probe, s.n_validation))
    gap = s.probe - s.random_probe
    similar = gap > noise
    much = s.per_class >= MUCH_DATA
    strong = skill(s.probe, s.baseline) >= STRONG_PROBE
    depth = max(1, min(s.transfer_depth, s.groups - 1))  # at least the first group frozen, the last one training
    quadrant = f"{'much' if much else 'little'} data, {'similar' if similar else 'different'} domain"
    size = (f"{s.per_class:,} examples in the smallest class ({'at least' if much else 'under'} {MUCH_DATA:,}: "
            f"{'much' if much else 'little'} data)")
    domain = (f"a linear probe on the pretrained features reaches {s.probe:.3f} validation accuracy against "
              f"{s.random_probe:.3f} on the same architecture at random initialisation ({gap:+.3f}; noise "
              f"±{noise:.3f}): " + ("pretraining brings what this task needs" if similar else
                                    "pretraining brings little to this task"))
    probe = (f"the probe removes {skill(s.probe, s.baseline):.0%} of the errors of always answering the most frequent "
             f"class (accuracy {s.baseline:.3f}); from {STRONG_PROBE:.0%} the frozen features count as solving the "
             f"task already")
    warnings = [] if similar else [
        f"negative transfer is possible: random features do about as well as the pretrained ones (probe "
        f"{s.random_probe:.3f} vs {s.probe:.3f}, within noise ±{noise:.3f}); compare with scratch before trusting the "
        f"pretrained model"]
    if similar and strong:
        cell = ("head_only", "full") if not much else ("full", "head_only")
        why = ("the frozen features already separate the classes and there is little data to move the layers with: "
               "train the head alone (fitted exactly, no LR to choose)" if not much else
               "much data and a similar domain: fine-tune every layer; the frozen features are already strong, so "
               "head_only is the cheap runner-up")
    elif similar:
        # With much data too: on MiniLM/rt-polarity sentences held out from every rule, discriminative LRs beat one
        # LR for every layer in 3 of 4 runs (mean +1.5 points; README, "Discriminative learning rates").
        cell = ("discriminative", "full")
        why = ("the features are relevant but leave much of the task unsolved: every layer must move, the top ones "
               "most (discriminative LRs: the bottom group at a tenth of the top's)")
    elif not much:
        cell = ("freeze", "full")
        why = (f"little data and a different domain: keep the early layers frozen and train the rest; "
               f"{s.transfer_depth} of the {s.groups} groups, from the input, have features that beat random ones: "
               f"freeze_groups {depth}")
    else:
        cell = ("scratch", "full")
        why = "much data and a different domain: the pretrained weights bring little; consider training from scratch"
    strategy, runner_up = cell
    if not s.full_fits and strategy in HEAVY:
        strategy, runner_up = "lora", "head_only"
        why += "; but a full fine-tune does not fit in memory, so LoRA trains low-rank updates of the frozen weights"
    elif not s.full_fits and runner_up in HEAVY:
        runner_up = "lora"
    return Advice(strategy, fragment(strategy, depth, s.pooling), quadrant, [size, domain, probe, why], runner_up,
                  fragment(runner_up, depth, s.pooling), _runner_up_why(runner_up, strategy), warnings)


def fragment(strategy: str, freeze_groups: int, pooling: str | None = None) -> dict[str, Any]:
    """The recipe fragment for `strategy`: which groups freeze (`freeze`), where the LR comes from (measured, or
    none for the exact probe), the pooling the head reads (text, when not the recipe's)."""
    section: dict[str, Any] = {"name": strategy}
    if strategy == "freeze":
        section["freeze_groups"] = freeze_groups
    if strategy == "head_only":
        section["probe"] = "exact"
    tree: dict[str, Any] = {"strategy": section}
    if strategy != "head_only":
        tree["optim"] = {"lr": "auto"}
    if pooling:
        tree["model"] = {"pooling": pooling}
    return tree


def _runner_up_why(runner_up: str, strategy: str) -> str:
    return {
        "full": "every layer fine-tuned: what the advice would be with more data or a closer domain",
        "head_only": "the frozen features with a new head: nearly free, and strong on these features",
        "discriminative": "every layer fine-tuned, the lower groups at lower LRs (the bottom at a tenth of the top's)",
        "lora": "low-rank updates: most of a fine-tune's gain in a fraction of its memory",
        "prompt": "virtual tokens only: the lightest method, close to LoRA on large models",
    }.get(runner_up, f"the next best after {strategy}")


@dataclass(frozen=True)
class LMSignals:
    """What a language model's recommendation reads."""

    examples: int
    response_tokens: int
    """Tokens in the training responses (what the loss is on)."""
    loss: float
    """The pretrained model's mean loss per response token on validation, before training."""
    vocabulary: int
    memory: dict[str, int]
    """Bytes of weights, gradients and optimiser state for full, lora and prompt."""
    available: int
    """Bytes of memory on the device."""
    groups: int


def knowledge(loss: float, vocabulary: int) -> float:
    """How far a loss per token is from knowing nothing (ln V, uniform guessing) towards perfect (0)."""
    return 1 - loss / math.log(max(vocabulary, 2))


def recommend_lm(s: LMSignals) -> Advice:
    """The strategy for a causal language model: full, LoRA or prompt tuning, by data, knowledge and memory."""
    knows = knowledge(s.loss, s.vocabulary)
    similar = knows >= LM_KNOWS
    much = s.response_tokens >= LM_MUCH_TOKENS
    fits = s.memory["full"] <= MEMORY_SHARE * s.available
    quadrant = f"{'much' if much else 'little'} data, {'similar' if similar else 'different'} domain"
    reasons = [
        f"{s.examples:,} examples, {s.response_tokens:,} response tokens ({'at least' if much else 'under'} "
        f"{LM_MUCH_TOKENS:,}: {'much' if much else 'little'} data)",
        f"before training the model's loss on the responses is {s.loss:.3f} nats a token (perplexity "
        f"{math.exp(min(s.loss, 50)):.3g}) against {math.log(s.vocabulary):.3f} for knowing nothing: it is "
        f"{knows:.0%} of the way to perfect, so its pretraining is {'close to' if similar else 'far from'} this task",
        "memory for weights, gradients and optimiser state: " + ", ".join(
            f"{name} {mb(b):,.0f} MB" for name, b in s.memory.items()) + f" of {mb(s.available):,.0f} MB",
    ]
    warnings = [] if similar else [
        "the model predicts the responses barely better than a uniform guess: pretraining may not help; compare "
        "with scratch"]
    if not fits:
        strategy, runner_up = "lora", "prompt"
        why = "a full fine-tune does not fit in memory: LoRA trains low-rank updates of the frozen weights"
    elif similar and not much:
        strategy, runner_up = "lora", "full"
        why = ("the model already knows much of the answers and the data is little: a low-rank update adapts it "
               "without overwriting what it knows")
    elif similar:
        strategy, runner_up = "full", "lora"
        why = "much data close to what the model knows: fine-tune every weight"
    elif not much:
        strategy, runner_up = "freeze", "full"
        why = "little data far from what the model knows: keep the lower half of the layers, train the rest"
    else:
        strategy, runner_up = "scratch", "full"
        why = "much data far from what the model knows: consider training from scratch"
    reasons.append(why)
    depth = max(1, s.groups // 2)
    return Advice(strategy, fragment(strategy, depth), quadrant, reasons, runner_up, fragment(runner_up, depth),
                  _runner_up_why(runner_up, strategy), warnings)


def mb(n_bytes: float) -> float:
    return n_bytes / 2**20
