"""Reports: run records rendered as pages people read. Reads files only; never imports torch."""

from __future__ import annotations

import json
from pathlib import Path

from graft.errors import GraftError
from graft.files import write_text

REPORT_FILE = "report.html"


def write_report(run_dir: Path | str) -> Path:
    """Render `run_dir/report.html` from its run.json (and metrics.jsonl, for a run that did not finish);
    written beside and renamed into place."""
    from graft.report.page import render, render_cv

    run_dir = Path(run_dir)
    record = _read_record(run_dir)
    if "cv" in record:
        return write_text(run_dir / REPORT_FILE, render_cv(record))
    metrics = record.setdefault("metrics", {})
    if not metrics.get("history"):
        metrics["history"] = _read_history(run_dir / "metrics.jsonl")
    return write_text(run_dir / REPORT_FILE, render(record, run_dir))


def _read_record(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise GraftError(f"{run_dir}: no run.json; give a run directory written by graft train")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GraftError(f"{path}: not valid JSON (line {e.lineno}); was it edited by hand?") from None


def _read_history(path: Path) -> list[dict]:
    """The logged rows; a last line cut short (the process was killed while writing it) is left out, a damaged
    line elsewhere is named."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise GraftError(f"{path} line {number}: not valid JSON; was it edited by hand?") from None
    return rows
