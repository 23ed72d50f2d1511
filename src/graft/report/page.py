"""The run report: one self-contained HTML page from a run record (run.json), read from files only (no torch).

Top to bottom it answers "did it work, and what did it cost?": the headline test metrics and what the curves say
in words (overfitting, early stopping), then the curves, the confusion matrix, the per-class table, whether the
probabilities can be trusted (calibration), the most confident mistakes, what trained at which learning rate, the
cost, and where it ran.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from graft.report.charts import heatmap, line_chart, matrix_layout, prediction_scatter, reliability_chart

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;margin:0;background:#f3f4f6}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:28px 0 10px;border-bottom:1px solid #d1d5db;padding-bottom:4px}
.sub{color:#4b5563;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0001;min-width:120px}
.card b{display:block;font-size:24px} .card span{color:#6b7280;font-size:12px}
.verdict{background:#fff;border-left:4px solid #2563eb;padding:10px 14px;border-radius:4px;margin:8px 0}
.verdict.warn{border-color:#d97706}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
figure{background:#fff;border-radius:8px;margin:0;padding:8px;box-shadow:0 1px 2px #0001}
figure svg{width:100%;height:auto} figure.square svg{max-width:400px;display:block;margin:auto}
figure.wide{margin:0 0 16px} figure.wide svg{width:auto;max-width:100%;display:block;margin:auto}
figcaption{color:#4b5563;font-size:12px;padding:4px 8px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001;border-radius:8px}
th,td{padding:5px 10px;text-align:left;border-bottom:1px solid #e5e7eb} th{background:#f9fafb;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums} tr.low td{background:#fef2f2}
.mistake img{width:64px;height:64px;image-rendering:pixelated;border-radius:4px}
code{background:#e5e7eb;padding:1px 4px;border-radius:3px}
"""


def render(record: dict[str, Any], run_dir: Path) -> str:
    """The report page for `record` (a run.json), as one HTML string."""
    recipe = record["recipe"]
    metrics = record.get("metrics", {})
    history = metrics.get("history", [])
    test = metrics.get("test") or {}
    model = recipe["model"]["name"].rpartition(":")[0] or recipe["model"]["name"]  # a factory: its file
    title = f"{Path(recipe['output']['dir']).name}: {recipe['strategy']['name']} on {Path(model).name}"
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p class='sub'>{escape(recipe['task'])} · status <b>{escape(record.get('status', '?'))}</b> · "
             f"{_sizes(record)}{_classes(record)}</p>",
             _cards(test, record), *_verdicts(record, history)]
    parts += _curves(history, record)
    if metrics.get("retention"):
        parts += _retention(metrics["retention"], history, record["recipe"]["eval"]["metric"])
    if record.get("distill"):
        parts += _distill(record["distill"])
    if test.get("confusion_matrix"):
        parts += _test_set(test, record["data"]["labels"])
    if test.get("per_label"):
        parts.append(_per_label(test["per_label"], record.get("thresholds") or {}))
    if test.get("per_entity"):
        parts += _entities(test, record.get("tagged") or [])
    if record.get("calibration"):
        parts += _calibration(record["calibration"])
    if record.get("mistakes"):
        parts.append(_mistakes(record["mistakes"], record["data"].get("input_kind") == "image"))
    if record.get("scatter"):
        parts += _regression(record)
    if record.get("samples") or record["data"].get("rendered_example"):
        parts.append(_samples(record))
    parts += [_groups(record), _cost(record), _recipe_and_environment(record)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>")


def render_cv(record: dict[str, Any]) -> str:
    """The summary page of a k-fold cross-validation: mean ± std, and each fold."""
    cv, recipe = record["cv"], record["recipe"]
    title = f"{Path(recipe['output']['dir']).name}: {cv['k']}-fold cross-validation, {recipe['strategy']['name']}"
    names = [m for m in ("accuracy", "f1_macro", "roc_auc", "rmse", "r2", "spearman", "loss") if m in cv["mean"]]
    cards = "".join(f"<div class='card'><b>{cv['mean'][m]:.3f} ± {cv['std'][m]:.3f}</b><span>{m} (mean ± std over "
                    f"{cv['k']} folds)</span></div>" for m in names)
    folds = [f["fold"] for f in cv["folds"]]
    chart = line_chart({m: (folds, [f["test"][m] for f in cv["folds"]]) for m in names if m != "loss"},
                       xlabel="fold", ylabel="test")
    rows = ""
    for f in cv["folds"]:
        cells = "".join(f"<td class='n'>{f['test'][m]:.4f}</td>" for m in names)
        rows += (f"<tr><td>{f['fold']}</td>{cells}<td class='n'>{f['train_s']:.1f} s</td>"
                 f"<td>{escape(f['dir'])}</td></tr>")
    head = "".join(f"<th>{m}</th>" for m in names)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<p class='sub'>{escape(recipe['task'])} · each fold is the test split once · every fold's run directory "
            f"has its own report</p><div class='cards'>{cards}</div><h2>Folds</h2><div class='grid'>"
            f"{figure(chart, 'Test metrics of each fold.')}<table><tr><th>fold</th>{head}<th>training</th>"
            f"<th>run</th></tr>{rows}</table></div></main></body></html>")


