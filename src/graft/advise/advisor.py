"""`graft advise`: which strategy fits this data and model, answered before training, in about a minute.

recipe → setup (splits, model and loaders exactly as a run reads them; nothing written) → data facts → frozen
features of every layer group, pretrained and at random initialisation, from one forward pass each over a sample
→ LogME and an exact linear probe per source → the recommendation (`graft.advise.recommend`) → advise.json and
advise.html in a folder of their own. Language models are advised from their loss on the responses instead
(`graft.advise.language`). `verify` then runs `graft compare` on the recommendation, the runner-up and scratch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.recipe import Recipe, load_recipe
from graft.tasks import TASKS, get_task

if TYPE_CHECKING:
    import torch

    from graft.advise.features import Features, Source
    from graft.setup import Setup

ADVISE_FILE = "advise.json"
PAGE_FILE = "advise.html"
SAMPLE = 1000
"""Training examples whose features are scored (validation: half as many). LogME and the probe settle well before
this; the forward passes (pretrained and random) are what a minute pays for."""


def advise(recipe: Recipe | str | Path | dict[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
           output: str | Path | None = None, verify: bool = False, sample: int | None = None,
           say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Recommend a strategy for the recipe's data and model, with its reasons and a runner-up; write advise.json
    and advise.html to `output` (default: `advise-<name>` beside output.dir) and return what advise.json holds.
    `sample`: training examples whose features are scored (default SAMPLE; validation: half as many).
    `verify`: also compare the recommendation, the runner-up and scratch (real runs, under `output`/verify)."""
    from accelerate.utils import set_seed

    from graft.advise.facts import data_facts
    from graft.setup import quiet, setup

    started = time.perf_counter()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    task = get_task(recipe.task)
    refused = task.refused_commands.get("advise")
    if refused:
        raise GraftError(f"graft advise: {recipe.task}: {refused}")
    if task.input_kind is not None and not task.single_label:
        raise GraftError(f"graft advise: its signals (a linear probe's accuracy, LogME over classes) need one class "
                         f"per example, which {recipe.task} lacks: graft compare scratch,head_only,full on it instead")
    sample = SAMPLE if sample is None else sample
    if sample < 10:
        raise GraftError(f"--sample {sample}: at least 10 training examples")
    out = Path(output) if output is not None else default_folder(recipe)
    check_folder(out, recipe)
    say = say or quiet
    set_seed(recipe.train.seed)
    run = setup(reading_recipe(recipe), say)
    setup_s = time.perf_counter() - started
    facts = data_facts(run)
    if run.task.input_kind is None:
        from graft.advise.language import advise_language_model

        body = advise_language_model(run, facts, sample, say)
    else:
        body = advise_classifier(run, facts, sample, say)
    result = {"recipe": recipe.dump(), "task": recipe.task, "model": recipe.model.name, "data": facts, **body}
    result["timings"] = {"setup_s": round(setup_s, 3), **result.pop("timings"),
                         "total_s": round(time.perf_counter() - started, 3)}
    _write(out, result)
    if verify:
        result["verify"] = verify_advice(recipe, result["recommendation"], out, say)
        _write(out, result)
    result["folder"] = str(out)
    return result


def reading_recipe(recipe: Recipe) -> Recipe:
    """The recipe as advise reads it: its data and model, the backbone frozen (no augmentation, the loaders a
    frozen run would build); a language model, which has no head to train alone, as a full fine-tune. The PEFT
    settings stay (a language model's LoRA is sized from them)."""
    tree = recipe.dump()
    kept = {k: v for k, v in tree["strategy"].items() if k in ("lora", "prompt")}
    frozen = "head_only" not in TASKS[recipe.task].refused_strategies
    tree["strategy"] = {"name": "head_only" if frozen else "full", **kept}
    tree["output"]["trackers"] = []
    return load_recipe(tree)


def default_folder(recipe: Recipe) -> Path:
    return recipe.output.dir.parent / f"advise-{recipe.output.dir.name}"


