"""The final model of a run, in the format its ecosystem loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.files import writing

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from graft.models.build import LoadedModel
    from graft.recipe import Recipe
    from graft.strategy.peft import Attached


def save_final_model(accelerator: Accelerator, model: nn.Module, loaded: LoadedModel, recipe: Recipe,
                     labels: list[str], path: Path, attached: Attached | None = None) -> None:
    """save_pretrained with tokenizer / image processor and label names, or for a plain module safetensors plus how
    to rebuild it; a PEFT run saves what it trained (peft's adapter format where peft made it) and how to rebuild
    the base. Written beside, then renamed into place. Every process must call this."""
    from graft.models.plain import PlainClassifier, save_plain

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        with writing(path) as tmp:
            if attached is not None:
                from graft.strategy.peft import save_peft_run

                save_peft_run(tmp, attached, recipe, labels, loaded.input)
            elif isinstance(unwrapped, PlainClassifier):
                save_plain(unwrapped, state_dict, tmp,
                           plain_meta(recipe, labels, unwrapped.head_path, loaded.head_in_shape, loaded.input))
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict)
            if loaded.processor is not None:
                loaded.processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def plain_meta(recipe: Recipe, labels: list[str], head_path: str, head_in_shape: list[int],
               image_input: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild a plain module: its factory, kwargs, head and input."""
    spec = recipe.model
    return {"factory": spec.name, "kwargs": spec.kwargs, "head_path": head_path, "head": spec.head.model_dump(),
            "head_in_shape": head_in_shape, "labels": labels, "input": image_input}