def escape(value: Any) -> str:
    return html.escape(str(value))


def _classes(record: dict[str, Any]) -> str:
    labels = record["data"].get("labels") or []
    if record["data"].get("targets"):
        return f" · target{'s' if len(labels) > 1 else ''} {', '.join(map(str, labels))}"
    noun = "labels" if "label_counts" in record["data"] else "classes"  # a multi-label run's: any number each
    return f" · {len(labels)} {noun}" if labels else ""


def _samples(record: dict[str, Any]) -> str:
    rendered = record["data"].get("rendered_example")
    out = ["<h2>What the model learns from, and what it says</h2>"]
    if rendered:
        out.append("<p class='sub'>One training example exactly as the model sees it (the loss is on the assistant's "
                   f"turns only):</p><pre><code>{escape(rendered)}</code></pre>")
    rows = "".join(f"<tr><td>{escape(clip(s['prompt'], 300))}</td>"
                   f"<td>{escape(clip(s.get('reference') or '', 300))}</td>"
                   f"<td>{escape(clip(s['generated'], 300))}</td></tr>" for s in record.get("samples", []))
    if rows:
        out.append("<p class='sub'>Greedy generations for the first validation prompts, after training:</p><table>"
                   f"<tr><th>prompt</th><th>reference</th><th>generated</th></tr>{rows}</table>")
    return "".join(out)


def _sizes(record: dict[str, Any]) -> str:
    sizes = record["data"]["sizes"]
    return " / ".join(f"{sizes[k]:,} {k}" for k in ("train", "validation", "test"))


def _cards(test: dict[str, Any], record: dict[str, Any]) -> str:
    if not test:
        return "<p>No test metrics: the run did not finish.</p>"
    items = [("test RMSE", test.get("rmse")), ("test R²", test.get("r2")), ("test Spearman", test.get("spearman")),
             ("mean predictor: RMSE", test.get("baseline_rmse")), ("test MAE", test.get("mae")),
             ("test accuracy", test.get("accuracy")), ("micro F1", test.get("f1_micro")),
             ("macro F1", test.get("f1_macro")), ("subset accuracy (every label right)", test.get("subset_accuracy")),
             ("Hamming loss (wrong label decisions)", test.get("hamming_loss")),
             ("mean average precision", test.get("average_precision")),
             ("majority baseline: accuracy", test.get("baseline_accuracy")),
             ("majority baseline: macro F1", test.get("baseline_f1_macro")),
             ("ROC-AUC", test.get("roc_auc")), ("test loss", test.get("loss")),
             ("test ECE (calibration error)", test.get("ece")),
             ("entity F1 (micro)", test.get("f1")), ("entity precision", test.get("precision")),
             ("entity recall", test.get("recall")), ("test perplexity", test.get("perplexity")),
             ("token accuracy" + (" (responses)" if "perplexity" in test else " (words)"), test.get("token_accuracy"))]
    params = record.get("params", {})
    cards = [f"<div class='card'><b>{v:.3f}</b><span>{k}</span></div>" for k, v in items if v is not None]
    if params:
        share = params["trainable"] / max(1, params["total"])
        shown = f"{share:.1%}" if share >= 0.01 else f"{share:.2%}"
        cards.append(f"<div class='card'><b>{params['trainable']:,}</b><span>trainable of {params['total']:,} "
                     f"parameters ({shown})</span></div>")
    train_s = record.get("timings", {}).get("train_s")
    if train_s is not None:
        cards.append(f"<div class='card'><b>{train_s:.1f} s</b><span>training time</span></div>")
    return f"<div class='cards'>{''.join(cards)}</div>"