def check_folder(out: Path, recipe: Recipe) -> None:
    """Refuse a folder advise must not write into: a file, the run's own directory, or a folder of other files."""
    if out.exists() and not out.is_dir():
        raise GraftError(f"--output {out}: is a file; name a folder for {ADVISE_FILE} and {PAGE_FILE}")
    if out.resolve() == recipe.output.dir.resolve():
        raise GraftError(f"--output {out}: is the recipe's output.dir, where the run will go; advise writes no run "
                         f"directory: choose another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / ADVISE_FILE).is_file():
        raise GraftError(f"--output {out}: holds files graft advise did not write (no {ADVISE_FILE}); choose another "
                         f"folder or empty it")


def advise_classifier(run: Setup, facts: dict[str, Any], sample: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Frozen-feature evidence per source, pretrained and random, and the recommendation it leads to."""
    import torch
    from threadpoolctl import threadpool_limits

    from graft.advise.features import collect, sample_loader
    from graft.advise.recommend import Signals, recommend
    from graft.models.groups import layer_groups

    recipe = run.recipe
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = _autocast(recipe.train.precision, device)
    batch, seed = recipe.train.eval_batch, recipe.train.seed
    loaders = {"train": sample_loader(run.train_loader, sample, seed, batch),
               "validation": sample_loader(run.val_loader, max(sample // 2, 10), seed, batch)}
    sizes = {name: len(loader.dataset) for name, loader in loaders.items()}
    say(f"features: every layer group over {sizes['train']} train and {sizes['validation']} validation examples")
    pretrained = collect(run.loaded.model, run.root, run.plan.groups, run.loaded.head_modules[0], loaders, device,
                         autocast)
    torch.manual_seed(seed)
    fresh = run.task.load_model(recipe.model, run.splits.labels, recipe.data, True)
    random = collect(fresh.model, fresh.root, layer_groups(fresh.root, fresh.head_modules, recipe.model.groups),
                     fresh.head_modules[0], loaders, device, autocast)
    del fresh
    say(f"features: {len(pretrained.sources)} sources, pretrained in {pretrained.seconds:.1f} s, random "
        f"initialisation in {random.seconds:.1f} s")
    started = time.perf_counter()
    candidates = head_candidates(pretrained.sources, run)
    weights = run.loss_record.get("class_weights")
    # One BLAS thread: on matrices this small (1,000 x 384) threads cost more than they give, and far more on a
    # busy machine (a probe took 0.72 s on 2 threads of a loaded 2-core machine, 0.03 s on one).
    with threadpool_limits(1):
        rows = score_sources(pretrained, random, len(run.splits.labels), {s.name for s in candidates},
                             list(weights.values()) if weights else None)
    scoring_s = time.perf_counter() - started
    by_name = {r["source"]: r for r in rows}
    best = max(candidates, key=lambda s: by_name[s.name]["probe"])
    random_best = max((by_name[s.name]["random"]["probe"] for s in candidates
                       if (by_name[s.name]["random"] or {}).get("probe") is not None), default=0.0)
    labels = pretrained.validation_labels
    baseline = float(torch.bincount(labels).max()) / len(labels)
    backbone = [g for g in run.plan.groups if not g.is_head]
    pooling = _pooling(best, run)
    signals = Signals(per_class=facts["smallest_class"]["n"], probe=by_name[best.name]["probe"],
                      random_probe=random_best, baseline=baseline, n_validation=len(labels), groups=len(backbone),
                      transfer_depth=transfer_depth(rows), pooling=pooling, full_fits=_fits(run))
    advice = recommend(signals)
    return {"sample": sizes, "sources": rows,
            "similarity": {"probe": signals.probe, "random_probe": random_best, "gap": signals.probe - random_best,
                           "baseline": baseline, "best_source": best.name,
                           "logme": max(r["logme"] for r in rows),
                           "random_logme": max((r["random"]["logme"] for r in rows if r["random"]), default=None)},
            "signals": asdict(signals), "recommendation": advice.record(),
            "timings": {"features_s": round(pretrained.seconds, 3), "random_features_s": round(random.seconds, 3),
                        "scoring_s": round(scoring_s, 3)}}


def _autocast(precision: str, device: torch.device) -> torch.dtype | None:
    import torch

    from graft.training.precision import resolve_precision

    used = resolve_precision(precision)
    if used == "bf16":
        return torch.bfloat16
    return torch.float16 if used == "fp16" and device.type == "cuda" else None


def head_candidates(sources: list[Source], run: Setup) -> list[Source]:
    """The sources head_only could train on: what the head reads, and for a text model whose pooling can be chosen
    (model.pooling) the other poolings of its last layer."""
    reads = [s for s in sources if s.reads_head]
    if run.task.input_kind != "text" or run.recipe.model.is_factory or not _has_pooler(run):
        return reads
    tokens = [s for s in sources if s.pooling in ("cls", "mean")]
    last = max((s.depth for s in tokens), default=None)
    return list({s.name: s for s in [*reads, *(s for s in tokens if s.depth == last)]}.values())


def _has_pooler(run: Setup) -> bool:
    return getattr(run.loaded.model.base_model, "pooler", None) is not None


def _pooling(best: Source, run: Setup) -> str | None:
    """model.pooling for the recipe fragment: the best head candidate's, when it is not what the recipe reads."""
    if best.reads_head or run.task.input_kind != "text":
        return None
    return best.pooling


def score_sources(pretrained: Features, random: Features, classes: int, probed: set[str],
                  class_weights: list[float] | None) -> list[dict[str, Any]]:
    """One row per pretrained source: LogME and the exact probe's validation accuracy, and the same source of the
    randomly initialised model (LogME always, the probe for the sources in `probed`)."""
    from graft.advise.logme import logme

    same = {s.name: s for s in random.sources}
    rows = []
    for s in pretrained.sources:
        row: dict[str, Any] = {"source": s.name, "group": s.group, "depth": s.depth, "pooling": s.pooling,
                               "dim": s.dim, "reads_head": s.reads_head,
                               "logme": logme(s.train.numpy(), pretrained.train_labels.numpy()).score,
                               "probe": probe_accuracy(s, pretrained, classes, class_weights), "random": None}
        twin = same.get(s.name)
        if twin is not None:
            row["random"] = {"logme": logme(twin.train.numpy(), random.train_labels.numpy()).score,
                             "probe": probe_accuracy(twin, random, classes, class_weights) if s.name in probed
                             else None}
        rows.append(row)
    return rows


def probe_accuracy(source: Source, features: Features, classes: int, class_weights: list[float] | None) -> float:
    """Validation accuracy of the exact linear probe (graft.training.probe, as head_only fits it) on a source."""
    from torch import nn

    from graft.training.probe import fit_probe

    fit = fit_probe(nn.Linear(source.dim, classes), (source.train, features.train_labels),
                    (source.validation, features.validation_labels), class_weights)
    return next(t["accuracy"] for t in fit.tried if t["l2"] == fit.strength)


def transfer_depth(rows: list[dict[str, Any]]) -> int:
    """How many groups, from the input, have pretrained features whose evidence beats the random ones' (each group
    at its best pooling): the early layers worth keeping when the domain differs."""
    depths = sorted({r["depth"] for r in rows if r["random"]})
    count = 0
    for depth in depths:
        at = [r for r in rows if r["depth"] == depth and r["random"]]
        if max(r["logme"] for r in at) <= max(r["random"]["logme"] for r in at):
            break
        count += 1
    return count


def _fits(run: Setup) -> bool:
    """Whether a full fine-tune's weights, gradients and AdamW state fit the device's memory."""
    from graft.advise.recommend import MEMORY_SHARE

    total = sum(p.numel() for p in run.root.parameters())
    return training_bytes(total, total) <= MEMORY_SHARE * available_memory()


def training_bytes(total: int, trainable: int) -> int:
    """fp32 weights for every parameter; gradients and AdamW's two moments for the trainable ones (activations come
    on top: they grow with batch size and length)."""
    return 4 * total + 12 * trainable


def available_memory() -> int:
    """Bytes of memory where training would run: the GPU's, else the machine's."""
    import os

    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _write(out: Path, result: dict[str, Any]) -> None:
    from graft.files import write_json
    from graft.report.advise_page import write_advise_page

    write_json(out / ADVISE_FILE, result)
    write_advise_page(out)


def verify_advice(recipe: Recipe, recommendation: dict[str, Any], out: Path,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """Run graft compare on the recommendation, the runner-up and scratch (same splits and budget, under
    `out`/verify) and say whether the advice held: the recommendation won or tied with the winner."""
    from graft.compare import compare

    chosen, runner_up = recommendation["strategy"], recommendation["runner_up"]
    strategies: list[str | dict[str, Any]] = [{"label": chosen, **recommendation["fragment"]},
                                              {"label": runner_up["strategy"], **runner_up["fragment"]}]
    if "scratch" not in (chosen, runner_up["strategy"]):
        strategies.append("scratch")
    tree = recipe.dump()
    tree["output"]["dir"] = str(out / "verify")
    result = compare(load_recipe(tree), strategies, say=say)
    metric, leader = result["metric"], result["leader"]
    rows = {r["label"]: r for r in result["strategies"]}
    held = None if leader is None else leader == chosen or chosen in result["ties"]
    mine, best = rows[chosen].get(metric), rows[leader].get(metric) if leader else None
    words = ("no strategy produced a real model, so the advice cannot be judged" if held is None else
             f"the advice held: {chosen} {'won' if leader == chosen else f'tied with {leader}'} on test {metric} "
             f"({mine:.4f})" if held else
             f"the advice did not hold: {leader} beat {chosen} on test {metric} ({best:.4f} vs {mine:.4f})")
    return {"held": held, "metric": metric, "leader": leader, "ties": result["ties"], "recommended": mine,
            "best": best, "words": words, "verdict": result["verdict"],
            "strategies": [{k: r.get(k) for k in ("label", "strategy", *dict.fromkeys(("accuracy", "f1_macro", metric)),
                                                  "cost_s", "trainable")} for r in result["strategies"]],
            "folder": str(out / "verify")}


def format_advice(result: dict[str, Any]) -> str:
    """The advice for the terminal: the evidence table, the data in a line, the recommendation and its reasons."""
    import yaml

    from graft.advise.facts import describe_data, duplicate_lines

    lines = _source_table(result["sources"]) if result.get("sources") else []
    lines += [f"data: {describe_data(result['data'])}"]
    lines += [f"data: {line}" for line in duplicate_lines(result["data"].get("duplicates", {}))]
    if "similarity" in result:
        s = result["similarity"]
        lines.append(f"similarity: the best probe on pretrained features {s['probe']:.3f} ({s['best_source']}), on "
                     f"random ones {s['random_probe']:.3f}; majority baseline {s['baseline']:.3f}")
    rec = result["recommendation"]
    lines.append(f"recommendation: {rec['strategy']} ({rec['quadrant']})")
    lines += [f"  - {reason}" for reason in rec["reasons"]]
    lines.append(f"runner-up: {rec['runner_up']['strategy']} ({rec['runner_up']['why']})")
    fragment = yaml.safe_dump(rec["fragment"], default_flow_style=None, sort_keys=False).strip()
    lines += ["recipe fragment:", *(f"  {line}" for line in fragment.splitlines())]
    lines += [f"warning: {w}" for w in rec["warnings"]]
    if result.get("verify"):
        lines.append(f"verify: {result['verify']['words']}")
    lines.append(f"advised in {result['timings']['total_s']:.1f} s")
    return "\n".join(lines)


def _source_table(rows: list[dict[str, Any]]) -> list[str]:
    width = max(len(r["source"]) for r in rows) + 2
    lines = [f"{'source':<{width}}  {'dim':>5}  {'LogME':>8}  {'random':>8}  {'probe':>6}  {'random':>6}"]

    def cell(value: float | None, digits: int, width: int) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for r in rows:
        random = r["random"] or {}
        name = r["source"] + (" *" if r["reads_head"] else "")
        lines.append(f"{name:<{width}}  {r['dim']:>5}  {cell(r['logme'], 3, 8)}  {cell(random.get('logme'), 3, 8)}  "
                     f"{cell(r['probe'], 3, 6)}  {cell(random.get('probe'), 3, 6)}")
    lines.append("* what the head reads (head_only trains on it); LogME: evidence per example, higher is better; "
                 "probe: validation accuracy of the exact linear probe; random: the same architecture, randomly "
                 "initialised")
    return lines
