"""The `graft` command: each subcommand is a few lines over `graft.pipeline`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from graft.errors import GraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained networks on your own data, with transfer learning done right.")



def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        print(f"graft {version('graft')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="Print graft's version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    """Fine-tune pretrained networks on your own data, with transfer learning done right."""


SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a recipe field, e.g. --set optim.lr=1e-4 (repeatable).", metavar="KEY.PATH=VALUE")]


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML.", metavar="RECIPE.yaml")],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in output.dir from its last "
                                          "checkpoint, exactly where it stopped.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in output.dir (the old "
                                             "one is deleted only once the new run succeeds).")] = False,
    cv: Annotated[int | None, typer.Option("--cv", help="k-fold cross-validation: K runs on stratified folds of "
                                           "data.train, each fold the test split once; mean ± std.",
                                           metavar="K")] = None,
) -> None:
    """Fine-tune as RECIPE says, evaluate on the test split and write the run directory."""
    from graft.pipeline import train as run

    try:
        if cv is not None:
            _print_cv(_cross_validate(recipe, set_ or [], cv, overwrite))
            return
        record = run(recipe, overrides=set_ or [], resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        # Caught here: the CLI framework would turn Ctrl-C into a silent exit.
        print(f"interrupted; {_resume_hint(recipe, set_ or [])}", file=sys.stderr)
        raise typer.Exit(130) from None
    _print_summary(record)


def _resume_hint(recipe: Path, overrides: list[str]) -> str:
    """How to go on after an interrupted run: the same command with --resume (and the same --set flags, which
    made the run what it is), or --overwrite when no checkpoint was saved yet."""
    import shlex

    from graft.recipe import load_recipe
    from graft.rundir import CKPT_DIR
    from graft.training.checkpoint import list_checkpoints

    flags = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    command = f"graft train {shlex.quote(str(recipe))}{flags}"
    try:
        run_dir = load_recipe(recipe, overrides).output.dir
    except GraftError:
        return f"continue from the last checkpoint with `{command} --resume`"
    if list_checkpoints(run_dir / CKPT_DIR):
        return f"continue from the last checkpoint with `{command} --resume`"
    return f"no checkpoint was saved yet; start again with `{command} --overwrite`"


RawOption = Annotated[bool, typer.Option("--raw", help="The model's own probabilities, not scaled by the temperature "
                                        "the run fitted on its validation split.")]


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `graft train`.", metavar="RUN_DIR")],
    data: Annotated[Path | None, typer.Option(help="A labelled file (same columns as the recipe), or for images a "
                                                   "folder of class folders; default: the run's own test split.")
                    ] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON here.")] = None,
    raw: RawOption = False,
) -> None:
    """Metrics of a trained run on a dataset: accuracy, F1, calibration, per-class table, confusion matrix."""
    from graft.files import check_output_file, write_json
    from graft.trained import evaluate_run

    if output is not None:
        check_output_file(output)
    metrics = evaluate_run(run_dir, data, raw=raw)
    if output is not None:
        write_json(output, metrics)
    _print_metrics(metrics, title=str(data) if data else "test")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `graft train`.", metavar="RUN_DIR")],
    input: Annotated[str, typer.Argument(help="Texts: a file (csv, tsv, json, jsonl, parquet, txt) or - for stdin, "
                                              "one text per line. Images: an image, a folder of images, a table "
                                              "with the image column, or - for paths on stdin.", metavar="INPUT")],
    output: Annotated[Path | None, typer.Option(
        help="Write here: .csv/.tsv get a column per label, anything else JSON lines. Default: JSON lines on stdout.",
    )] = None,
    raw: RawOption = False,
    mc_dropout: Annotated[int | None, typer.Option(
        "--mc-dropout", help="N passes with dropout on: mean probabilities, predictive entropy, mutual information "
        "and each class's standard deviation.", metavar="N")] = None,
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", help="Label 'abstain' where the top probability is below P (the report suggests one).",
        metavar="P")] = None,
) -> None:
    """Labels and probabilities for new texts or images (scaled by the run's fitted temperature unless --raw)."""
    from graft.trained import predict_run

    rows = predict_run(run_dir, input, output, raw=raw, mc_dropout=mc_dropout, min_confidence=min_confidence)
    if output is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(f"{len(rows)} predictions written to {output}", file=sys.stderr)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `graft train`.", metavar="RUN_DIR")],
    output: Annotated[Path, typer.Option(help="The folder to write (must not exist, or be empty).")],
    merge: Annotated[bool, typer.Option("--merge", help="Fold a LoRA / IA3 update into the base weights: a "
                                        "standalone model that plain transformers loads.")] = False,
    format: Annotated[str | None, typer.Option(
        "--format", help="onnx: an ONNX graph for onnxruntime (a LoRA / IA3 update merged), with its tokenizer or "
        "image preprocessing, checked against PyTorch on the run's test split.", metavar="onnx")] = None,
    quantize: Annotated[str | None, typer.Option(
        "--quantize", help="With --format onnx: int8 weights for the matrix products; the test metrics before and "
        "after go in export.json.", metavar="int8")] = None,
) -> None:
    """A standalone copy of a run's final model, or an ONNX graph of it, for serving elsewhere."""
    from graft.trained import export_run

    out = export_run(run_dir, output, merge=merge, format=format, quantize=quantize)
    if format == "onnx":
        _print_onnx_export(out)
    print(f"exported to {out}", file=sys.stderr)


