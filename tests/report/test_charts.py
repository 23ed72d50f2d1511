"""The charts as drawn: read back from the SVG that goes in the page (tick labels, their positions and font sizes,
marker sizes), so a chart that draws but cannot be read fails here."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from graft.report.charts import LABEL_CHARS, MIN_FONT, flat_limits, heatmap, line_chart
from graft.report.page import render

LONG = [f"a_rather_long_class_name_{i:02d}" for i in range(30)]


def ticks(svg: str, axis: str) -> list[dict[str, Any]]:
    """Each tick label of `axis` ("x" or "y"): its text, position and font size in points."""
    out = []
    for group in svg.split(f'<g id="{axis}tick_')[1:]:
        text = re.search(r"<text ([^>]*)>([^<]*)</text>", group)
        place = re.search(r'x="([-\d.]+)" y="([-\d.]+)"|translate\(([-\d.]+) ([-\d.]+)\)', text.group(1)).groups()
        x, y = (place[0], place[1]) if place[0] is not None else (place[2], place[3])
        font = re.search(r"font-size: ([\d.]+)px", text.group(1)).group(1)
        out.append({"font": float(font), "x": float(x), "y": float(y), "text": text.group(2)})
    return out


def values(svg: str, axis: str) -> list[float]:
    return [float(t["text"].replace("\u2212", "-")) for t in ticks(svg, axis)]


def marker_radius(svg: str, colour: str) -> float:
    """The radius (points) of the round marker drawn in `colour`."""
    ref = re.search(rf'<use xlink:href="#(m\w+)"[^>]*style="fill: {colour}', svg)
    assert ref, f"no marker in {colour}"
    return float(re.search(rf'<path id="{ref.group(1)}" d="M 0 ([\d.]+)', svg).group(1))


def marker_inside(svg: str, colour: str) -> bool:
    """Whether the whole marker in `colour` lies inside the plotting area (none cut in half by its edge)."""
    x, y = map(float, re.search(rf'<use xlink:href="#m\w+" x="([-\d.]+)" y="([-\d.]+)" style="fill: {colour}',
                                svg).groups())
    left, top, width, height = map(float, re.search(r'<clipPath id="\w+">\s*<rect x="([-\d.]+)" y="([-\d.]+)" '
                                                    r'width="([\d.]+)" height="([\d.]+)"', svg).groups())
    r = marker_radius(svg, colour)
    return left + r < x < left + width - r and top + r < y < top + height - r


def counts(svg: str) -> list[tuple[str, float]]:
    """The numbers written in a confusion matrix's cells, with their font size."""
    return [(t, float(f)) for f, t in re.findall(r'<g id="text_\d+">\s*<text style="font-size: ([\d.]+)px[^>]*>'
                                                 r'(\d+)</text>', svg)]


def confusion(n: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randint(40, 150) if i == j else rng.choice((0, 0, 0, 1, 2, 7)) for j in range(n)] for i in range(n)]


def test_one_evaluation_is_a_visible_point_on_a_sane_axis() -> None:
    svg = line_chart({"validation": ([12], [0.734])}, xlabel="step", ylabel="accuracy")
    xs, ys = values(svg, "x"), values(svg, "y")
    assert all(x.is_integer() for x in xs) and min(xs) <= 0 and max(xs) >= 12 and len(xs) >= 3, xs  # no 11.85
    assert min(ys) <= 0 and max(ys) >= 1 - 1e-9, ys  # a share on its own scale, not 0.70 to 0.77
    assert marker_radius(svg, "#2563eb") >= 3

    loss = line_chart({"validation": ([1], [2.3])}, xlabel="epoch", ylabel="loss")
    assert values(loss, "x") == [0, 1, 2] and min(values(loss, "y")) <= 0 < 2.3 < max(values(loss, "y"))

    # A comparison of 1-epoch runs: one point per strategy, at different heights.
    both = line_chart({"full": ([1], [0.72]), "head_only": ([1], [0.91])}, xlabel="epoch", ylabel="accuracy")
    assert values(both, "x") == [0, 1, 2]
    assert marker_inside(both, "#2563eb") and marker_inside(both, "#dc2626")


