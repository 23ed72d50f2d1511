"""Charts as inline SVG, drawn by matplotlib: a report is one self-contained file that opens with no network."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]


def _figure(width: float = 6.4, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})
    return plt.subplots(figsize=(width, height))


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG goes inline in HTML


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
               marks: dict[str, tuple[float, float]] | None = None, log_y: bool = False, log_x: bool = False) -> str:
    """One line per series {name: (x, y)}; `marks` {label: (x, y)} are drawn as labelled points."""
    fig, ax = _figure()
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, label=name, color=PALETTE[i % len(PALETTE)], marker="o" if len(x) < 30 else None,
                markersize=3, linewidth=1.5)
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
    if len(series) + len(marks or {}) > 1:
        ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A confusion matrix: true classes down, predicted across, each cell with its count."""
    import numpy as np

    counts = np.asarray(matrix)
    size = min(9.0, 2.2 + 0.45 * len(labels))
    fig, ax = _figure(size + 1.0, size)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "#111827")
    return _svg(fig)