def _print_onnx_export(folder: Path) -> None:
    record = json.loads((folder / "export.json").read_text())
    check, test = record["check"], record["test"]
    headline = next(iter(test["pytorch"]))  # the task's first export metric: accuracy, rmse, f1_micro
    print(f"checked on {check['examples']} test examples: ONNX Runtime fp32 within {check['max_abs_diff']:.2g} of "
          f"PyTorch's outputs", file=sys.stderr)
    print(f"test {headline}: " + ", ".join(f"{name} {v[headline]:.4f}" for name, v in test.items()
                                           if isinstance(v, dict)), file=sys.stderr)


@app.command()
def serve(
    source: Annotated[Path, typer.Argument(help="A run directory (served with PyTorch), or an ONNX export from "
                                                "`graft export --format onnx` (served with onnxruntime).",
                                           metavar="RUN_DIR|EXPORT_DIR")],
    port: Annotated[int, typer.Option(help="The port to listen on; 0 picks a free one.", min=0, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="The address to listen on; 127.0.0.1 answers this machine only.")
                    ] = "127.0.0.1",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Inputs of concurrent requests run "
                                           "together, up to this many per forward pass.")] = 32,
    wait_ms: Annotated[float, typer.Option("--wait-ms", min=0.0, help="How long a request waits for others to "
                                           "batch with, in milliseconds.")] = 5.0,
    max_inputs: Annotated[int, typer.Option("--max-inputs", min=1, help="Inputs one request may send; more is "
                                            "refused (413).")] = 256,
) -> None:
    """HTTP on localhost: POST /predict {"inputs": [...]} gives each input's label and probabilities, as
    `graft predict` writes them; GET /health. Ctrl-C or SIGTERM stops."""
    from graft.serve import serve as run

    run(source, host=host, port=port, max_batch=max_batch, wait_ms=wait_ms, max_inputs=max_inputs,
        say=lambda line: print(line, file=sys.stderr, flush=True))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `graft train`.", metavar="RUN_DIR")],
) -> None:
    """Render RUN_DIR/report.html again from run.json and metrics.jsonl (no training, no torch)."""
    from graft.report import write_report

    print(write_report(run_dir))


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML (its strategy section is replaced per strategy).",
                                           metavar="RECIPE.yaml")],
    strategies: Annotated[str, typer.Option(help="Comma-separated presets (scratch, head_only, full, "
                                            "discriminative, lora, ...) or labels from --variants.")],
    seeds: Annotated[int, typer.Option(help="Runs per strategy, seeds train.seed, train.seed+1, ...; the table "
                                       "gives mean ± std.")] = 1,
    variants: Annotated[Path | None, typer.Option(help="A YAML mapping label -> recipe fragment, e.g. "
                                                  "{full-lr1e-4: {optim: {lr: 1.0e-4}}}.")] = None,
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Train every strategy again (finished runs are "
                                            "reused otherwise).")] = False,
) -> None:
    """Run several strategies on the same splits, seeds and budget; one table, the winner, negative transfer."""
    from graft.compare import compare as run
    from graft.compare import format_table

    result = run(recipe, _strategies(strategies, variants), seeds=seeds, overrides=set_ or [], overwrite=overwrite,
                 say=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    print(f"report: {Path(result['recipe']['output']['dir']) / 'compare.html'}")


def _strategies(names: str, variants: Path | None) -> list:
    import yaml

    fragments = {}
    if variants is not None:
        if not variants.is_file():
            raise GraftError(f"--variants {variants}: file not found")
        fragments = yaml.safe_load(variants.read_text()) or {}
        if not isinstance(fragments, dict) or not all(isinstance(v, dict) for v in fragments.values()):
            raise GraftError(f"--variants {variants}: expected a mapping of label -> recipe fragment")
    return [{"label": n, **fragments[n]} if n in fragments else n for n in (x.strip() for x in names.split(","))
            if n]


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML: what every trial starts from.",
                                           metavar="RECIPE.yaml")],
    space: Annotated[Path, typer.Option(help="A YAML mapping of recipe fields to ranges, e.g. optim.lr: {low: "
                                        "1.0e-5, high: 1.0e-3, log: true}, strategy.lora.r: {low: 4, high: 32, "
                                        "step: 4}, strategy.name: {choices: [full, lora]}.", metavar="SPACE.yaml")],
    trials: Annotated[int, typer.Option(help="Trials in all: a rerun of the same command continues to N.",
                                        metavar="N")],
    output: Annotated[Path | None, typer.Option(help="The sweep's folder (sweep.db, trials/, sweep.json, "
                                                "sweep.html); default: the recipe's output.dir.", metavar="DIR")
                      ] = None,
    sampler: Annotated[str, typer.Option(help="tpe or random, seeded by train.seed.", metavar="tpe|random")] = "tpe",
    pruner: Annotated[str, typer.Option(help="When to stop a trial that lags the others at the same evaluation.",
                                        metavar="median|hyperband|none")] = "median",
    baseline: Annotated[bool, typer.Option(help="First train the recipe as it is: the best unless a trial beats "
                                           "it on validation.")] = True,
    set_: SetOption = None,
) -> None:
    """Optuna over any recipe field: every trial a run on the same splits, ranked by the validation metric, the
    laggards pruned; the test set evaluated once, for the best trial."""
    from graft.sweep import format_trials
    from graft.sweep import sweep as run

    try:
        result = run(recipe, space, trials, output=output, sampler=sampler, pruner=pruner, baseline=baseline,
                     overrides=set_ or [],
                     say=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue the sweep", file=sys.stderr)
        raise typer.Exit(130) from None
    print(format_trials(result))
    print(f"report: {Path(result['folder']) / 'sweep.html'}")


@app.command()
def advise(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML (its strategy section is not read).",
                                           metavar="RECIPE.yaml")],
    verify: Annotated[bool, typer.Option("--verify", help="Then run graft compare on the recommendation, the "
                                         "runner-up and scratch, and say whether the advice held.")] = False,
    output: Annotated[Path | None, typer.Option(help="The folder for advise.json and advise.html; default "
                                                "advise-<name> beside output.dir.")] = None,
    sample: Annotated[int | None, typer.Option(help="Training examples whose features are scored (validation: "
                                               "half as many); default 1,000.")] = None,
    set_: SetOption = None,
) -> None:
    """Recommend a strategy before training, with its reasons: data facts, frozen-feature evidence per layer
    (LogME, an exact probe) against a random initialisation, and the quadrant it falls in."""
    from graft.advise import advise as run
    from graft.advise import format_advice

    result = run(recipe, overrides=set_ or [], output=output, verify=verify, sample=sample,
                 say=lambda line: print(line, file=sys.stderr))
    print(format_advice(result))
    print(f"advice: {Path(result['folder']) / 'advise.html'}")