def test_one_validation_point_beside_a_training_line_keeps_the_training_axis() -> None:
    svg = line_chart({"train": (list(range(1, 13)), [1 / s for s in range(1, 13)]), "validation": ([12], [0.4])},
                     xlabel="step", ylabel="loss")
    assert min(values(svg, "x")) >= 0 and max(values(svg, "x")) <= 14  # the data's own range
    assert marker_radius(svg, "#dc2626") > 2 * marker_radius(svg, "#2563eb")  # the lone point stands out


@pytest.mark.parametrize(("data", "log", "share", "expected"), [
    ([0.9], False, True, (-0.05, 1.05)),
    ([0.2, 0.2], False, True, (-0.02, 0.42)),
    ([3e-4] * 5, True, False, (3e-5, 3e-3)),  # a constant learning rate on a log axis: a decade either side
    ([-2.0], False, False, (-4.2, 0.2)),
    ([0.0], False, True, (-1.0, 1.0)),
    ([0.1, 0.5], False, True, None),  # a spread: matplotlib's range stands
])
def test_flat_limits(data: list[float], log: bool, share: bool, expected: tuple[float, float] | None) -> None:
    got = flat_limits(data, log=log, share=share)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_thirty_classes_with_long_names_stay_legible() -> None:
    svg = heatmap(confusion(30), LONG)
    ys, xs = ticks(svg, "y"), ticks(svg, "x")
    assert len(ys) == len(xs) == 30
    font = ys[0]["font"]
    assert font >= MIN_FONT
    pitch = min(b["y"] - a["y"] for a, b in itertools.pairwise(ys))
    assert pitch >= 1.2 * font, (pitch, font)  # a line of text per row, with air: no overlap
    assert all(len(t["text"]) <= LABEL_CHARS for t in xs + ys) and len({t["text"] for t in ys}) == 30
    assert all(t["text"].endswith(name[-2:]) for t, name in zip(ys, LONG, strict=True))  # the tell-apart end stays
    assert all(svg.count(f"<title>{name}</title>") == 2 for name in LONG)  # full name on hover, on both axes
    cells = counts(svg)
    assert cells and min(f for _, f in cells) >= MIN_FONT
    assert max(len(t) * 0.6 * f for t, f in cells) <= pitch  # every count inside its cell
    widths = [float(re.search(r'<svg[^>]*width="([\d.]+)pt"', heatmap(confusion(n), LONG[:n])).group(1))
              for n in (3, 10, 30)]
    assert widths == sorted(widths) and widths[2] > 1.5 * widths[1], widths  # the figure grows with the classes


def test_too_many_classes_for_counts_drops_them_and_thins_the_labels() -> None:
    svg = heatmap(confusion(120), [f"c{i}" for i in range(120)])
    ys = ticks(svg, "y")
    assert not counts(svg) and 10 < len(ys) < 120
    page = render(record([f"c{i}" for i in range(120)]), Path("."))
    assert "the cells are too small for counts" in page and "one class in 2 is named" in page
    assert min(t["font"] for t in ys) >= MIN_FONT
    assert min(b["y"] - a["y"] for a, b in itertools.pairwise(ys)) >= 1.2 * ys[0]["font"]


def record(labels: list[str]) -> dict[str, Any]:
    """The least run.json the report page draws a test set from."""
    n = len(labels)
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for name in labels}
    return {"recipe": {"output": {"dir": "/runs/x"}, "model": {"name": "m"}, "strategy": {"name": "full"},
                       "task": "text_classification", "eval": {"metric": "accuracy"}},
            "status": "completed", "data": {"sizes": {"train": 1, "validation": 1, "test": 10 * n}, "labels": labels},
            "metrics": {"history": [], "test": {"accuracy": 0.5, "confusion_matrix": confusion(n),
                                                "per_class": per_class}}}


def test_the_page_gives_a_big_confusion_matrix_its_width(tmp_path: Path) -> None:
    small = render(record(["billing", "delivery", "login"]), tmp_path)
    assert "<figure class='square'><svg" in small and "<figure class='wide'>" not in small
    big = render(record(LONG), tmp_path)
    assert "<figure class='wide'><svg" in big and "<figure class='square'>" not in big  # not shrunk to 400 px
    assert "hover over one for the full name" in big and "blank cells are 0" in big
