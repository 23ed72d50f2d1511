"""k-fold cross-validation: K normal runs on folds of data.train (stratified by class where examples have one), and
their mean ± std.

Each fold is the test split once; the other folds train (validation carved from them, or data.validation when
given). Folds are written as files under OUTPUT/folds/ and each run is OUTPUT/fold-N, a normal run directory, so
an interrupted cross-validation resumes: folds that completed with the same recipe are not trained again.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.errors import GraftError
from graft.evaluation.metrics import SCALAR_METRICS
from graft.files import write_json
from graft.recipe import Recipe
from graft.rundir import RECORD_FILE, occupied, reuse_completed
from graft.tasks import get_task


def cross_validate(recipe: Recipe | str | Path | dict[str, Any], k: int, *, overrides: list[str] | tuple = (),
                   overwrite: bool = False, hooks: list | None = None,
                   train: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train `recipe` on `k` folds (stratified by label for single-label tasks) with `train`, by default
    graft.train; write OUTPUT/run.json and OUTPUT/report.html with mean ± std over the folds, and return that
    summary."""
    from graft.recipe import load_recipe

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if train is None:
        from graft.pipeline import train
    if k < 2:
        raise GraftError(f"--cv {k}: cross-validation needs at least 2 folds")
    task = get_task(recipe.task)
    if recipe.data.test is not None:
        raise GraftError("--cv: each fold is the test split once, so data.test must not be set; remove it (or "
                         "train without --cv to use it)")
    out = recipe.output.dir
    if occupied(out) and not (out / "folds").is_dir() and not overwrite:
        raise GraftError(f"output.dir {out} already holds files that are not a cross-validation; choose another "
                         f"output.dir or pass --overwrite")
    examples = task.read_examples(recipe)
    groups = task.fold_groups(examples)
    folds = (_stratified_folds(groups, k, recipe.train.seed, recipe.data.train) if groups is not None else
             _shuffled_folds(len(examples), k, recipe.train.seed, recipe.data.train))
    records = []
    for i, test_rows in enumerate(folds):
        held_out = set(test_rows)
        files = out / "folds" / f"fold-{i}"
        files.mkdir(parents=True, exist_ok=True)
        fold = recipe.model_copy(deep=True)
        fold.data.train = task.write_examples(files, "train", [examples[j] for j in range(len(examples))
                                                               if j not in held_out], recipe)
        fold.data.test = task.write_examples(files, "test", [examples[j] for j in test_rows], recipe)
        for field, value in task.written_fields(recipe).items():
            setattr(fold.data, field, value)
        fold.output.dir = out / f"fold-{i}"
        records.append(_run_fold(fold, train, overwrite, hooks))
    summary = _summary(recipe, k, records)
    write_json(out / RECORD_FILE, summary)
    from graft.report import write_report

    write_report(out)
    return summary


def _run_fold(fold: Recipe, train: Callable[..., dict[str, Any]], overwrite: bool,
              hooks: list | None) -> dict[str, Any]:
    done = None if overwrite else reuse_completed(fold)
    return done or train(fold, overwrite=occupied(fold.output.dir), hooks=hooks)


def _stratified_folds(labels: list[str], k: int, seed: int, source: Path) -> list[list[int]]:
    from collections import Counter

    from sklearn.model_selection import StratifiedKFold

    from graft.data.checks import plural

    small = [(label, n) for label, n in Counter(labels).items() if n < k]
    if small:
        label, n = small[0]
        raise GraftError(f"{source}: class {label!r} has {plural(n, 'example')}; --cv {k} needs at least {k} per "
                         f"class (fewer folds, or more examples)")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(test.tolist()) for _, test in splitter.split(labels, labels)]



def _shuffled_folds(n: int, k: int, seed: int, source: Path) -> list[list[int]]:
    """k folds of a seeded shuffle, for examples with no class to stratify by."""
    from sklearn.model_selection import KFold

    if n < k:
        raise GraftError(f"{source}: {n} examples; --cv {k} needs at least {k} (fewer folds, or more examples)")
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(test.tolist()) for _, test in splitter.split(range(n))]


def _summary(recipe: Recipe, k: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    per_fold = [{name: r["metrics"]["test"].get(name) for name in SCALAR_METRICS} for r in records]
    mean, std = {}, {}
    for name in SCALAR_METRICS:
        values = [f[name] for f in per_fold if f[name] is not None]
        if len(values) == k:
            mean[name] = statistics.fmean(values)
            std[name] = statistics.stdev(values)
    return {
        "status": "completed",
        "recipe": recipe.dump(),
        "cv": {"k": k, "folds": [{"fold": i, "dir": str(r["recipe"]["output"]["dir"]), "test": f,
                                  "train_s": r["timings"]["train_s"]} for i, (r, f) in enumerate(zip(records, per_fold,
                                                                                                    strict=True))],
               "mean": mean, "std": std},
        "data": {"labels": records[0]["data"]["labels"]},
        "metrics": {"test": mean},
        "params": records[0]["params"],
        "timings": {"train_s": sum(r["timings"]["train_s"] for r in records)},
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
    }