@app.command("lr-find")
def lr_find(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML.", metavar="RECIPE.yaml")],
    set_: SetOption = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps in the sweep (from LR 1e-7 to 10).")] = 100,
    output: Annotated[Path, typer.Option(help="The page with the curve and the pick.")] = Path("lr_find.html"),
) -> None:
    """The LR range test on the recipe's model, strategy and data: the curve, the pick, nothing else written."""
    from graft.pipeline import find_lr
    from graft.report.lr_page import write_lr_page

    if steps < 10:
        raise GraftError(f"--steps {steps}: at least 10")
    found = find_lr(recipe, overrides=set_ or [], steps=steps)
    print(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    every = max(1, len(found["lrs"]) // 25)
    for lr, loss, smooth in list(zip(found["lrs"], found["losses"], found["smoothed"], strict=True))[::every]:
        print(f"{lr:>10.3g}  {loss:>8.4f}  {smooth:>8.4f}")
    pick = found["suggestion"]
    print(f"pick: {pick:.3g} ({found['why']})" if pick is not None else f"no pick: {found['why']}")
    print(f"page: {write_lr_page(output, found, f'{recipe.name}: learning rate')}")


@app.command()
def inspect(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML.", metavar="RECIPE.yaml")],
    set_: SetOption = None,
    fix: Annotated[Path | None, typer.Option(help="Write cleaned copies of the split files and fix_log.csv here "
                                             "(a new or empty folder; the originals are never touched).",
                                             metavar="OUT_DIR")] = None,
    output: Annotated[Path | None, typer.Option(help="Where inspect.json and inspect.html go; default: "
                                                "inspect-<name> beside output.dir.", metavar="DIR")] = None,
    label_issues: Annotated[str, typer.Option(help="With --fix, likely mislabeled train/validation rows: relabel "
                                              "(where the probe is at least 0.9 sure, else drop), drop, or keep.")
                            ] = "relabel",
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Load the model for its frozen features: "
                                        "label issues, semantic duplicates, outliers.")] = True,
) -> None:
    """Duplicates, conflicting labels, likely label errors, balance and odd inputs, each with its file and row."""
    from graft.doctor import inspect as run

    report = run(recipe, overrides=set_ or [], output=output, fix=fix, label_issues=label_issues, probe=probe)
    for line in report["summary"]:
        print(line)
    print(f"report: {report['files']['json']}\npage: {report['files']['page']}")
    if report.get("fix"):
        done = report["fix"]
        print(f"fix: dropped {done['dropped']} rows, relabelled {done['relabelled']} (why: {done['log']}); point "
              f"the recipe at the cleaned files:")
        for key, value in done["data"].items():
            print(f"  data.{key}: {'null' if value is None else value}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the demo's comparison goes.")] = Path("runs/demo"),
) -> None:
    """The embedded default, offline: the packaged MiniLM on graft's support-intent dataset, four strategies
    compared (scratch, head_only, discriminative, lora)."""
    from graft.compare import format_table
    from graft.demo import run_demo

    result = run_demo(output)
    print(format_table(result))
    print(f"report: {output / 'compare.html'}")


