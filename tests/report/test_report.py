"""report.html: written by every run, re-rendered from files alone, honest about overfitting, and drawn for real in
a headless browser (Debian's chromium, which CI installs): no console errors, every chart has an area."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.report import write_report
from graft.report.page import overfitting
from tests.conftest import make_texts, tiny_recipe, write_csv

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = write_csv(root / "train.csv", make_texts(120, seed=1))
    graft.train(tiny_recipe(tiny_bert, data, root / "run", train={"epochs": 6}, optim={"lr": 3e-3}))
    return root / "run"


def test_every_run_writes_its_report(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    for section in ("Curves", "Test set", "What trained", "Cost", "Where it ran", "Recipe"):
        assert f">{section}<" in page, section
    assert page.count("<svg") >= 4  # loss, metrics, learning rate, throughput, confusion matrix
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch: it opens offline


def test_the_report_shows_the_most_confident_mistakes(run_dir: Path) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    mistakes, test = record["mistakes"], record["metrics"]["test"]
    wrong = test["n"] - round(test["accuracy"] * test["n"])
    assert bool(mistakes) == bool(wrong) and len(mistakes) <= wrong
    assert all(m["label"] != m["predicted"] and m["confidence"] > m["p_label"] for m in mistakes)
    for label in record["data"]["labels"]:
        ours = [m["confidence"] for m in mistakes if m["label"] == label]
        assert len(ours) <= 3 and ours == sorted(ours, reverse=True)
    if mistakes:
        assert "Most confident mistakes" in (run_dir / "report.html").read_text()


def test_graft_report_rerenders_from_files_alone_without_torch(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model", "report.html"))
    code = ("import sys; from graft.cli import main; sys.argv = ['graft', 'report', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'the report imported torch'")
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (copy / "report.html").read_text().count("<svg") >= 4


def _without_history(run_dir: Path, copy: Path) -> Path:
    """A copy of the run whose record has no history, so the report reads metrics.jsonl."""
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model"))
    record = json.loads((copy / "run.json").read_text())
    record["metrics"]["history"] = []
    (copy / "run.json").write_text(json.dumps(record))
    return copy


def test_a_run_without_history_in_its_record_reads_metrics_jsonl(run_dir: Path, tmp_path: Path) -> None:
    copy = _without_history(run_dir, tmp_path / "copy")
    assert write_report(copy).read_text().count("<svg") >= 4


def test_a_half_written_last_line_of_metrics_jsonl_is_left_out(run_dir: Path, tmp_path: Path) -> None:
    copy = _without_history(run_dir, tmp_path / "copy")
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-line
    assert write_report(copy).read_text().count("<svg") >= 4
    (copy / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(graft.GraftError, match=r"metrics.jsonl line 2: not valid JSON"):
        write_report(copy)


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(result.exception, graft.GraftError) and "no run.json" in str(result.exception)


def test_overfitting_is_named_only_when_validation_rises_as_training_falls() -> None:
    train = [{"step": s, "loss": 1.0 / s} for s in range(1, 11)]
    rising = [{"step": s, "loss": v} for s, v in ((2, 0.8), (4, 0.5), (6, 0.6), (8, 0.7), (10, 0.9))]
    said = overfitting(train, rising)
    assert said and "0.5000 at step 4" in said and "0.9000 at step 10" in said
    falling = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6, 8, 10)]
    assert overfitting(train, falling) is None
    flat_train = [{"step": s, "loss": 0.5} for s in range(1, 11)]
    assert overfitting(flat_train, rising) is None  # both got worse: not overfitting, something else


def test_text_is_escaped(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model"))
    record = json.loads((copy / "run.json").read_text())
    record["mistakes"] = [{"input": "<script>alert(1)</script>", "label": "a", "predicted": "b",
                           "confidence": 0.9, "p_label": 0.1}]
    (copy / "run.json").write_text(json.dumps(record))
    page = write_report(copy).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")
def test_the_report_renders_in_a_real_browser(run_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must install Debian's chromium for this test (.ci/run does)"
    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:"))
                else None)
        page.goto((run_dir / "report.html").as_uri())
        boxes = [page.locator("figure svg").nth(i).bounding_box() for i in range(page.locator("figure svg").count())]
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(boxes) >= 4 and all(b and b["width"] > 200 and b["height"] > 100 for b in boxes), boxes


def test_cross_validation_runs_k_folds_and_reports_mean_and_std(tiny_bert: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "train.csv", make_texts(60, seed=2))
    recipe = tiny_recipe(tiny_bert, data, tmp_path / "cv", train={"epochs": 2}, optim={"lr": 3e-3})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "recipe.yaml"), "--cv", "3"])
    assert result.exit_code == 0, result.output
    assert "3-fold cross-validation: accuracy" in result.output and " ± " in result.output
    summary = json.loads((tmp_path / "cv" / "run.json").read_text())
    folds = summary["cv"]["folds"]
    accuracies = [f["test"]["accuracy"] for f in folds]
    assert len(folds) == 3 and summary["cv"]["mean"]["accuracy"] == pytest.approx(sum(accuracies) / 3)
    # The folds' test sets partition the data: every text is tested exactly once.
    tested = []
    for i in range(3):
        rows = (tmp_path / "cv" / "folds" / f"fold-{i}" / "test.csv").read_text().splitlines()[1:]
        tested += rows
        assert json.loads((tmp_path / "cv" / f"fold-{i}" / "run.json").read_text())["status"] == "completed"
    assert len(tested) == len(set(tested)) == 60
    assert (tmp_path / "cv" / "report.html").read_text().count("± ") >= 2

    # Interrupted or repeated: completed folds are not trained again.
    before = (tmp_path / "cv" / "fold-1" / "run.json").stat().st_mtime_ns
    graft.cross_validate(tmp_path / "recipe.yaml", 3)
    assert (tmp_path / "cv" / "fold-1" / "run.json").stat().st_mtime_ns == before


def test_cross_validation_refuses_a_class_smaller_than_k(tiny_bert: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "train.csv", [*make_texts(60, seed=2)[:58], ("one more odd text", "rare")])
    with pytest.raises(graft.GraftError, match=r"class 'rare' has 1 example; --cv 3 needs at least 3 per class"):
        graft.cross_validate(tiny_recipe(tiny_bert, data, tmp_path / "cv"), 3)


def test_an_image_run_shows_its_mistakes_as_thumbnails(tmp_path: Path, image_folder: Path,
                                                       plain_checkpoint: Path) -> None:
    from tests.conftest import PLAIN_NETS, image_recipe

    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    # One tiny step from a random head: there are mistakes to show.
    record = graft.train(image_recipe(model, image_folder, tmp_path / "run", train={"epochs": 1, "max_steps": 1},
                                      optim={"lr": 1e-6}))
    assert record["mistakes"] and all(Path(m["input"]).is_file() for m in record["mistakes"])
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(record["mistakes"])


def test_cross_validation_of_an_image_folder(tmp_path: Path, plain_checkpoint: Path) -> None:
    from tests.conftest import PLAIN_NETS, image_recipe, make_images

    folder = make_images(tmp_path / "train", per_class=6, seed=3)
    model = {"name": f"{PLAIN_NETS}:small_cnn", "checkpoint": str(plain_checkpoint)}
    summary = graft.cross_validate(image_recipe(model, folder, tmp_path / "cv", train={"epochs": 1}), 3)
    listed = [line.split(",")[0] for i in range(3)
              for line in (tmp_path / "cv" / "folds" / f"fold-{i}" / "test.csv").read_text().splitlines()[1:]]
    assert sorted(listed) == sorted(str(p) for p in folder.rglob("*.png"))  # each image tested exactly once
    assert len(summary["cv"]["folds"]) == 3 and 0 <= summary["cv"]["mean"]["accuracy"] <= 1
