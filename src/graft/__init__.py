"""graft: fine-tune pretrained networks on your own data, with transfer learning done right.

The Python API mirrors the CLI: `graft.train(recipe)` returns the run record, `graft.evaluate(run_dir)` the
metrics, `graft.predict(run_dir, source)` the predictions (for a file, or for inputs in a list),
`graft.export(run_dir, output, merge=True)` a standalone model, `graft.advise(recipe)` a recommended strategy
before any training, `graft.inspect(recipe)` the data doctor's report, `graft.sweep(recipe, space, trials)` the best
settings an Optuna search over recipe fields finds. `graft.Predictor(run_dir)` loads a run once and predicts on
texts, images or prompts held in memory.
"""

from graft.advise import advise
from graft.compare import compare
from graft.crossval import cross_validate
from graft.doctor import inspect
from graft.errors import GraftError
from graft.pipeline import train
from graft.recipe import Recipe, load_recipe
from graft.setup import Setup, setup
from graft.sweep import sweep
from graft.trained import Predictor, predict
from graft.trained import evaluate_run as evaluate
from graft.trained import export_run as export

__all__ = ["GraftError", "Predictor", "Recipe", "Setup", "advise", "compare", "cross_validate", "evaluate", "export",
           "inspect", "load_recipe", "predict", "setup", "sweep", "train"]