def _cross_validate(recipe: Path, overrides: list[str], k: int, overwrite: bool) -> dict:
    from graft.crossval import cross_validate

    return cross_validate(recipe, k, overrides=overrides, overwrite=overwrite)


CV_SHOWN = ("accuracy", "f1_macro", "f1_micro", "f1", "rmse", "r2", "perplexity", "token_accuracy", "loss")
"""What `graft train --cv` prints of each task's metrics, those it has."""


def _print_cv(summary: dict) -> None:
    cv = summary["cv"]
    shown = "  ".join(f"{m} {cv['mean'][m]:.4f} ± {cv['std'][m]:.4f}" for m in CV_SHOWN
                      if cv["mean"].get(m) is not None)
    print(f"run: {summary['recipe']['output']['dir']}\n{cv['k']}-fold cross-validation: {shown}")


def _print_summary(record: dict) -> None:
    test = record["metrics"]["test"]
    print(f"run: {record['recipe']['output']['dir']}")
    _print_metrics(test)
    if record.get("calibration"):
        c = record["calibration"]
        print(f"calibration: test ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f} with temperature "
              f"{c['temperature']:.3f} (fitted on validation; graft predict applies it, --raw does not)")
    for sample in record.get("samples", [])[:3]:
        print(f"  sample: {sample['prompt'][:60]!r} -> {sample['generated'][:80]!r}")
    t = record["timings"]
    print(f"trained {t['steps']} steps in {t['train_s']:.1f}s; peak memory {record['peak_memory_mb']:.0f} MB")
    for warning in record.get("warnings", []):
        print(f"warning: {warning}")


