"""`graft export` writes a self-contained folder: no path of the machine that trained it (a plain module's factory
file travels inside, as a copy), files readable under the umask (not safetensors' 0600), and the model card."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.files import write_text, writing
from tests.conftest import PLAIN_NETS, image_recipe, make_texts, tiny_recipe, write_csv


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def machine_paths(folder: Path, *prefixes: Path) -> list[str]:
    """Files under `folder` whose bytes name any of `prefixes` (or site-packages)."""
    needles = [str(p).encode() for p in prefixes] + [b"site-packages"]
    return [str(f) for f in folder.rglob("*") if f.is_file() and any(n in f.read_bytes() for n in needles)]


def assert_readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, image_folder, plain_checkpoint) -> Path:
    """A run whose factory file lives beside it (then gone: the export must carry its own copy)."""
    root = tmp_path_factory.mktemp("export-plain")
    shutil.copyfile(PLAIN_NETS, root / "my_nets.py")
    model = {"name": f"{root / 'my_nets.py'}:small_cnn", "checkpoint": str(plain_checkpoint)}
    record = graft.train(image_recipe(model, image_folder, root / "run", train={"epochs": 1}))
    assert record["status"] == "completed"
    return root / "run"


def test_a_plain_module_export_carries_its_factory_and_loads_anywhere(plain_run, tmp_path, umask_022, monkeypatch):
    from graft.models.build import load_trained

    out = tmp_path / "export"
    done = CliRunner().invoke(app, ["export", str(plain_run), "--output", str(out)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "calibration.json", "graft_model.json",
                                                     "model.safetensors", "my_nets.py"]
    assert json.loads((out / "graft_model.json").read_text())["factory"] == "my_nets.py:small_cnn"
    assert machine_paths(out, plain_run.parent, tmp_path) == []
    assert_readable(out)

    pixels = torch.rand(2, 3, 16, 16)
    expected = load_trained(plain_run / "model", "image_classification", None).model.eval()(pixels).logits
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(out, moved)
    (plain_run.parent / "my_nets.py").rename(plain_run.parent / "gone.py")  # the original factory file is gone
    monkeypatch.chdir(tmp_path)
    try:
        reloaded = load_trained(moved, "image_classification", None).model.eval()
        torch.testing.assert_close(reloaded(pixels).logits, expected)
        # and a run whose factory file is gone cannot be exported self-contained: one line, nothing written
        done = CliRunner().invoke(app, ["export", str(plain_run), "--output", str(tmp_path / "again")])
        assert "factory file is gone" in str(done.exception) and not (tmp_path / "again").exists()
    finally:
        (plain_run.parent / "gone.py").rename(plain_run.parent / "my_nets.py")


@pytest.fixture(scope="module")
def lora_run(tiny_bert, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-lora")
    train = write_csv(root / "train.csv", make_texts(60, seed=1))
    graft.train(tiny_recipe(tiny_bert, train, root / "run", train={"epochs": 1}, strategy={"name": "lora"}))
    return root / "run"


@pytest.mark.parametrize("merge", [False, True])
def test_a_lora_export_names_no_local_path(merge, lora_run, tiny_bert, tmp_path, umask_022):
    out = graft.export(lora_run, tmp_path / "out", merge=merge)
    assert machine_paths(out, lora_run.parent, tiny_bert, tmp_path) == []
    assert_readable(out)
    card = (out / "README.md").read_text()
    assert ("library_name: transformers" if merge else "library_name: peft") in card
    if merge:
        from transformers import AutoModelForSequenceClassification

        assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label[0] == "billing"
        assert 'pipeline("text-classification", model="out"' in card
    else:
        meta = json.loads((out / "graft_peft.json").read_text())
        assert meta["model"]["name"] == tiny_bert.name and meta["data"]["train"] == "train.csv"
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_bert.name


def test_a_run_weights_and_checkpoints_get_the_umask_permissions(lora_run, plain_run):
    mask = os.umask(0)
    os.umask(mask)
    for run in (lora_run, plain_run):
        weights = [*(run / "model").glob("*.safetensors"), *(run / "checkpoints").rglob("*.safetensors")]
        assert len(weights) >= 3
        for path in weights:  # safetensors creates them 0600
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_what_graft_writes_honours_the_umask(mask, file_mode, dir_mode, tmp_path):
    old = os.umask(mask)
    try:
        with writing(tmp_path / "folder") as tmp:
            tmp.mkdir()
            (tmp / "weights").write_bytes(b"x")
            os.chmod(tmp / "weights", 0o600)  # as safetensors leaves its files
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
        write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "folder" / "weights").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "folder" / "run.sh").stat().st_mode) == dir_mode  # executable stays so
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == file_mode
