"""The recipe: one typed tree holding every default graft uses (`schema`), read from YAML with command-line
overrides (`load`). Every error is one line naming the field, the bad value and what is allowed. No torch here: a
recipe loads in milliseconds.
"""

from graft.recipe.load import load_recipe, validate_recipe
from graft.recipe.schema import (
    DISCRIMINATIVE,
    PEFT_METHODS,
    STRATEGIES,
    AdapterSpec,
    AugmentSpec,
    CheckpointSpec,
    DataSpec,
    EvalSpec,
    HeadSpec,
    IA3Spec,
    LoraSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    OutputSpec,
    PromptSpec,
    Recipe,
    RetentionSpec,
    ScheduleSpec,
    StrategySpec,
    TrainSpec,
)

__all__ = ["DISCRIMINATIVE", "PEFT_METHODS", "STRATEGIES", "AdapterSpec", "AugmentSpec", "CheckpointSpec", "DataSpec",
           "EvalSpec", "HeadSpec", "IA3Spec", "LoraSpec", "LossSpec", "ModelSpec", "OptimSpec", "OutputSpec",
           "PromptSpec", "Recipe", "RetentionSpec", "ScheduleSpec", "StrategySpec", "TrainSpec", "load_recipe",
           "validate_recipe"]
