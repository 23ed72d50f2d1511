"""Charts as inline SVG, drawn by matplotlib: a report is one self-contained file that opens with no network."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
MIN_FONT = 6.0
"""Points: no text in a chart is drawn smaller; what cannot fit at this size is left out and the caption says so."""
LABEL_CHARS = 18
"""Class names longer than this are shortened in a confusion matrix (the middle gives way), full in a tooltip."""


def _figure(width: float = 6.4, height: float = 3.2, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})
    return plt.subplots(figsize=(width, height), ncols=ncols)


def _svg(fig: Any, bottom: float = 0.0) -> str:
    """The figure as inline SVG; `bottom`: the share of its height kept free below the axes (for a legend)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG goes inline in HTML


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
               marks: dict[str, tuple[float, float]] | None = None, log_y: bool = False, log_x: bool = False) -> str:
    """One line per series {name: (x, y)}; `marks` {label: (x, y)} are drawn as labelled points. A series of one
    point (a run with one evaluation) is a dot big enough to see, on axes that give it a range (`flat_limits`)."""
    fig, ax = _figure()
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, label=name, color=PALETTE[i % len(PALETTE)], marker="o" if len(x) < 30 else None,
                markersize=7 if len(x) == 1 else 3, linewidth=1.5)
    for label, (x, y) in (marks or {}).items():
        ax.plot([x], [y], marker="*", markersize=13, color="#111827", linestyle="none", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if not log_x and all(float(v).is_integer() for _, (x, _) in series.items() for v in x):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and folds: no 1.25
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    points = [*series.values(), *(([x], [y]) for x, y in (marks or {}).values())]
    xs, ys = [float(v) for x, _ in points for v in x], [float(v) for _, y in points for v in y]
    if (limits := flat_limits(xs, log=log_x, share=False)) is not None:
        ax.set_xlim(*limits)
    if (limits := flat_limits(ys, log=log_y, share=True)) is not None:
        ax.set_ylim(*limits)
    elif all(len(x) == 1 for x, _ in series.values()):
        ax.margins(y=0.15)  # points only (one evaluation each): none on the axis's edge, half cut off
    if len(series) + len(marks or {}) > 1:
        ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def flat_limits(values: Sequence[float], *, log: bool, share: bool) -> tuple[float, float] | None:
    """Axis limits for values with no spread (one evaluation, a constant LR): from zero to twice the value, kept
    within [0, 1] for a `share` such as accuracy, or a decade either side on a log axis. None when the values
    spread: matplotlib's own range is right then (for one value it would zoom to ±5% and tick noise)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite or max(finite) - min(finite) > 1e-9 * max(1.0, abs(max(finite))):
        return None
    value = finite[0]
    if log:
        return value / 10, value * 10
    if value == 0:
        return -1.0, 1.0
    low, high = sorted((0.0, 2 * value))
    if share and 0 < value <= 1:
        high = min(high, 1.0)
    pad = 0.05 * (high - low)
    return low - pad, high + pad


@dataclass(frozen=True)
class MatrixLayout:
    """How a confusion matrix of this many classes is drawn so that no text overlaps (sizes in inches, fonts in
    points)."""
    figsize: tuple[float, float]
    cell: float
    """One cell's side, points: the pitch of the tick labels."""
    tick_font: float
    count_font: float | None
    """None: the cells are too small for their counts at MIN_FONT, and none are drawn."""
    labels: list[str]
    """The tick labels as drawn: long names shortened."""
    every: int
    """A tick label for every `every`-th class (1 up to a few dozen classes)."""
    blank_zeros: bool
    """Past ten classes most cells are 0: those stay blank so the confusions stand out."""


def matrix_layout(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> MatrixLayout:
    """The figure grows with the class count (up to 9 inches of matrix); fonts follow the cell size."""
    n = max(1, len(labels))
    side = min(9.0, max(2.4, 0.36 * n))
    cell = side * 72 / n
    tick_font = min(9.0, cell / 1.4)  # a line of text and some air per cell
    every = 1 if tick_font >= MIN_FONT else math.ceil(MIN_FONT * 1.4 / cell)
    tick_font = max(tick_font, MIN_FONT)
    digits = len(str(max((max(row, default=0) for row in matrix), default=0)))
    count_font = min(8.0, cell * 0.6, cell * 0.85 / (0.6 * digits))  # a digit is about 0.6 em wide
    shown = short_labels(labels)
    margin = max((len(s) for s in shown), default=1) * 0.6 * tick_font / 72 + 0.5  # tick labels and axis title
    return MatrixLayout((side + margin, side + margin * 0.75), cell, tick_font,
                        count_font if count_font >= MIN_FONT else None, shown, every, n > 10)


def short_labels(labels: Sequence[str], limit: int = LABEL_CHARS) -> list[str]:
    """Names longer than `limit` lose their middle (class names differ at either end: `dog_breed_…_terrier`);
    numbered when two would read alike."""
    head = (limit - 1) * 2 // 3
    shown = [s if len(s) <= limit else f"{s[:head]}…{s[len(s) - (limit - 1 - head):]}" for s in map(str, labels)]
    if len(set(shown)) < len(shown):
        shown = [f"{i}: {s}" for i, s in enumerate(shown)]
    return shown


def heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A confusion matrix: true classes down, predicted across, each cell with its count where it fits, laid out by
    `matrix_layout`; shortened class names carry the full name as a tooltip."""
    import numpy as np

    layout = matrix_layout(matrix, labels)
    counts = np.asarray(matrix)
    n = len(labels)
    fig, ax = _figure(*layout.figsize)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ticks = range(0, n, layout.every)
    ax.set_xticks(ticks, [layout.labels[i] for i in ticks], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, [layout.labels[i] for i in ticks])
    ax.tick_params(labelsize=layout.tick_font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    tooltips = {}
    for axis, texts in (("pred", ax.get_xticklabels()), ("true", ax.get_yticklabels())):
        for i, text in zip(ticks, texts, strict=True):
            if layout.labels[i] != labels[i]:
                text.set_gid(f"cm-{axis}-{i}")
                tooltips[f"cm-{axis}-{i}"] = labels[i]
    if layout.count_font is not None:
        for i in range(n):
            for j in range(n):
                if counts[i, j] or not layout.blank_zeros:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=layout.count_font,
                            color="white" if shares[i, j] > 0.5 else "#111827")
    svg = _svg(fig)
    for gid, name in tooltips.items():  # SVG shows a group's <title> on hover
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{html.escape(str(name))}</title>', 1)
    return svg


def reliability_chart(panels: dict[str, list[dict[str, Any]]]) -> str:
    """A reliability diagram per panel {title: bins}, side by side: each bin's accuracy as a bar over its confidence
    range, its mean confidence as a tick, the diagonal where accuracy equals confidence, and the bin's example count
    in a row above the plot. Bins are dicts with lower, upper, count, confidence and accuracy (None when empty)."""
    import numpy as np

    fig, axes = _figure(6.4, 3.6, ncols=len(panels))
    panes = np.atleast_1d(axes)
    for ax, (title, bins) in zip(panes, panels.items(), strict=True):
        full = [b for b in bins if b["count"]]
        ax.plot([0, 1], [0, 1], color="#9ca3af", linestyle="--", linewidth=1, label="perfectly calibrated")
        ax.bar([b["lower"] for b in full], [b["accuracy"] for b in full], width=[b["upper"] - b["lower"] for b in full],
               align="edge", color=PALETTE[0], alpha=0.75, edgecolor="white", label="accuracy")
        ax.plot([b["confidence"] for b in full], [b["confidence"] for b in full], linestyle="none", marker="_",
                markersize=8, color=PALETTE[1], label="mean confidence")
        for b in full:  # in a row above the plot's top, clear of the bars and the confidence ticks
            ax.text((b["lower"] + b["upper"]) / 2, 1.03, str(b["count"]), ha="center", va="bottom",
                    fontsize=MIN_FONT, rotation=90)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.22)  # room for the counts above accuracy 1
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=9)
    handles, names = panes[0].get_legend_handles_labels()
    fig.legend(handles, names, frameon=False, fontsize=8, loc="lower center", ncol=len(names))
    return _svg(fig, bottom=0.08)  # the legend's row below the panels


def scatter_chart(points: dict[str, tuple[float, float, float, float]], *, xlabel: str, ylabel: str) -> str:
    """One labelled point per name {name: (x, y, x spread, y spread)}, the spreads drawn as error bars (0: none)."""
    fig, ax = _figure(6.4, 3.6)
    for i, (name, (x, y, dx, dy)) in enumerate(points.items()):
        colour = PALETTE[i % len(PALETTE)]
        ax.errorbar([x], [y], xerr=[dx] if dx else None, yerr=[dy] if dy else None, marker="o", markersize=7,
                    color=colour, capsize=3, linestyle="none")
        ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=8, color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.margins(0.15)  # room for the names beside the points
    for axis, i in ((ax.set_xlim, 0), (ax.set_ylim, 1)):
        limits = flat_limits([p[i] for p in points.values()], log=False, share=True)
        if limits is not None:
            axis(*limits)
    return _svg(fig)


def prediction_scatter(truth: Sequence[float], predicted: Sequence[float], *, name: str) -> str:
    """A regression's predicted values against the true ones, one dot per example, with the line a perfect model's
    dots would lie on."""
    fig, ax = _figure(4.2, 4.0)
    ax.scatter(truth, predicted, s=9, alpha=0.5, color=PALETTE[0], linewidths=0)
    both = [*truth, *predicted]
    low, high = (min(both), max(both)) if both else (0.0, 1.0)
    ax.plot([low, high], [low, high], color=PALETTE[7], linewidth=1, linestyle="--", label="predicted = true")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.legend(loc="upper left", frameon=False)
    return _svg(fig)


def trials_chart(trials: list[dict[str, Any]], *, ylabel: str, minimize: bool) -> str:
    """A sweep's trials over time: each complete trial's objective against its number, pruned trials (hollow) at
    their last evaluation, and the best so far as a step line."""
    fig, ax = _figure(6.4, 3.4)
    done = [t for t in trials if t["state"] == "complete"]
    pruned = [t for t in trials if t["state"] == "pruned" and t["evaluations"]]
    ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", color=PALETTE[0], markersize=5,
            label="complete")
    if pruned:
        ax.plot([t["number"] for t in pruned], [t["evaluations"][-1] for t in pruned], "o", markersize=5,
                markerfacecolor="none", color="#6b7280", label="pruned (last evaluation)")
    pick = min if minimize else max
    best, xs, ys = None, [], []
    for t in done:
        best = t["value"] if best is None else pick(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#111827", linewidth=1.2, label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def bar_chart(values: dict[str, float], *, xlabel: str) -> str:
    """Horizontal bars, largest on top."""
    fig, ax = _figure(6.4, 0.9 + 0.35 * len(values))
    names = sorted(values, key=values.get)
    ax.barh(names, [values[n] for n in names], color=PALETTE[0])
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    return _svg(fig)


def parallel_chart(axes: dict[str, list[tuple[float, str]]], lines: list[list[float]], scores: list[float], *,
                   highlight: int | None, label: str) -> str:
    """Parallel coordinates: one vertical axis per name in `axes` ({name: [(position 0-1, tick label), ...]}), one
    polyline per row of `lines` (positions 0-1 on each axis), coloured by its score; row `highlight` drawn on top."""
    import matplotlib
    from matplotlib.cm import ScalarMappable

    fig, ax = _figure(6.4 if len(axes) < 6 else 1.1 * len(axes), 3.6)
    low, high = (min(scores), max(scores)) if scores else (0.0, 1.0)
    norm = matplotlib.colors.Normalize(low, high if high > low else low + 1e-9)
    cmap = matplotlib.colormaps["viridis"]
    xs = list(range(len(axes)))
    for i, (row, score) in enumerate(zip(lines, scores, strict=True)):
        if i != highlight:
            ax.plot(xs, row, color=cmap(norm(score)), linewidth=1, alpha=0.75)
    if highlight is not None:
        ax.plot(xs, lines[highlight], color="#dc2626", linewidth=2.5, label="best")
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0, 1.12))
    for x, ticks in zip(xs, axes.values(), strict=True):
        ax.axvline(x, color="#6b7280", linewidth=0.8)
        for y, text in ticks:
            ax.text(x + 0.03, y, text, fontsize=MIN_FONT + 1, va="center", color="#374151")
    ax.set_xticks(xs, short_labels(list(axes), limit=28), rotation=20, ha="right", rotation_mode="anchor")
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(axes) - 0.5)
    ax.grid(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=label, fraction=0.04, pad=0.02)
    return _svg(fig)
