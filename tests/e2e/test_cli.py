"""The `graft` command end to end: train, eval, predict and --help as real subprocesses, user errors in-process.

The installed console script is run (cli.py has `main()` but no `__main__` guard). Each subprocess pays ~5 s of
imports, so one trained run is shared by the module and the error cases call `graft.cli.main()` in-process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import graft
import graft.pipeline
from graft.cli import main
from tests.conftest import KEYWORDS, make_texts, tiny_recipe, write_csv

GRAFT = Path(sys.executable).parent / "graft"
LABELS = sorted(KEYWORDS)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "COLUMNS": "200"}


def graft_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRAFT), *args], cwd=cwd, env=ENV, input=stdin, capture_output=True, text=True,
                          timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def printed_accuracy(stdout: str, title: str = "test") -> str:
    found = re.search(rf"^{re.escape(title)}: accuracy (\d\.\d{{4}}) .*\(n=(\d+)\)$", stdout, re.MULTILINE)
    assert found, stdout
    return f"{found[1]} n={found[2]}"


@dataclass
class CliRun:
    root: Path
    """The working directory: recipe.yaml, train.csv and runs/cli."""
    run_dir: Path
    train: subprocess.CompletedProcess[str]

    @property
    def record(self) -> dict:
        return json.loads((self.run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def cli_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """`graft train recipe.yaml --set ...` run once from the recipe's folder: relative data path and output.dir,
    epochs and output.dir overridden by --set."""
    root = tmp_path_factory.mktemp("cli")
    write_csv(root / "train.csv", make_texts(120, seed=1))
    tree = tiny_recipe(tiny_bert, Path("train.csv"), Path("runs/not-this-one"))
    (root / "recipe.yaml").write_text(yaml.safe_dump(tree))
    done = graft_cli("train", "recipe.yaml", "--set", "train.epochs=10", "--set", "output.dir=runs/cli", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return CliRun(root, root / "runs" / "cli", done)


def test_train_writes_the_run_and_prints_its_summary(cli_run: CliRun) -> None:
    record = cli_run.record
    assert record["status"] == "completed"
    assert record["recipe"]["train"]["epochs"] == 10
    assert (cli_run.root / record["recipe"]["data"]["train"]).resolve() == (cli_run.root / "train.csv").resolve()
    assert record["recipe"]["output"]["dir"] == "runs/cli"
    assert not (cli_run.root / "runs" / "not-this-one").exists()
    test = record["metrics"]["test"]
    assert test["accuracy"] >= 0.7  # 3 balanced classes: chance is 1/3
    assert cli_run.train.stdout.startswith("run: runs/cli\n")
    assert printed_accuracy(cli_run.train.stdout) == f"{test['accuracy']:.4f} n={test['n']}"
    assert "Traceback" not in cli_run.train.stderr
    assert "Warning:" not in cli_run.train.stderr and "Writing model shards" not in cli_run.train.stderr


def test_version_is_the_installed_one(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = graft_cli("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"graft {version('graft')}\n")


def test_library_deprecation_notices_stay_out_of_the_terminal_but_graft_s_own_and_w_flags_do_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from graft.cli import quiet_libraries

    def shown(module: str, warnoptions: list[str]) -> list[str]:
        monkeypatch.setattr(sys, "warnoptions", warnoptions)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_libraries()
            warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module=module)
        return [str(w.message) for w in caught]

    assert shown("transformers.modeling_utils", []) == []
    assert shown("peft.tuners", []) == []
    assert shown("graft.training.loop", []) == ["old API"]
    assert shown("transformers.modeling_utils", ["default"]) == ["old API"]  # python -W default: the user asked


def test_eval_prints_the_run_test_accuracy(cli_run: CliRun) -> None:
    done = graft_cli("eval", "runs/cli", cwd=cli_run.root)
    assert done.returncode == 0, done.stderr[-3000:]
    test = cli_run.record["metrics"]["test"]
    assert printed_accuracy(done.stdout) == f"{test['accuracy']:.4f} n={test['n']}"
    for label in LABELS:  # the per-class table
        assert re.search(rf"^\s+{label}\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+\d+$", done.stdout, re.MULTILINE)


def test_eval_on_another_file_equals_the_api(cli_run: CliRun) -> None:
    other = write_csv(cli_run.root / "other.csv", make_texts(30, seed=7))
    done = graft_cli("eval", "runs/cli", "--data", "other.csv", "--output", "other-metrics.json", cwd=cli_run.root)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((cli_run.root / "other-metrics.json").read_text())
    assert written["n"] == 30
    assert printed_accuracy(done.stdout, "other.csv") == f"{written['accuracy']:.4f} n=30"
    api = graft.evaluate(cli_run.run_dir, other)
    assert written["confusion_matrix"] == api["confusion_matrix"]
    assert written["accuracy"] == pytest.approx(api["accuracy"])
    assert written["accuracy"] >= 0.7


def test_predict_writes_a_probability_column_per_label(cli_run: CliRun) -> None:
    rows = make_texts(24, seed=9)
    write_csv(cli_run.root / "in.csv", rows)
    done = graft_cli("predict", "runs/cli", "in.csv", "--output", "out.csv", cwd=cli_run.root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    assert "24 predictions written to out.csv" in done.stderr

    with (cli_run.root / "out.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        out = list(reader)
    assert reader.fieldnames == ["text", "label", "score", *(f"p_{label}" for label in LABELS)]
    assert [r["text"] for r in out] == [text for text, _ in rows]
    for r in out:
        probs = {label: float(r[f"p_{label}"]) for label in LABELS}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(probs, key=probs.__getitem__)
        assert float(r["score"]) == pytest.approx(max(probs.values()))
    correct = sum(r["label"] == label for r, (_, label) in zip(out, rows, strict=True))
    assert correct / len(rows) >= 0.7


def test_predict_reads_stdin_and_prints_json_lines(cli_run: CliRun) -> None:
    texts = [text for text, _ in make_texts(5, seed=13)]
    done = graft_cli("predict", "runs/cli", "-", cwd=cli_run.root, stdin="\n".join(texts[:2]) + "\n\n" +
                     "\n".join(texts[2:]) + "\n")
    assert done.returncode == 0, done.stderr[-3000:]
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in out] == texts  # the blank line is no text
    for r in out:
        assert set(r) == {"text", "label", "score", "probabilities"}
        assert list(r["probabilities"]) == LABELS
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].__getitem__)


HELP = {
    "train": ["RECIPE.yaml", "--set", "KEY.PATH=VALUE", "--resume", "--overwrite"],
    "eval": ["RUN_DIR", "--data", "--output", "test split"],
    "predict": ["RUN_DIR", "INPUT", "stdin", "--output", "column per label"],
}


@pytest.mark.parametrize("command", list(HELP))
def test_help_mentions_the_arguments(command: str, tmp_path: Path) -> None:
    done = graft_cli(command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split()).lower()  # undo rich's wrapping; typer writes run_dir in lower case
    missing = [word for word in HELP[command] if word.lower() not in text]
    assert not missing, done.stdout


def test_user_error_is_one_line_on_stderr_with_exit_code_2(cli_run: CliRun, tmp_path: Path) -> None:
    # A data error: it happens after torch, transformers and accelerate are imported and set up.
    write_csv(tmp_path / "bad.csv", make_texts(30, seed=2), header=("sentence", "label"))
    done = graft_cli("train", str(cli_run.root / "recipe.yaml"), "--set", f"data.train={tmp_path / 'bad.csv'}",
                     "--set", f"output.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: bad.csv: no column 'text'")
    assert done.stdout == ""


# In-process from here: `graft train` through `graft.cli.main()`, one user error per case.


@dataclass
class Case:
    expected: list[str]
    """Fragments the one error line must hold: the file/field, the row where one applies, the fix."""
    train: list[tuple[str, str]] = field(default_factory=lambda: make_texts(60, seed=2))
    header: tuple[str, str] = ("text", "label")
    validation: list[tuple[str, str]] | None = None
    test: list[tuple[str, str]] | None = None
    sections: dict = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


ROWS = make_texts(60, seed=2)  # labels cycle billing, delivery, login


def replaced(index: int, row: tuple[str, str]) -> list[tuple[str, str]]:
    rows = list(ROWS)
    rows[index] = row
    return rows


CASES = {
    "unknown_key": Case(["recipe.yaml: unknown key 'schedule.warmup_ration'", "did you mean 'schedule.warmup_ratio'?"],
                        sections={"schedule": {"warmup_ration": 0.1}}),
    "bad_value": Case(["recipe.yaml: schedule.name = 'cosin'", "allowed: 'constant', 'linear', 'cosine'"],
                      sections={"schedule": {"name": "cosin"}}),
    "bad_value_by_set": Case(["recipe.yaml: train.epochs = 'two'", "valid integer"],
                             args=["--set", "train.epochs=two"]),
    "missing_column": Case(["train.csv: no column 'text'", "(columns: sentence, label)", "set data.text_column"],
                           header=("sentence", "label")),
    "empty_text": Case(["train.csv: empty text in column 'text', row 3", "fill or remove those rows"],
                       train=replaced(2, ("   ", "login"))),
    "unseen_label": Case(["val.csv: label 'refunds' (row 2) not in train.csv", "(labels: billing, delivery, login)",
                          "add examples of the label to train.csv"],
                         train=ROWS[:40], validation=[ROWS[40], ("a refund please", "refunds"), *ROWS[41:50]],
                         test=ROWS[50:]),
    "label_case": Case(["'delivery' (train.csv row 2)", "'DELIVERY ' (train.csv row 5)",
                        "set data.normalize_labels: true"], train=replaced(4, (ROWS[4][0], "DELIVERY "))),
    "leakage": Case(["test.csv: 1 text also in train.csv", "test.csv row 6 = train.csv row 8",
                     "remove them or set data.leakage: drop"],
                    train=ROWS[:40], validation=ROWS[40:50], test=[*ROWS[50:55], ROWS[7], *ROWS[55:]]),
    "too_few_to_stratify": Case(["train.csv: class 'other' has 2 examples", "at least 3 per class",
                                 "add examples, remove the class, or give data.validation and data.test"],
                                train=[*ROWS[:30], ("password reset please", "other"), ("account locked", "other")]),
    "model_not_available": Case(["model.name 'graft-tests/no-such-model'", "not a local directory",
                                 "give a local model directory"],
                                args=["--set", "model.name=graft-tests/no-such-model"]),
    "bad_set_syntax": Case(["--set 'optim.lr': expected key.path=value", "e.g. --set optim.lr=1e-4"],
                           args=["--set", "optim.lr"]),
    "set_into_a_value": Case(["--set 'optim.lr.x=1'", "'lr' is a value, not a section"],
                             args=["--set", "optim.lr.x=1"]),
}


def write_case(case: Case, folder: Path, model: Path) -> Path:
    """The case's files in `folder`; the path of its recipe."""
    data: dict[str, str] = {}
    write_csv(folder / "train.csv", case.train, case.header)
    for key, rows, name in (("validation", case.validation, "val.csv"), ("test", case.test, "test.csv")):
        if rows is not None:
            data[key] = name
            write_csv(folder / name, rows)
    tree = tiny_recipe(model, Path("train.csv"), folder / "run", data=data, **case.sections)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(tree))
    return folder / "recipe.yaml"


