"""Compare strategies side by side: the same splits, seeds and budget, one normal run per strategy and seed, one
table, and a verdict that says which won, which tie within noise, and whether transfer helped at all.

A strategy is a preset name (`PRESETS`) or a recipe fragment with a `label` (two learning rates of `full`, say).
The splits are written once under OUTPUT/data/ and every run reads those files, so no strategy or seed can see
other splits. Runs that completed with the same recipe are reused: an interrupted comparison resumes.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.errors import GraftError
from graft.evaluation.metrics import metric_mode
from graft.files import write_json
from graft.recipe import Recipe, load_recipe
from graft.rundir import reuse_completed
from graft.tasks import get_task

PRESETS: dict[str, tuple[dict[str, Any], float]] = {
    # name: (recipe fragment, multiple of the recipe's optim.lr). A recipe's own LR is taken as a full fine-tune's;
    # methods that train few parameters from scratch need larger steps (the multiples we measured to work). With
    # optim.lr: auto (the default) every run measures its own and the multiples are not used.
    "scratch": ({"strategy": {"name": "scratch"}}, 1.0),
    "full": ({"strategy": {"name": "full"}}, 1.0),
    "discriminative": ({"strategy": {"name": "discriminative"}}, 1.0),
    "freeze": ({"strategy": {"name": "freeze", "freeze_groups": 1}}, 1.0),
    "two_phase": ({"strategy": {"name": "two_phase"}}, 1.0),
    "gradual_unfreeze": ({"strategy": {"name": "gradual_unfreeze"}}, 1.0),
    "head_only": ({"strategy": {"name": "head_only"}}, 100.0),
    "lora": ({"strategy": {"name": "lora"}}, 10.0),
    "ia3": ({"strategy": {"name": "ia3"}}, 100.0),
    "prompt": ({"strategy": {"name": "prompt"}}, 200.0),
    "ptuning": ({"strategy": {"name": "ptuning"}}, 100.0),
    "prefix": ({"strategy": {"name": "prefix"}}, 100.0),
    "adapter": ({"strategy": {"name": "adapter"}}, 20.0),
}
COLUMNS = {"accuracy": "test accuracy", "f1_macro": "test macro F1", "f1_micro": "test micro F1",
           "f1": "test entity F1", "rmse": "test RMSE", "r2": "test R²", "perplexity": "test perplexity",
           "token_accuracy": "test token accuracy"}
"""The test metrics the comparison's table shows, where the runs have them, and the ranking metric."""
COMPARE_FILE = "compare.json"
PAGE_FILE = "compare.html"


