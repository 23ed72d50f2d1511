"""Advice for a causal language model, which has no new head to probe: what the model already knows of the answers
(its loss on the validation responses before any training, against ln V for knowing nothing), how much there is to
learn from (response tokens), and what full fine-tuning, LoRA and prompt tuning each need in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graft.setup import Setup


def advise_language_model(run: Setup, facts: dict[str, Any], sample: int, say: Callable[[str], None]
                          ) -> dict[str, Any]:
    from graft.advise.advisor import available_memory
    from graft.advise.features import sample_loader
    from graft.advise.recommend import LMSignals, mb, recommend_lm
    from graft.pipeline import make_accelerator
    from graft.tasks.chat import evaluate_lm

    recipe = run.recipe
    started = time.perf_counter()
    accelerator = make_accelerator(recipe)
    loader = sample_loader(run.val_loader, max(sample // 2, 10), recipe.train.seed, recipe.train.eval_batch)
    n = len(loader.dataset)
    before = evaluate_lm(accelerator, accelerator.prepare(run.loaded.model), accelerator.prepare(loader))
    evaluation_s = time.perf_counter() - started
    say(f"before training: loss {before['loss']:.3f} a response token (perplexity {before['perplexity']:.3g}) on "
        f"{n} validation examples, in {evaluation_s:.1f} s")
    memory = memory_needs(run)
    signals = LMSignals(examples=len(run.splits.train), response_tokens=facts["lengths"]["total_response_tokens"],
                        loss=before["loss"], vocabulary=_vocabulary(run), memory=memory,
                        available=available_memory(), groups=sum(not g.is_head for g in run.plan.groups))
    advice = recommend_lm(signals)
    return {"sample": {"validation": n}, "before_training": before,
            "memory_mb": {name: round(mb(b), 1) for name, b in memory.items()},
            "signals": asdict(signals), "recommendation": advice.record(),
            "timings": {"evaluation_s": round(evaluation_s, 3)}}


def memory_needs(run: Setup) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state for full fine-tuning, LoRA (as the recipe's strategy.lora
    configures it, counted on the model itself, which advise no longer needs) and prompt tuning."""
    from graft.advise.advisor import training_bytes
    from graft.recipe import StrategySpec
    from graft.strategy.peft import attach

    recipe, loaded = run.recipe, run.loaded
    total = sum(p.numel() for p in loaded.root.parameters())
    prompt = recipe.strategy.prompt.num_virtual_tokens * loaded.model.get_input_embeddings().embedding_dim
    attached = attach(loaded.model, loaded.root, loaded.head_modules,
                      StrategySpec(name="lora", lora=recipe.strategy.lora), recipe.task, recipe.model.groups)
    lora = sum(p.numel() for n, p in attached.root.named_parameters() if n in attached.trains)
    return {"full": training_bytes(total, total), "lora": training_bytes(total, lora),
            "prompt": training_bytes(total, prompt)}


def _vocabulary(run: Setup) -> int:
    return int(run.loaded.model.get_input_embeddings().num_embeddings)