def user_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
               code: int = 2) -> str:
    """Run `graft ARGS` in-process; check it exits with `code` and one stderr line; return that line."""
    monkeypatch.setattr(sys, "argv", ["graft", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_user_error_names_the_place_and_the_fix(name: str, tiny_bert: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    # The model lookup must end in the local cache, never on the network.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    recipe = write_case(case, tmp_path, tiny_bert)
    line = user_error(monkeypatch, capsys, "train", str(recipe), *case.args)
    assert line.startswith("error: ")
    missing = [fragment for fragment in case.expected if fragment not in line]
    assert not missing, line
    assert not (tmp_path / "run" / "run.json").exists()


def test_existing_run_is_refused_and_left_untouched(cli_run: CliRun, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(cli_run.run_dir)
    line = user_error(monkeypatch, capsys, "train", str(cli_run.root / "recipe.yaml"),
                      "--set", f"output.dir={cli_run.run_dir}")
    assert line == (f"error: output.dir {cli_run.run_dir} already holds a run (completed); pass --resume to continue "
                    f"it, --overwrite to replace it, or choose another output.dir")
    assert snapshot(cli_run.run_dir) == before
    assert sorted(p.name for p in cli_run.run_dir.parent.iterdir()) == ["cli"]


def test_eval_finds_the_run_data_from_another_directory(cli_run: CliRun, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert graft.evaluate(cli_run.run_dir)["accuracy"] == cli_run.record["metrics"]["test"]["accuracy"]


def test_failed_overwrite_keeps_the_old_run(cli_run: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    old = shutil.copytree(cli_run.run_dir, tmp_path / "run")
    before = snapshot(old)
    write_csv(tmp_path / "bad.csv", make_texts(30, seed=2), header=("sentence", "label"))
    line = user_error(monkeypatch, capsys, "train", str(cli_run.root / "recipe.yaml"), "--overwrite",
                      "--set", f"data.train={tmp_path / 'bad.csv'}", "--set", f"output.dir={old}")
    assert "no column 'text'" in line
    assert snapshot(old) == before


def test_ctrl_c_says_how_to_resume(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(graft.pipeline, "train", interrupted)
    line = user_error(monkeypatch, capsys, "train", str(tmp_path / "recipe.yaml"), code=130)
    assert "--resume" in line


def test_ctrl_c_hint_repeats_the_set_flags_and_knows_when_nothing_was_saved(
        tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The resume command the user is told to run is the one that resumes this run: with its --set flags; and a
    run stopped before its first checkpoint is told to start again, not to resume."""
    def interrupted(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    write_csv(tmp_path / "train.csv", make_texts(30, seed=1))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tiny_bert, Path("train.csv"), tmp_path / "run")))
    monkeypatch.setattr(graft.pipeline, "train", interrupted)
    flags = ["--set", "train.epochs=2", "--set", "data.text_column=text"]
    line = user_error(monkeypatch, capsys, "train", str(tmp_path / "recipe.yaml"), *flags, code=130)
    assert line == (f"interrupted; no checkpoint was saved yet; start again with `graft train {tmp_path}/recipe.yaml "
                    f"--set train.epochs=2 --set data.text_column=text --overwrite`")
    (tmp_path / "run" / "checkpoints" / "step-00000003").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000003" / "loop_state.json").write_text("{}")
    line = user_error(monkeypatch, capsys, "train", str(tmp_path / "recipe.yaml"), *flags, code=130)
    assert line.endswith("--set train.epochs=2 --set data.text_column=text --resume`"), line


def test_replacement_that_fails_in_training_never_loses_the_completed_run(
        cli_run: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    old = shutil.copytree(cli_run.run_dir, tmp_path / "run")
    before = snapshot(old)
    diverge = ["--set", "optim.name=sgd", "--set", "optim.lr=1e4", "--set", "optim.weight_decay=0.01",
               "--set", "train.max_grad_norm=null",
               "--set", f"output.dir={old}", "--overwrite"]
    for attempt in (1, 2):  # a second failed replacement must discard the failed one, not the completed run
        monkeypatch.setattr(sys, "argv", ["graft", "train", str(cli_run.root / "recipe.yaml"), *diverge])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err.splitlines()
        assert exited.value.code == 2
        assert err[-1].startswith("error: step ") and "diverged" in err[-1], attempt
        assert any(f"the run this one was replacing is kept at {old}.replaced" in line for line in err)
        assert snapshot(tmp_path / "run.replaced") == before
    assert json.loads((old / "run.json").read_text())["status"] == "failed"