def _verdicts(record: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """What the curves say, in words."""
    title = "No better than a constant." if record.get("scatter") else "One class only."
    out = [f"<div class='verdict warn'><b>{title}</b> {escape(w)}</div>" for w in record.get("warnings", [])]
    train = [h for h in history if h["split"] == "train"]
    val = [h for h in history if h["split"] == "validation"]
    best = record.get("best") or {}
    metric = record["recipe"]["eval"]["metric"]
    if best.get("step") is not None:
        out.append(f"<div class='verdict'>The best model (by validation {escape(metric)} = {best.get(metric, 0):.4f}) "
                   f"is from step {best['step']}; the test metrics above are that model's.</div>")
    if record.get("stopped") == "early_stopping":
        out.append("<div class='verdict'>Training stopped early: validation did not improve for "
                   f"{record['recipe']['eval']['patience']} evaluations.</div>")
    overfit = overfitting(train, val)
    if overfit:
        out.append(f"<div class='verdict warn'><b>Overfitting.</b> {overfit}</div>")
    return out


def overfitting(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> str | None:
    """A sentence when validation loss rose clearly after its minimum while training loss kept falling."""
    if len(val) < 3 or len(train) < 2:
        return None
    low = min(range(len(val)), key=lambda i: val[i]["loss"])
    last = val[-1]
    if low == len(val) - 1 or last["loss"] < val[low]["loss"] * 1.05:
        return None
    train_at_low = min(train, key=lambda h: abs(h["step"] - val[low]["step"]))["loss"]
    if train[-1]["loss"] > train_at_low * 0.95:  # training loss must clearly keep falling, not wobble
        return None
    return (f"Validation loss rose from {val[low]['loss']:.4f} at step {val[low]['step']} to {last['loss']:.4f} at "
            f"step {last['step']} while training loss kept falling ({train_at_low:.4f} → {train[-1]['loss']:.4f}). "
            f"Later epochs fit the training set, not the task: fewer epochs, early stopping (eval.patience), a "
            f"smaller learning rate or more regularisation would spend less for the same model.")


def _curves(history: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    train = [h for h in history if h["split"] == "train"]
    val = [h for h in history if h["split"] == "validation"]
    if val and all("l2" in h for h in val):
        return _probe_curve(val)
    if not train and not val:
        return []
    figures = []
    series = {}
    if train:
        series["train"] = ([h["step"] for h in train], [h["loss"] for h in train])
    terms = [k for k in (train[0] if train else {}) if k.startswith("loss_")]
    for key in terms:  # the task's loss and each added term, on their own
        series[f"train: {key.removeprefix('loss_')}"] = ([h["step"] for h in train], [h[key] for h in train])
    if val:
        series["validation"] = ([h["step"] for h in val], [h["loss"] for h in val])
    best = [h for h in val if h.get("best")]
    marks = {f"best (step {best[-1]['step']})": (best[-1]["step"], best[-1]["loss"])} if best else None
    added = [t.removeprefix("loss_") for t in terms if t != "loss_task"]
    what = f" with its parts (the task's loss, {', '.join(added)})" if added else ""
    figures.append(figure(line_chart(series, xlabel="step", ylabel="loss", marks=marks),
                           f"Loss: training (mean since the previous log line){what}, and validation."))
    figures += _extra_evaluations(history)
    names = [m for m in ("accuracy", "f1_macro", "roc_auc", "token_accuracy", "r2", "spearman")
             if val and all(h.get(m) is not None for h in val)]
    if names:
        figures.append(figure(line_chart({m: ([h["step"] for h in val], [h[m] for h in val]) for m in names},
                                          xlabel="step", ylabel=names[0] if len(names) == 1 else "validation"),
                               "Validation metrics."))
    if train and isinstance(train[0].get("lr"), dict):
        groups = list(train[0]["lr"])
        lrs = {g: ([h["step"] for h in train], [h["lr"][g] for h in train]) for g in groups}
        distinct = {tuple(v[1]) for v in lrs.values()}
        if len(distinct) == 1:  # every group at one LR: one line says it
            lrs = {"all groups": next(iter(lrs.values()))}
        figures.append(figure(line_chart(lrs, xlabel="step", ylabel="learning rate",
                                          log_y=len(distinct) > 1 and min(min(v[1]) for v in lrs.values()) > 0),
                               "Learning rate per layer group."))
    speed = [h.get("samples_per_s") for h in train]
    if train and all(s is not None for s in speed):
        figures.append(figure(line_chart({"samples/s": ([h["step"] for h in train], speed)}, xlabel="step",
                                          ylabel="samples per second"), "Training throughput."))
    return ["<h2>Curves</h2><div class='grid'>", *figures, "</div>"]


def _probe_curve(val: list[dict[str, Any]]) -> list[str]:
    """An exact probe has no steps: its validation loss and accuracy against the L2 strengths it tried."""
    strengths = [h["l2"] for h in val]
    chosen = next(h for h in val if h.get("best"))
    chart = line_chart({"validation loss": (strengths, [h["loss"] for h in val]),
                        "validation accuracy": (strengths, [h["accuracy"] for h in val])},
                       xlabel="L2 strength", ylabel="validation", log_x=True,
                       marks={f"chosen (l2 {chosen['l2']:g})": (chosen["l2"], chosen["loss"])})
    return ["<h2>Curves</h2><div class='grid'>",
            figure(chart, "The exact probe: one fit to convergence per L2 strength; the lowest validation loss wins."),
            "</div>"]


def _extra_evaluations(history: list[dict[str, Any]]) -> list[str]:
    """A chart for each extra evaluation set (split names other than train and validation): its metrics by step."""
    out = []
    for split in dict.fromkeys(h["split"] for h in history if h["split"] not in ("train", "validation", "retention")):
        rows = [h for h in history if h["split"] == split]
        names = [k for k, v in rows[0].items() if k not in ("step", "epoch") and isinstance(v, float)][:4]
        if names:
            out.append(figure(line_chart({m: ([h["step"] for h in rows], [h[m] for h in rows]) for m in names},
                                         xlabel="step", ylabel=split),
                              f"Extra evaluation '{escape(split)}' (step 0: before training)."))
    return out


RETAINED = 0.9
"""Retention below this is drawn as a warning."""
REFIT_SLACK = 0.02
"""A re-fitted probe this much below its score before training: the features lost part of the skill."""


def _retention(retention: dict[str, Any], history: list[dict[str, Any]], metric: str) -> list[str]:
    """What fine-tuning cost the source task: the source head's accuracy before and after, and retention against
    the new task's validation metric over training."""
    before, after, ratio = retention["before"], retention["after"], retention["ratio"]
    guards = ", ".join(retention.get("guards") or []) or "none"
    kept = f"retention {ratio:.3f}" if ratio is not None else "no retention ratio (it scored 0 before)"
    warn = " warn" if ratio is not None and ratio < RETAINED else ""
    if retention["metric"] == "perplexity":
        said = (f"On the {retention['n']} held-out retain conversations the model's perplexity is {after:.3g} on the "
                f"final weights, against {before:.3g} before fine-tuning: <b>{escape(kept)}</b> (before ÷ after)")
    else:
        reader = "A probe fitted on the original features" if retention.get("probe") else \
            "The pretrained head, kept beside the new one,"
        said = (f"{reader} answers {after:.1%} of the {retention['n']} held-out source examples right on the final "
                f"weights, against {before:.1%} before fine-tuning: <b>{escape(kept)}</b> (after ÷ before)")
        said += _refit_words(retention)
    out = ["<h2>Forgetting: what the new task cost the source task</h2>",
           f"<div class='verdict{warn}'>{said}. Guards: {escape(guards)}.</div>"]
    rows = retention.get("history") or []
    val = {h["step"]: h.get(metric) for h in history if h["split"] == "validation"}
    series = {}
    if rows and all(r["ratio"] is not None for r in rows):
        name = "perplexity before ÷ now" if retention["metric"] == "perplexity" else "source accuracy ÷ before"
        series[f"retention ({name})"] = ([r["step"] for r in rows], [r["ratio"] for r in rows])
    steps = [r["step"] for r in rows if val.get(r["step"]) is not None]
    if steps:
        series[f"validation {metric} (new task)"] = (steps, [val[s] for s in steps])
    if series:
        out += ["<div class='grid'>", figure(line_chart(series, xlabel="step", ylabel="retention / validation"),
                                            "Retention of the source task against the new task's validation metric, "
                                            "at each evaluation (step 0: before training)."), "</div>"]
    return out


def _refit_words(retention: dict[str, Any]) -> str:
    """What a probe fitted afresh on the features says: lost features, or features turned away from the old head."""
    refit = retention.get("refit") or {}
    if refit.get("after") is None or refit.get("before") is None:
        return ""
    read = (f". A probe fitted afresh reads {refit['after']:.1%} of them (before: {refit['before']:.1%}; the features' "
            f"mean cosine to the original ones is {retention['feature_cosine']:.3f})")
    if refit["after"] < refit["before"] - REFIT_SLACK:
        return read + ": the features lost part of the skill"
    if retention["ratio"] is not None and retention["ratio"] < RETAINED:
        return read + ": the skill is still in the features, turned away from what the old head reads"
    return read


def _distill(d: dict[str, Any]) -> list[str]:
    """Teacher against student: test quality, size and latency, as the record's `distill` section measured them."""
    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    rows = "".join(
        f"<tr><td>{who}</td><td class='n'>{cell(x['layers'], 'd')}</td>"
        f"<td class='n'>{cell(x['test'].get('accuracy'), '.3f')}</td>"
        f"<td class='n'>{cell(x['test'].get('f1_macro'), '.3f')}</td><td class='n'>{x['params']:,}</td>"
        f"<td class='n'>{x['megabytes']:.1f}</td>"
        f"<td class='n'>{x['latency_ms']['batch_1']:.2f}</td><td class='n'>{x['latency_ms']['batch_32']:.2f}</td></tr>"
        for who, x in (("teacher", d["teacher"]), ("student", d["student"])))
    r, lat = d["student_vs_teacher"], d["latency"]
    said = (f"The student keeps {cell(r['accuracy'], '.1%')} of the teacher's test accuracy with "
            f"{cell(r['params'], '.0%')} of its parameters, at {cell(r['latency_batch_1'], '.2f')}× its latency at "
            f"batch 1 and {cell(r['latency_batch_32'], '.2f')}× at batch 32 ({escape(lat['device'])}, "
            f"{lat['torch_threads']} threads, {lat['precision']}; the first {lat['examples']['batch_1']} and "
            f"{lat['examples']['batch_32']} test examples, {lat['repeats']} passes, timed in turn). Student: "
            f"{escape(d['student']['start'])}. Teacher: {escape(d['teacher']['run'])} (test metrics: "
            f"{escape(d['teacher']['test_from'])}).")
    table = ("<table><tr><th></th><th>layers</th><th>test accuracy</th><th>macro-F1</th><th>parameters</th>"
             "<th>MB on disk</th><th>ms / example, batch 1</th><th>ms / example, batch 32</th></tr>"
             f"{rows}</table>")
    return ["<h2>Distillation: teacher and student</h2>", f"<div class='verdict'>{said}</div>", table]


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


SQUARE_PX = 400
"""The width a small confusion matrix is shown at, beside the per-class table (CSS: figure.square)."""


def _test_set(test: dict[str, Any], labels: list[str]) -> list[str]:
    """The confusion matrix beside the per-class table; a matrix too big to stay legible at SQUARE_PX gets the
    page's width above the table instead."""
    matrix = test["confusion_matrix"]
    layout = matrix_layout(matrix, labels)
    said = ["counts" + ("; blank cells are 0" if layout.blank_zeros else "") if layout.count_font else
            "the cells are too small for counts", "colour is the share of each true class"]
    if layout.every > 1:
        said.append(f"one class in {layout.every} is named")
    if layout.labels != [str(label) for label in labels]:
        said.append("long class names are shortened: hover over one for the full name")
    chart = heatmap(matrix, labels)
    caption = f"Confusion matrix: {'; '.join(said)}."
    if layout.figsize[0] * 96 * 0.75 <= SQUARE_PX:  # CSS pixels: shrunk to SQUARE_PX, its text keeps 3/4 of its size
        return ["<h2>Test set</h2><div class='grid'>",
                f"<figure class='square'>{chart}<figcaption>{escape(caption)}</figcaption></figure>",
                _per_class(test["per_class"]), "</div>"]
    return ["<h2>Test set</h2>", f"<figure class='wide'>{chart}<figcaption>{escape(caption)}</figcaption></figure>",
            _per_class(test["per_class"])]


COVERAGE_ROWS = (1.0, 0.9, 0.75, 0.5, 0.25)
"""The shares answered that the calibration table shows the threshold and accuracy for."""


def _calibration(c: dict[str, Any]) -> list[str]:
    """Temperature scaling's before and after, the reliability diagrams, what answering only when confident gives,
    and the suggested threshold, all from the record's `calibration` (measured on test, scaled probabilities)."""
    before, after, t = c["before"], c["after"], c["temperature"]
    if c.get("note") and t == 1.0:
        fitted = f"No temperature was fitted: {escape(c['note'])}."
    else:
        direction = ("over-confident: scaling softens its probabilities" if t > 1 else
                     "under-confident: scaling sharpens its probabilities")
        fitted = (f"Temperature scaling divides the logits by T = {t:.3f}, fitted on the {c['fitted_on']['n']} "
                  f"validation examples by their NLL: the model was {direction}. Accuracy does not change."
                  + (f" Note: {escape(c['note'])}." if c.get("note") else ""))
    out = ["<h2>Calibration: can its confidence be trusted?</h2>",
           f"<div class='verdict'>{fitted} On test, expected calibration error {before['ece']:.4f} → "
           f"{after['ece']:.4f}, NLL {before['nll']:.4f} → {after['nll']:.4f}, Brier score {before['brier']:.4f} → "
           f"{after['brier']:.4f}. <code>graft predict</code> and <code>graft eval</code> apply T; "
           "<code>--raw</code> gives the model's own probabilities.</div>"]
    out += _answering_verdicts(c)
    panels = {f"before scaling (ECE {before['ece']:.3f})": c["reliability"]["before"],
              f"after, T = {t:.2f} (ECE {after['ece']:.3f})": c["reliability"]["after"]}
    figures = [figure(reliability_chart(panels), f"Reliability on test: the accuracy of the examples in each of "
                      f"{c['n_bins']} equal-width confidence bins (bars), against their mean confidence (ticks); the "
                      "numbers along the top are each bin's examples. Bars on the diagonal are calibrated; below it, "
                      "over-confident.")]
    curve = c.get("coverage") or []
    if curve:
        chosen = c["threshold"]
        marks = ({f"suggested p = {chosen['value']:.3f}": (chosen["value"], chosen["test"]["accuracy"])}
                 if chosen.get("value") is not None and chosen["test"]["accuracy"] is not None else None)
        thresholds = [p["threshold"] for p in curve]
        chart = line_chart({"accuracy of the answered": (thresholds, [p["accuracy"] for p in curve]),
                            "share answered (coverage)": (thresholds, [p["coverage"] for p in curve])},
                           xlabel="answer only when confidence ≥ p", ylabel="test", marks=marks)
        figures.append(figure(chart, "Accuracy if the model only answers when its (scaled) confidence is at least p, "
                                     "and the share of test examples it then answers."))
    out += ["<div class='grid'>", *figures, "</div>"]
    if curve:
        out.append(_coverage_table(curve))
    return out


def _answering_verdicts(c: dict[str, Any]) -> list[str]:
    out = []
    half = c.get("top_half") or {}
    if half.get("accuracy") is not None:
        out.append(f"<div class='verdict'>The 50% most confident test predictions are right {half['accuracy']:.1%} "
                   f"of the time, against {half['overall']:.1%} for all: confidence is worth "
                   f"{100 * half['margin']:+.1f} points of accuracy.</div>")
    chosen = c.get("threshold") or {}
    if chosen.get("value") is not None:
        val, test = chosen["validation"], chosen["test"]
        measured = (f"on test it answers {test['coverage']:.0%} at accuracy {test['accuracy']:.3f}"
                    if test["accuracy"] is not None else "on test it answers none")
        out.append(f"<div class='verdict'><b>Suggested threshold: answer only when confidence ≥ "
                   f"{chosen['value']:.3f}</b> (e.g. <code>--min-confidence {chosen['value']:.3f}</code>). The rule: "
                   f"{escape(chosen['rule'])}. Target accuracy {chosen['target_accuracy']:.3f}; on validation the "
                   f"threshold answers {val['coverage']:.0%} at accuracy {val['accuracy']:.3f}; {measured}.</div>")
    elif chosen:
        out.append(f"<div class='verdict warn'>No confidence threshold is suggested: {escape(chosen.get('why', ''))} "
                   f"(the rule: {escape(chosen['rule'])}).</div>")
    return out


def _coverage_table(curve: list[dict[str, Any]]) -> str:
    """The curve at a few shares answered: the largest threshold that still answers at least that share."""
    rows = ""
    for share in COVERAGE_ROWS:
        point = max((p for p in curve if p["coverage"] >= share - 1e-9), key=lambda p: p["threshold"], default=None)
        if point is not None:
            rows += (f"<tr><td class='n'>{share:.0%}</td><td class='n'>{point['threshold']:.3f}</td>"
                     f"<td class='n'>{point['coverage']:.1%}</td><td class='n'>{point['accuracy']:.3f}</td></tr>")
    return ("<table><tr><th>answer at least</th><th>threshold p</th><th>answered</th><th>accuracy of the answered"
            f"</th></tr>{rows}</table>")


def _per_class(scores: dict[str, dict[str, Any]], noun: str = "class") -> str:
    rows = sorted(scores.items(), key=lambda kv: kv[1]["f1"])
    worst = rows[0][1]["f1"] if rows else 0
    body = "".join(
        f"<tr class='{'low' if c['f1'] == worst and len(rows) > 1 else ''}'><td>{escape(name)}</td>"
        f"<td class='n'>{c['precision']:.3f}</td><td class='n'>{c['recall']:.3f}</td><td class='n'>{c['f1']:.3f}</td>"
        f"<td class='n'>{c['support']}</td></tr>" for name, c in rows)
    return (f"<div><table><tr><th>{noun} (worst F1 first)</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{body}</table></div>")


def _per_label(per_label: dict[str, Any], thresholds: dict[str, Any]) -> str:
    """A multi-label run's labels, worst F1 first: each decided at its own threshold, with the ranking metrics that
    no threshold changes; and what tuning the thresholds did to the test scores."""
    def number(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    rows = sorted(per_label.items(), key=lambda kv: kv[1]["f1"])
    body = "".join(
        f"<tr class='{'low' if i == 0 and len(rows) > 1 else ''}'><td>{escape(name)}</td>"
        + "".join(f"<td class='n'>{number(c[k])}</td>" for k in ("threshold", "precision", "recall", "f1", "roc_auc",
                                                                  "average_precision"))
        + f"<td class='n'>{c['support']}</td></tr>" for i, (name, c) in enumerate(rows))
    test = thresholds.get("test") or {}
    words = ""
    if test:
        half, tuned = test["at_0.5"], test["tuned"]
        words = (f"<p class='sub'>Thresholds tuned on validation (each label's F1 maximised): test micro-F1 "
                 f"{half['f1_micro']:.3f} at 0.5 → {tuned['f1_micro']:.3f} tuned, macro-F1 {half['f1_macro']:.3f} → "
                 f"{tuned['f1_macro']:.3f}.</p>")
    return ("<h2>Labels on test</h2>" + words + "<table><tr><th>label (worst F1 first)</th><th>threshold</th>"
            "<th>precision</th><th>recall</th><th>F1</th><th>ROC-AUC</th><th>average precision</th><th>support</th>"
            f"</tr>{body}</table>")


def _entities(test: dict[str, Any], tagged: list[dict[str, Any]]) -> list[str]:
    """Each entity type's scores (worst F1 first), and test sentences with their true and predicted entities."""
    out = ["<h2>Entities on test</h2>",
           f"<p class='sub'>An entity counts as found when its type and its words both match (seqeval); "
           f"{test['n']:,} sentences, {test['words']:,} words"
           + (f", of which {test['words_cut']:,} lie beyond model.max_length and count as predicted O"
              if test.get("words_cut") else "") + ".</p>",
           _per_class(test["per_entity"], "entity type")]
    if tagged:
        rows = ""
        for s in tagged:
            found = {(e["type"], e["first"], e["last"]) for e in s["gold"]}
            gold = ", ".join(_entity(e) for e in s["gold"]) or "none"
            guess = ", ".join(_entity(e, (e["type"], e["first"], e["last"]) not in found)
                              for e in s["predicted"]) or "none"
            rows += f"<tr><td>{escape(clip(' '.join(s['words']), 300))}</td><td>{gold}</td><td>{guess}</td></tr>"
        out.append("<p class='sub'>The first test sentences with entities (true or predicted); a predicted entity in "
                   "red is not among the true ones.</p><table><tr><th>sentence</th><th>true entities</th>"
                   f"<th>predicted</th></tr>{rows}</table>")
    return out


def _entity(e: dict[str, Any], wrong: bool = False) -> str:
    style = " style='color:#b91c1c'" if wrong else ""
    return f"<span{style}>{escape(e['text'])} <b>{escape(e['type'])}</b></span>"


def _mistakes(mistakes: list[dict[str, Any]], images: bool) -> str:
    rows = []
    for m in mistakes:
        what = thumbnail(m["input"]) if images else escape(clip(m["input"], 300))
        rows.append(f"<tr class='mistake'><td>{what}</td><td>{escape(m['label'])}</td><td>{escape(m['predicted'])}</td>"
                    f"<td class='n'>{m['confidence']:.3f}</td><td class='n'>{m['p_label']:.3f}</td></tr>")
    return ("<h2>Most confident mistakes on test</h2><p class='sub'>Up to three per true class, surest first: "
            "label noise and real confusions show here first.</p><table><tr><th>example</th><th>true</th>"
            f"<th>predicted</th><th>confidence</th><th>p(true)</th></tr>{''.join(rows)}</table>")


def _regression(record: dict[str, Any]) -> list[str]:
    """Each target's predicted-vs-true scatter and metrics beside the mean predictor's, and the largest errors."""
    test = record["metrics"]["test"]
    figures = []
    for name, pairs in record["scatter"].items():
        scores = (test.get("per_target") or {}).get(name, {})
        said = ", ".join(f"{k} {scores[k]:.3f}" for k in ("rmse", "r2", "spearman") if scores.get(k) is not None)
        figures.append(figure(prediction_scatter(pairs["true"], pairs["predicted"], name=name),
                              f"{name} on test ({len(pairs['true'])} examples): {said}."))
    out = ["<h2>Predicted against true</h2><p class='sub'>A perfect model's dots lie on the dashed line; the mean "
           "predictor (every answer the training mean) would be a horizontal line.</p>",
           f"<div class='grid'>{''.join(figures)}</div>"]
    rows = "".join(
        f"<tr><td>{escape(clip(e['input'], 300))}</td><td class='n'>{_values(e['target'])}</td>"
        f"<td class='n'>{_values(e['predicted'])}</td></tr>" for e in record.get("largest_errors", []))
    if rows:
        out.append("<h2>Largest errors on test</h2><p class='sub'>Furthest off first (in standard deviations of each "
                   "target): mislabelled rows and what the model cannot read show here first.</p><table><tr>"
                   f"<th>example</th><th>true</th><th>predicted</th></tr>{rows}</table>")
    return out


def _values(values: dict[str, float]) -> str:
    if len(values) == 1:
        return f"{next(iter(values.values())):.4g}"
    return escape(", ".join(f"{k} {v:.4g}" for k, v in values.items()))


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def thumbnail(path: str) -> str:
    """The image inline (64 px, PNG), so the report stays one file; its path when it cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((64, 64))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        name = escape(Path(path).name)
        return f"<img alt='{name}' src='data:image/png;base64,{data}'><br><small>{name}</small>"
    except OSError:
        return f"<small>{escape(path)} (not readable now)</small>"


def _groups(record: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(g['name'])}</td><td class='n'>{g['params']:,}</td><td class='n'>{g['trainable']:,}</td>"
        f"<td class='n'>{g['params'] - g['trainable']:,}</td>"
        f"<td class='n'>{'-' if g['from_epoch'] is None else g['from_epoch']}</td><td class='n'>{g['lr']:.3g}</td></tr>"
        for g in record.get("groups", []))
    return ("<h2>What trained</h2><table><tr><th>layer group</th><th>parameters</th><th>trainable</th><th>frozen</th>"
            f"<th>from epoch</th><th>learning rate</th></tr>{rows}</table>")


def _cost(record: dict[str, Any]) -> str:
    t = record.get("timings") or {}
    items = [("training", f"{t['train_s']:.1f} s" if "train_s" in t else None),
             ("per epoch", f"{t['train_s_per_epoch']:.2f} s" if "train_s_per_epoch" in t else None),
             ("steps", t.get("steps")),
             ("steps per second", f"{t['steps_per_s']:.2f}" if t.get("steps_per_s") else None),
             ("evaluation", f"{t['eval_s']:.1f} s" if "eval_s" in t else None),
             ("feature cache (one backbone pass)",
              f"{t['feature_cache_s']:.1f} s" if t.get("feature_cache_s") else None),
             ("total", f"{t['total_s']:.1f} s" if "total_s" in t else None),
             ("peak memory", f"{record['peak_memory_mb']:,.0f} MB" if record.get("peak_memory_mb") else None)]
    rows = "".join(f"<tr><td>{escape(k)}</td><td class='n'>{escape(v)}</td></tr>" for k, v in items if v is not None)
    return f"<h2>Cost</h2><table>{rows}</table>"


def _recipe_and_environment(record: dict[str, Any]) -> str:
    env = record.get("environment", {})
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    where = (f"{env.get('device', '?')} · {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores) · "
             f"{env.get('num_processes', 1)} process(es) · precision {env.get('mixed_precision', '?')} · "
             f"Python {env.get('python', '?')}")
    recipe = json.dumps(record["recipe"], indent=2)
    return (f"<h2>Where it ran</h2><p>{escape(where)}<br><small>{escape(packages)}</small></p>"
            f"<h2>Recipe</h2><details><summary>the resolved recipe</summary><pre><code>{escape(recipe)}</code></pre>"
            "</details>")