def _print_metrics(m: dict, title: str = "test") -> None:
    if "perplexity" in m:  # a language model
        print(f"{title}: loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  token_accuracy "
              f"{m['token_accuracy']:.4f}  (n={m['n']} examples, {m['tokens']} response tokens)")
        return
    auc = _number(m.get("roc_auc"))
    if "per_label" in m:  # a multi-label classifier, each label decided at its threshold
        _print_label_metrics(m, title, auc)
        return
    if "per_target" in m:  # a regression, in the targets' units
        _print_target_metrics(m, title)
        return
    if "per_entity" in m:  # token classification, scored by entity
        _print_entity_metrics(m, title)
        return
    print(f"{title}: accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  f1_weighted {m['f1_weighted']:.4f}  "
          f"roc_auc {auc}  loss {m['loss']:.4f}  (n={m['n']})")
    if m.get("ece") is not None:
        scaled = f" (temperature {m['temperature']:.3f} applied)" if m.get("temperature") else ""
        print(f"  calibration: ece {m['ece']:.4f}  nll {m['nll']:.4f}  brier {m['brier']:.4f}{scaled}")
    if m.get("baseline_accuracy") is not None:
        print(f"  majority baseline (the most frequent class for every example): accuracy "
              f"{m['baseline_accuracy']:.4f}  f1_macro {m['baseline_f1_macro']:.4f}"
              + (f"; this model answers {m['one_class']!r} for everything" if m.get("one_class") else ""))
    _print_scores(m["per_class"], "class")


def _print_scores(rows: dict[str, dict], heading: str, min_width: int = 0) -> None:
    """A per-class (or per-entity-type) table, weakest F1 first."""
    width = max(min_width, *(len(name) for name in rows))
    print(f"  {heading:<{width}}  precision  recall  f1      support")
    for name, c in sorted(rows.items(), key=lambda kv: kv[1]["f1"]):
        print(f"  {name:<{width}}  {c['precision']:.4f}     {c['recall']:.4f}  {c['f1']:.4f}  {c['support']}")


def _print_label_metrics(m: dict, title: str, auc: str) -> None:
    ap = _number(m.get("average_precision"))
    print(f"{title}: f1_micro {m['f1_micro']:.4f}  f1_macro {m['f1_macro']:.4f}  subset_accuracy "
          f"{m['subset_accuracy']:.4f}  hamming_loss {m['hamming_loss']:.4f}  roc_auc {auc}  average_precision {ap}  "
          f"loss {m['loss']:.4f}  (n={m['n']}; {'tuned' if m.get('thresholds') else '0.5'} thresholds)")
    width = max(len(name) for name in m["per_label"])
    print(f"  {'label':<{width}}  threshold  precision  recall  f1      support")
    for name, c in sorted(m["per_label"].items(), key=lambda kv: kv[1]["f1"]):
        print(f"  {name:<{width}}  {c['threshold']:.4f}     {c['precision']:.4f}     {c['recall']:.4f}  "
              f"{c['f1']:.4f}  {c['support']}")


def _print_target_metrics(m: dict, title: str) -> None:
    def line(t: dict) -> str:
        return "  ".join(f"{k} {_number(t[k])}" for k in ("rmse", "mae", "r2", "pearson", "spearman"))

    print(f"{title}: {line(m)}  loss {m['loss']:.4f}  (n={m['n']}; mean over targets, in their units)")
    if len(m["per_target"]) > 1:
        width = max(len(name) for name in m["per_target"])
        for name, t in m["per_target"].items():
            print(f"  {name:<{width}}  {line(t)}")
    if m.get("baseline_rmse") is not None:
        beaten = "" if m.get("beats_baseline") else "; this model does not beat it"
        print(f"  mean predictor (each target's training mean for every example): rmse {_number(m['baseline_rmse'])}  "
              f"mae {_number(m['baseline_mae'])}{beaten}")


def _print_entity_metrics(m: dict, title: str) -> None:
    print(f"{title}: entity f1 {m['f1']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
          f"token_accuracy {m['token_accuracy']:.4f}  loss {m['loss']:.4f}  (n={m['n']} sentences, {m['words']} words)")
    if m["per_entity"]:
        _print_scores(m["per_entity"], "type", min_width=5)


def _number(value: float | None) -> str:
    """A metric that may be undefined (a correlation of constant predictions): n/a."""
    return "n/a" if value is None else f"{value:.4g}" if abs(value) >= 1e4 else f"{value:.4f}"


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2."""
    quiet_libraries()
    try:
        app()
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)



def quiet_libraries() -> None:
    """Keep the libraries' deprecation notices and progress bars (for files they write or read in a blink) out of
    the user's terminal: graft says what matters itself. Python's -W flags and PYTHONWARNINGS still win."""
    import os
    import warnings

    if not sys.warnoptions:
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(?!graft(\.|$))")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
