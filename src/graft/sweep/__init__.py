"""`graft sweep`: Optuna over any recipe field. Every trial is a normal run directory trained on the same written
splits (as `graft compare` writes them); trials are ranked by the recipe's validation metric (eval.metric), a pruner
hears each of a trial's evaluations and may end it early, and the test split is evaluated once, for the best trial.

    OUTPUT/data/          the splits, written once; every trial reads them
    OUTPUT/sweep.db       the Optuna study (SQLite): the same command again resumes it
    OUTPUT/baseline/      the recipe as it is, on the same splits: what a trial must beat to be the best
    OUTPUT/trials/0007/   trial 7's run directory
    OUTPUT/sweep.json     every trial (parameters, state, value, run dir, duration), the best, its test metrics
    OUTPUT/sweep.html     trials over time, the best, parameter importances, parallel coordinates

Trial slot i (i trials ended before it) is sampled with seed train.seed + i, so the same seed gives the same trials,
and a sweep killed and resumed gives the very trials of one that was not. A trial left running by a killed sweep is
marked failed when the sweep resumes and does not count: its slot is sampled again (from the same seed and history,
so with the same parameters). A trial that fails on its own (it diverged, its values were refused) counts, with its
error: a space whose every trial fails ends, it does not loop.

The baseline (the recipe's own values, its `optim.lr: auto` measured as a run measures it) trains first, outside the
study, and is the best unless a trial beats its validation value: a sweep never hands back a worse model than the
recipe it started from, on the data it may look at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.evaluation.metrics import scalars
from graft.files import write_json
from graft.recipe import Recipe, load_recipe
from graft.sweep.space import read_space, set_field, space_record

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from graft.training.loop import Event

DB_FILE = "sweep.db"
SWEEP_FILE = "sweep.json"
PAGE_FILE = "sweep.html"
TRIALS_DIR = "trials"
BASELINE_DIR = "baseline"
STUDY_NAME = "graft-sweep"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


def sweep(recipe: Recipe | str | Path | dict[str, Any], space: str | Path | dict[str, Any], trials: int, *,
          output: str | Path | None = None, sampler: str = "tpe",
          pruner: str | optuna.pruners.BasePruner = "median", baseline: bool = True,
          overrides: list[str] | tuple[str, ...] = (), say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run trials until `trials` have ended (those of an earlier, interrupted run of this sweep count), test the best
    once, write OUTPUT/sweep.json and OUTPUT/sweep.html (OUTPUT: `output`, default the recipe's output.dir) and
    return the summary. `sampler`: tpe or random, seeded by train.seed; `pruner`: median, hyperband, none, or an
    Optuna pruner; `baseline`: train the recipe as it is first, the best unless a trial beats it."""
    from graft.compare import write_splits
    from graft.rundir import RunLock

    say = say or (lambda line: None)
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise GraftError(f"--trials {trials}: give a whole number of at least 1")
    if sampler not in SAMPLERS:
        raise GraftError(f"--sampler {sampler}: choose {' or '.join(SAMPLERS)}")
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise GraftError(f"--pruner {pruner}: choose {', '.join(PRUNERS)}")
    distributions = read_space(space, base)
    out = Path(output) if output is not None else base.output.dir
    identity = {"recipe": _plain(base.dump()), "space": space_record(distributions), "sampler": sampler}
    check_folder(out, identity)  # before anything is written
    with RunLock(out):
        data = write_splits(base, out / "data")
        study = _open_study(out, base, identity, pruner)
        _fail_leftovers(study, say)
        start = run_baseline(base, data, out, say) if baseline else None
        while (ended := len(counted(study))) < trials:
            run_trial(study, base, data, distributions, out, sampler, ended, say)
        result = summarise(study, base, distributions, out, sampler, trials, start)
        write_json(out / SWEEP_FILE, result)
        from graft.report.sweep_page import write_sweep_page

        write_sweep_page(out)
    if result["best"] is None:
        raise GraftError(f"graft sweep: no trial completed ({_states(result)}); {_first_problem(result)}")
    return result