def compare(recipe: Recipe | str | Path | dict[str, Any], strategies: list[str | dict[str, Any]], *,
            seeds: int = 1, overrides: list[str] | tuple = (), overwrite: bool = False,
            train: Callable[..., dict[str, Any]] | None = None, say: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """Run every strategy (a preset name, or a fragment with a `label`) for `seeds` seeds on the same splits;
    write OUTPUT/compare.json and OUTPUT/compare.html and return the comparison."""
    if train is None:
        from graft.pipeline import train
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if seeds < 1:
        raise GraftError(f"--seeds {seeds}: at least 1")
    variants = [_variant(s) for s in strategies]
    labels = [label for label, _, _ in variants]
    if len(variants) < 2 or len(set(labels)) != len(labels):
        raise GraftError(f"--strategies {','.join(labels)}: give two or more, each once")
    out = base.output.dir
    data = write_splits(base, out / "data")
    seed_list = [base.train.seed + i for i in range(seeds)]
    records: dict[str, list[dict[str, Any]]] = {}
    for label, fragment, lr_mult in variants:
        for seed in seed_list:
            run_recipe = _run_recipe(base, data, fragment, lr_mult, seed, out / _run_name(label, seed, seeds))
            if say:
                say(f"compare: {label} (seed {seed}) -> {run_recipe.output.dir}")
            done = None if overwrite else reuse_completed(run_recipe)
            records.setdefault(label, []).append(done or train(run_recipe, overwrite=True))
    result = summarise(base, records, seed_list)
    write_json(out / COMPARE_FILE, result)
    from graft.report.compare_page import write_compare_page

    write_compare_page(out)
    return result


def _variant(item: str | dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    if isinstance(item, dict):
        fragment = copy.deepcopy(item)
        label = fragment.pop("label", None)
        if not label:
            raise GraftError("a strategy fragment needs a `label` (e.g. {label: full-lr1e-4, optim: {lr: 1e-4}})")
        return str(label), fragment, 1.0
    if item not in PRESETS:
        raise GraftError(f"--strategies: unknown strategy {item!r}; presets: {', '.join(PRESETS)} (or name a "
                         f"fragment from --variants)")
    fragment, lr_mult = PRESETS[item]
    return item, copy.deepcopy(fragment), lr_mult


def _run_name(label: str, seed: int, seeds: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return safe if seeds == 1 else f"{safe}-seed{seed}"


def _run_recipe(base: Recipe, data: dict[str, Any], fragment: dict[str, Any], lr_mult: float, seed: int,
                run_dir: Path) -> Recipe:
    tree = base.dump()
    tree["strategy"] = {}  # the variant says the strategy; the base recipe's own strategy would leak into it
    _merge(tree, fragment)
    if "lr" not in fragment.get("optim", {}) and base.optim.lr != "auto":  # auto: each run measures its own
        tree["optim"]["lr"] = base.optim.lr * lr_mult
    tree["data"].update(data)
    tree["train"]["seed"] = seed
    tree["output"]["dir"] = str(run_dir)
    return load_recipe(tree)


def _merge(tree: dict[str, Any], fragment: dict[str, Any]) -> None:
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def write_splits(recipe: Recipe, folder: Path) -> dict[str, Any]:
    """The recipe's splits, written once as files that every run reads; the data section pointing at them."""
    task = get_task(recipe.task)
    splits = task.load_splits(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(task.write_examples(folder, name, task.rows(getattr(splits, name), splits.labels), recipe))
             for name in ("train", "validation", "test")}
    return {**paths, **task.written_fields(recipe), "split": [0.7, 0.15, 0.15]}


def summarise(base: Recipe, records: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """One row per strategy (means and spreads over seeds), the winner, ties within noise, negative transfer."""
    metric = base.eval.metric
    rows = [_row(label, runs, metric) for label, runs in records.items()]
    verdict = judge(rows, metric)
    level = [verdict["leader"], *verdict["ties"]] if verdict.get("leader") else []
    verdict["verdict"] += forgetting(rows, level)
    return {"recipe": base.dump(), "metric": metric, "seeds": seeds, "strategies": rows, **verdict,
            "records": records}


def _row(label: str, runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    def values(name: str) -> list[float]:
        return [r["metrics"]["test"][name] for r in runs if r["metrics"]["test"].get(name) is not None]

    row: dict[str, Any] = {"label": label, "strategy": runs[0]["recipe"]["strategy"]["name"],
                           "lr": statistics.fmean(lrs) if (lrs := [x for x in map(_lr_used, runs) if x]) else None,
                           "runs": [r["recipe"]["output"]["dir"] for r in runs],
                           "n_test": runs[0]["metrics"]["test"]["n"], "trainable": runs[0]["params"]["trainable"],
                           "total": runs[0]["params"]["total"]}
    for name in dict.fromkeys((*COLUMNS, metric)):
        v = values(name)
        row[name] = statistics.fmean(v) if v else None
        row[f"{name}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
    # A task that measures its test metric's sampling error (a language model's, over examples) says it.
    sampled = values(f"{metric}_se")
    row[f"{metric}_se"] = statistics.fmean(sampled) if sampled else None
    kept = [r["metrics"]["retention"]["ratio"] for r in runs if (r["metrics"].get("retention") or {}).get("ratio")
            is not None]
    row["retention"] = statistics.fmean(kept) if kept else None  # the source task's accuracy after / before
    row["retention_std"] = statistics.stdev(kept) if len(kept) > 1 else 0.0
    # The class a strategy answers for every test example in most of its seeds: no model at all.
    answers = [r["metrics"]["test"].get("one_class") for r in runs]
    row["one_class"] = next((a for a in answers if a), None) if sum(map(bool, answers)) * 2 > len(runs) else None
    row["train_s"] = statistics.fmean(r["timings"]["train_s"] for r in runs)
    # A frozen backbone's outputs are computed once before training (timings.feature_cache_s, outside train_s):
    # that pass is what a head-only strategy pays instead of epochs of backbone passes, so its cost counts it.
    row["feature_cache_s"] = statistics.fmean(r["timings"].get("feature_cache_s") or 0.0 for r in runs)
    row["cost_s"] = row["train_s"] + row["feature_cache_s"]
    row["s_per_epoch"] = statistics.fmean(r["timings"]["train_s_per_epoch"] for r in runs)
    row["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
    row["curves"] = [[{k: h[k] for k in ("epoch", "loss", metric) if k in h} for h in r["metrics"]["history"]
                      if h["split"] == "validation"] for r in runs]
    row["samples"] = runs[0].get("samples") or []  # a language model's answers to the same validation prompts
    return row


def _lr_used(record: dict[str, Any]) -> float | None:
    """The base LR a run trained at: measured (optim.lr: auto) or the recipe's; None for an exact probe."""
    optim = record.get("optim")
    if optim is not None:
        return optim.get("lr")
    lr = record["recipe"]["optim"]["lr"]
    return lr if isinstance(lr, float | int) else None


def standard_error(row: dict[str, Any], metric: str) -> float:
    """Noise in a strategy's score: the spread over seeds and the test set's sampling error (the task's own
    estimate where it makes one; else a binomial approximation, which also serves for F1; for a regression's errors
    and correlations, their normal-theory approximations)."""
    value, n = row[metric], row["n_test"]
    if n < 2:  # one test example says nothing of how the score would vary: no strategy can be told apart on it
        return math.inf
    if row.get(f"{metric}_se") is not None:
        sampling = row[f"{metric}_se"] ** 2
    elif metric in REGRESSION_SAMPLING:
        sampling = REGRESSION_SAMPLING[metric](value, n) ** 2
    else:
        sampling = value * (1 - value) / n if 0 <= value <= 1 else 0.0
    seeds = len(row["runs"])
    return math.sqrt(row[f"{metric}_std"] ** 2 / seeds + sampling)


REGRESSION_SAMPLING = {
    "rmse": lambda v, n: v / math.sqrt(2 * n), "mse": lambda v, n: v * math.sqrt(2 / n),
    "mae": lambda v, n: v * math.sqrt(math.pi / 2 - 1) / math.sqrt(n),
    "pearson": lambda v, n: (1 - v * v) / math.sqrt(n), "spearman": lambda v, n: (1 - v * v) / math.sqrt(n),
    "r2": lambda v, n: 2 * math.sqrt(max(v, 0.0)) * (1 - v) / math.sqrt(n) if v < 1 else 0.0,
}
"""A test metric's sampling standard error for n examples, normal errors assumed."""


def judge(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The winner, the strategies tied with it (within two standard errors), negative transfer, in words too.
    A strategy whose model answers one class for everything is named as such and never ranked."""
    constant = [r for r in rows if r.get("one_class")]
    flags = [f"{r['label']} answers {r['one_class']!r} for every test example: not a model, left out of the "
             f"ranking" for r in constant]
    scored = [r for r in rows if r.get(metric) is not None and not r.get("one_class")]
    if not scored:
        return {"winner": None, "ties": [], "negative_transfer": [], "transfer_helped": None,
                "one_class": [r["label"] for r in constant],
                "verdict": [*flags, f"no strategy has a test {metric} from a real model"]}
    sign = -1.0 if metric_mode(metric) == "min" else 1.0
    best = max(scored, key=lambda r: sign * r[metric])

    def clearly_better(a: dict[str, Any], b: dict[str, Any]) -> bool:
        gap = sign * (a[metric] - b[metric])
        return gap > 2 * math.sqrt(standard_error(a, metric) ** 2 + standard_error(b, metric) ** 2)

    ties = [r["label"] for r in scored if r is not best and not clearly_better(best, r)]
    words = [f"{best['label']} wins on test {metric} ({best[metric]:.4f})" if not ties else
             f"tie on test {metric} between {', '.join([best['label'], *ties])} (within two standard errors; "
             f"{best['label']} is ahead at {best[metric]:.4f})"]
    if min(r["n_test"] for r in scored) < 2:
        words.append("the test split holds one example, which tells no strategies apart: give data.test or more data")
    scratch = next((r for r in scored if r["strategy"] == "scratch"), None)
    negative, helped = [], None
    if scratch is not None:
        pretrained = [r for r in scored if r["strategy"] != "scratch"]
        negative = [r["label"] for r in pretrained if clearly_better(scratch, r)]
        if pretrained:
            top = max(pretrained, key=lambda r: sign * r[metric])
            helped = True if clearly_better(top, scratch) else False if clearly_better(scratch, top) else None
            words.append({True: f"transfer helped: {top['label']} beats training from scratch "
                                f"({top[metric]:.4f} vs {scratch[metric]:.4f})",
                          False: f"transfer did not help: training from scratch beats every pretrained strategy "
                                 f"({scratch[metric]:.4f} vs {top[metric]:.4f} for {top['label']})",
                          None: f"transfer made no clear difference: the best pretrained strategy ({top['label']}, "
                                f"{top[metric]:.4f}) and scratch ({scratch[metric]:.4f}) are within noise"}[helped])
        if negative:
            words.append(f"negative transfer: scratch beats {', '.join(negative)}")
    return {"winner": best["label"] if not ties else None, "leader": best["label"], "ties": ties,
            "negative_transfer": negative, "transfer_helped": helped, "one_class": [r["label"] for r in constant],
            "verdict": [*words, *flags]}


def forgetting(rows: list[dict[str, Any]], level: list[str]) -> list[str]:
    """What each strategy cost the source task, in words: who kept the most and the least of it, and, among the
    strategies level with the leader on the new task, which keeps the most."""
    kept = [r for r in rows if r.get("retention") is not None]
    if not kept:
        return []
    most, least = max(kept, key=lambda r: r["retention"]), min(kept, key=lambda r: r["retention"])
    words = [f"forgetting: {most['label']} keeps the most of the source task (retention {most['retention']:.3f})"
             + (f", {least['label']} the least ({least['retention']:.3f})" if least is not most else "")]
    top = [r for r in kept if r["label"] in level]
    if len(top) > 1:
        best = max(top, key=lambda r: r["retention"])
        words.append(f"of the strategies level on the new task ({', '.join(r['label'] for r in top)}), "
                     f"{best['label']} keeps the most of the source task ({best['retention']:.3f})")
    return words


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a plain-text table, best first."""
    metric = result["metric"]
    sign = -1.0 if metric_mode(metric) == "min" else 1.0
    rows = sorted(result["strategies"], key=lambda r: -sign * (r[metric] if r[metric] is not None else -math.inf))
    spread = len(result["seeds"]) > 1
    width = max(len(r["label"]) + (12 if r.get("one_class") else 0) for r in rows)
    retained = any(r.get("retention") is not None for r in rows)
    shown = columns(result)
    lines = [f"{'strategy':<{width}}" + "".join(f"  {name:>15}" for name in shown)
             + (f"  {'retention':>15}" if retained else "") + f"  {'trainable':>12}  {'cost s':>8}  {'s/epoch':>8}  "
             f"{'peak MB':>8}"]
    for r in rows:
        def cell(name: str, r: dict[str, Any] = r) -> str:
            if r[name] is None:
                return "n/a"
            return f"{r[name]:.4f} ± {r[name + '_std']:.4f}" if spread else f"{r[name]:.4f}"

        label = r["label"] + (" (one class)" if r.get("one_class") else "")
        kept = f"  {cell('retention'):>15}" if retained else ""
        cells = "".join(f"  {cell(name):>15}" for name in shown)
        lines.append(f"{label:<{width}}{cells}{kept}  {r['trainable']:>12,}  "
                     f"{r['cost_s']:>8.1f}  {r['s_per_epoch']:>8.2f}  {r['peak_memory_mb']:>8,.0f}")
    note = ("cost s: training plus the feature-cache pass (the frozen backbone run once over the data); "
            "s/epoch: training only" + ("; retention: the source task's accuracy after / before" if retained else ""))
    return "\n".join([*lines, note, *result["verdict"]])


def columns(result: dict[str, Any]) -> list[str]:
    """The metrics of COLUMNS that some strategy of `result` has (accuracy and macro-F1 for classifiers), then the
    ranking metric when it is not among them (a language model's loss)."""
    shown = [name for name in COLUMNS if any(r.get(name) is not None for r in result["strategies"])]
    return shown if result["metric"] in shown else [*shown, result["metric"]]


def read_comparison(out: Path) -> dict[str, Any]:
    path = out / COMPARE_FILE
    if not path.is_file():
        raise GraftError(f"{out}: no {COMPARE_FILE}; run graft compare first")
    return json.loads(path.read_text())