def _plain(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree as JSON reads it back (tuples as lists, paths as text): what a stored one compares equal to."""
    return json.loads(json.dumps(tree, default=str))


def check_folder(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that is not this sweep's: a file, a run directory, trials without a study, or a study of
    another recipe, space or sampler."""
    from graft.rundir import is_run_dir

    where = f"the sweep's folder {out} (--output; default the recipe's output.dir)"
    if out.exists() and not out.is_dir():
        raise GraftError(f"{where} is a file; pass --output with a folder for the sweep")
    if is_run_dir(out):
        raise GraftError(f"{where} holds a run; pass --output with another folder for the sweep")
    fresh = f"to start fresh, choose another --output or delete {out}"
    db = out / DB_FILE
    if not db.is_file():
        if (out / TRIALS_DIR).is_dir() and any((out / TRIALS_DIR).iterdir()):
            raise GraftError(f"{out} holds trials but no {DB_FILE} (the study they belong to); {fresh}")
        return
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored = optuna.load_study(study_name=STUDY_NAME, storage=_storage(out)).user_attrs
    except (KeyError, ValueError, RuntimeError, SQLAlchemyError) as e:  # another study, or no study at all
        raise GraftError(f"{db}: not a graft sweep's study ({str(e).splitlines()[0]}); {fresh}") from None
    changed = [k for k in identity if stored.get(k) != identity[k]]
    if changed:
        raise GraftError(f"{db} holds another sweep (its {' and '.join(changed)} differ from this one's): rerun it "
                         f"with the same recipe, space and sampler to resume it; {fresh}")


def _storage(out: Path) -> str:
    return f"sqlite:///{(out / DB_FILE).absolute()}"


def _open_study(out: Path, base: Recipe, identity: dict[str, Any], pruner: Any) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # graft says what happens itself
    direction = "minimize" if base.eval.resolved_mode == "min" else "maximize"
    study = optuna.create_study(storage=_storage(out), study_name=STUDY_NAME, direction=direction,
                                load_if_exists=True, pruner=_pruner(pruner))
    if not study.user_attrs:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    return study


def _pruner(pruner: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """median: stop a trial behind the median of earlier trials at the same evaluation (after 5 trials);
    hyperband: successive halving over brackets of budgets (the trial's evaluations); none: never stop one."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
            "none": optuna.pruners.NopPruner}[pruner]()


def _fail_leftovers(study: optuna.Study, say: Callable[[str], None]) -> None:
    """Trials a killed sweep left running: failed, not counted; their slots are run again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        say(f"sweep: trial {trial.number} was left running by an interrupted sweep: marked failed, its slot runs again")


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ended: completed, pruned, or failed on their own (not those an interruption cut short)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def trial_recipe(base: Recipe, data: dict[str, Any], params: dict[str, Any], run_dir: Path) -> Recipe:
    """The base recipe on the written splits, in the trial's run directory, with the trial's values."""
    tree = base.dump()
    tree["data"].update(data)
    tree["output"]["dir"] = str(run_dir)
    for field, value in params.items():
        set_field(tree, field, value)
    return load_recipe(tree)


class Reporter:
    """A training hook: hands each validation evaluation of the trial's metric to its Optuna trial (the step is the
    evaluation's ordinal: the epoch, when evaluating once an epoch) and ends the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric, self.evaluations = trial, metric, 0

    def __call__(self, event: Event) -> None:
        from graft.training.loop import StopRun

        value = event.values.get(self.metric)
        if event.kind != "eval" or event.values.get("split") != "validation" or value is None:
            return
        self.evaluations += 1
        self.trial.report(value, self.evaluations)
        if self.trial.should_prune():
            raise StopRun("pruned", f"pruned by the sweep at evaluation {self.evaluations}: validation {self.metric} "
                                    f"{value:.4f} is behind the other trials' at that point")


def run_baseline(base: Recipe, data: dict[str, Any], out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The recipe as it is on the sweep's splits (no test), or its finished run when the sweep resumes: its
    validation value, run directory and time, or why it has none."""
    from graft.pipeline import train
    from graft.rundir import reuse_completed

    recipe, metric = trial_recipe(base, data, {}, out / BASELINE_DIR), base.eval.metric
    done = reuse_completed(recipe)
    if done is None:
        say(f"sweep: the recipe as it is (baseline) -> {recipe.output.dir}")
    try:
        record = done or train(recipe, overwrite=True, test=False)
    except Exception as e:  # a recipe that cannot train: the trials may still
        error = one_line(e)
        say(f"sweep: the baseline failed: {error}")
        return {"run_dir": str(recipe.output.dir), "value": None, "error": error}
    value = (record["metrics"].get("validation") or {}).get(metric)
    if done is None and value is not None:
        say(f"sweep: baseline: validation {metric} {value:.4f}")
    drop_checkpoints(recipe.output.dir)
    return {"run_dir": str(recipe.output.dir), "value": value, "duration_s": record["timings"]["total_s"],
            "lr": (record.get("optim") or {}).get("lr")}


def run_trial(study: optuna.Study, base: Recipe, data: dict[str, Any], space: dict[str, BaseDistribution],
              out: Path, sampler: str, slot: int, say: Callable[[str], None]) -> optuna.trial.FrozenTrial:
    """Sample slot `slot`'s parameters, train its run (no test), tell the study how it ended."""
    from optuna.trial import TrialState

    from graft.pipeline import train
    from graft.training.loop import StopRun

    study.sampler = make_sampler(sampler, base.train.seed + slot)
    trial = study.ask(space)
    run_dir = out / TRIALS_DIR / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    say(f"sweep: trial {trial.number} ({_params(trial.params)}) -> {run_dir}")
    metric = base.eval.metric
    try:
        record = train(trial_recipe(base, data, trial.params, run_dir), hooks=[Reporter(trial, metric)], test=False)
        value = (record["metrics"].get("validation") or {}).get(metric)
        if value is None:
            raise GraftError(f"the run has no validation {metric}")
    except StopRun as stopped:
        trial.set_user_attr("reason", str(stopped))
        say(f"sweep: trial {trial.number} {stopped}")
        return study.tell(trial, state=TrialState.PRUNED)
    except Exception as e:  # the trial failed (diverged, a value refused): recorded, and the sweep goes on
        trial.set_user_attr("error", one_line(e))
        say(f"sweep: trial {trial.number} failed: {trial.user_attrs['error']}")
        return study.tell(trial, state=TrialState.FAIL)
    except BaseException:  # interrupted: failed, not counted; the resumed sweep runs its slot again
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        drop_checkpoints(run_dir)
    say(f"sweep: trial {trial.number}: validation {metric} {value:.4f}")
    return study.tell(trial, value)


def one_line(error: Exception) -> str:
    """What a failed run said, on one line (its type when it said nothing)."""
    return " ".join(str(error).split()) or type(error).__name__


def drop_checkpoints(run_dir: Path) -> None:
    """An ended run's resumable checkpoints go (about 0.35 GB for MiniLM): nothing resumes a trial that ended,
    a killed one is run again from its start, and the best is tested from its saved model."""
    import shutil

    from graft.rundir import CKPT_DIR

    shutil.rmtree(run_dir / CKPT_DIR, ignore_errors=True)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summarise(study: optuna.Study, base: Recipe, space: dict[str, BaseDistribution], out: Path, sampler: str,
              asked: int, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every trial, the best (the baseline unless a trial beats it; tested once here, if it was not yet), the
    parameters' importances."""
    from optuna.trial import TrialState

    from graft.trained import test_run

    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    chosen = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        top = study.best_trial
        chosen = {"number": top.number, "baseline": False, "params": top.params, "value": top.value,
                  "run_dir": top.user_attrs["run_dir"]}
    if baseline is not None and baseline["value"] is not None and (chosen is None or not _beats(
            chosen["value"], baseline["value"], study.direction.name.lower())):
        chosen = {"number": None, "baseline": True, "params": {}, "value": baseline["value"],
                  "run_dir": baseline["run_dir"]}
    best = None
    if chosen is not None:
        best = {**chosen, "test": scalars(test_run(chosen["run_dir"])["metrics"]["test"])}
    importances, why = param_importances(study, list(space), base.train.seed)
    return {"recipe": base.dump(), "space": space_record(space), "metric": base.eval.metric,
            "direction": study.direction.name.lower(), "sampler": sampler, "seed": base.train.seed,
            "pruner": type(study.pruner).__name__, "trials_asked": asked, "folder": str(out), "trials": trials,
            "baseline": baseline, "best": best, "importances": importances, "importances_why": why}


def _beats(value: float, other: float, direction: str) -> bool:
    return value < other if direction == "minimize" else value > other


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    from optuna.trial import TrialState

    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting"}.get(trial.state, "failed" if "error" in trial.user_attrs else "interrupted")
    row = {"number": trial.number, "params": trial.params, "state": state,
           "value": trial.value if trial.state == TrialState.COMPLETE else None,
           "evaluations": [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
           "run_dir": trial.user_attrs.get("run_dir"),
           "duration_s": round(trial.duration.total_seconds(), 3) if trial.duration is not None else None}
    for key in ("reason", "error"):
        if key in trial.user_attrs:
            row[key] = trial.user_attrs[key]
    return row


def param_importances(study: optuna.Study, fields: list[str], seed: int) -> tuple[dict[str, float] | None, str | None]:
    """Each varying parameter's share of the objective's variance over the complete trials (fANOVA, seeded), or
    why there is none."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"{len(complete)} complete trial{'s' if len(complete) != 1 else ''}: importances need two or more"
    varying = [f for f in fields if len({json.dumps(t.params[f]) for t in complete}) > 1]
    if not varying:
        return None, "no parameter took two values among the complete trials"
    if len({t.value for t in complete}) == 1:
        return None, f"every complete trial scored the same ({complete[0].value:.4f}): nothing to attribute"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
    return {k: round(v, 4) for k, v in found.items()}, None


def _states(result: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for row in result["trials"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _first_problem(result: dict[str, Any]) -> str:
    failed = next((r for r in result["trials"] if r.get("error")), None)
    if failed is not None:
        return f"trial {failed['number']} failed: {failed['error']}"
    return "see sweep.json"


def format_trials(result: dict[str, Any], top: int = 10) -> str:
    """The best trials as a plain-text table, then the best with its test metrics."""
    metric, sign = result["metric"], (1.0 if result["direction"] == "minimize" else -1.0)
    complete = sorted((r for r in result["trials"] if r["state"] == "complete"), key=lambda r: sign * r["value"])
    fields = list(result["space"])
    cells = [[str(r["number"]), f"{r['value']:.4f}", *(_value(r["params"].get(f)) for f in fields)]
             for r in complete[:top]]
    header = ["trial", f"val {metric}", *fields]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"{len(result['trials'])} trials: {_states(result)}")
    baseline = result.get("baseline")
    if baseline is not None:
        lines.append("baseline (the recipe as it is): " + (f"validation {metric} {baseline['value']:.4f}"
                                                              if baseline["value"] is not None else
                                                              f"failed: {baseline.get('error')}"))
    best = result["best"]
    if best is not None:
        test = best["test"]
        shown = "  ".join(f"{k} {test[k]:.4f}" for k in dict.fromkeys(("accuracy", "f1_macro", metric))
                          if test.get(k) is not None)
        lines.append(f"best: {describe_best(best)}, validation {metric} {best['value']:.4f}; test (evaluated once, "
                     f"for this run): {shown}")
    return "\n".join(lines)


def describe_best(best: dict[str, Any]) -> str:
    """`trial 7 (optim.lr=...)`, or the baseline's words when no trial beat the recipe as it is."""
    if best.get("baseline"):
        return "the baseline (no trial beat the recipe as it is on validation)"
    return f"trial {best['number']} ({_params(best['params'])})"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
