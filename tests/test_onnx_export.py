"""`graft export --format onnx [--quantize int8]`: the graph answers as PyTorch does (checked at export on the run's
test split, and here on batches of other sizes and lengths), the folder runs with onnxruntime alone (the model card's
snippet is executed), int8 records the accuracy before and after, an export predicts and evaluates as a run does, and
each refusal is one line that leaves nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import graft
from graft.cli import app
from tests.conftest import (
    FILLER,
    error_of,
    make_images,
    make_texts,
    tiny_recipe,
    trained_image_run,
    trained_text_run,
    write_csv,
)

TEXTS = [text for text, _ in make_texts(9, seed=31)]


def close_rows(got: list[dict], expected: list[dict], key: str, tolerance: float = 1e-5) -> None:
    assert [r[key] for r in got] == [r[key] for r in expected]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=tolerance)


def card_snippet(folder: Path) -> str:
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)[1]


def run_snippet(folder: Path, monkeypatch) -> str:
    """The card's code, run from the folder's parent (as its paths are written), with what it prints."""
    monkeypatch.chdir(folder.parent)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(card_snippet(folder), "card", "exec"), {})
    return printed.getvalue()


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:
    return trained_text_run(tiny_bert, tmp_path_factory.mktemp("onnx-text"))


@pytest.fixture(scope="module")
def text_export(text_run) -> Path:
    done = CliRunner().invoke(app, ["export", str(text_run), "--format", "onnx", "--output",
                                    str(text_run.parent / "onnx")])
    assert done.exit_code == 0, done.output
    assert "checked on 12 test examples" in done.output
    return text_run.parent / "onnx"


@pytest.fixture(scope="module")
def int8_export(text_run) -> Path:
    return graft.export(text_run, text_run.parent / "int8", format="onnx", quantize="int8")


def test_a_text_export_holds_the_graph_tokenizer_labels_and_its_check(text_export, text_run):
    assert sorted(p.name for p in text_export.iterdir()) == ["README.md", "calibration.json", "export.json",
                                                             "model.onnx", "tokenizer.json", "tokenizer_config.json"]
    meta = json.loads((text_export / "export.json").read_text())
    record = json.loads((text_run / "run.json").read_text())
    assert meta["format"] == "onnx" and meta["precision"] == "fp32" and meta["labels"] == ["billing", "delivery",
                                                                                           "login"]
    assert set(meta["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert meta["check"]["examples"] == record["data"]["sizes"]["test"]
    assert meta["check"]["max_abs_diff"] <= meta["check"]["allowed"] and meta["check"]["same_labels"] == 1.0
    assert meta["test"]["pytorch"]["accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert meta["test"]["onnx_fp32"] == pytest.approx(meta["test"]["pytorch"])
    assert meta["preprocessing"]["max_length"] == 32 and meta["temperature"] > 0
    assert str(text_run.parent) not in (text_export / "export.json").read_text()  # names files, not this machine


@pytest.mark.parametrize(("n", "words"), [(1, 2), (5, 25), (3, 40)])  # 40 words: cut at max_length
def test_the_graph_takes_any_batch_size_and_length(n, words, text_export, text_run):
    from transformers import AutoTokenizer

    from graft.models.onnx_graph import OnnxModel
    from graft.trained import open_run

    vocab = AutoTokenizer.from_pretrained(text_export)
    texts = [" ".join((FILLER * 3)[i:i + words]) for i in range(n)]
    batch = vocab(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    model = open_run(text_run).model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    got = OnnxModel(text_export / "model.onnx")(**batch).logits
    assert got.shape == expected.shape == (n, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_model_card_runs_with_onnxruntime_alone(text_export, text_run, monkeypatch):
    card = (text_export / "README.md").read_text()
    assert "library_name: onnx" in card and "graft serve onnx" in card
    label, score = run_snippet(text_export, monkeypatch).split()
    expected = graft.Predictor(text_run).predict("an example text")
    assert label == expected["label"] and float(score) == pytest.approx(expected["score"], abs=1e-5)


def test_an_export_predicts_and_evaluates_as_its_run(text_export, text_run, tmp_path):
    close_rows(graft.Predictor(text_export).predict(TEXTS), graft.Predictor(text_run).predict(TEXTS), "text")
    source = write_csv(tmp_path / "in.csv", [(t, "") for t in TEXTS])
    done = CliRunner().invoke(app, ["predict", str(text_export), str(source), "--output", str(tmp_path / "p.jsonl")])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    close_rows(rows, graft.predict(text_run, TEXTS), "text")
    labelled = write_csv(tmp_path / "labelled.csv", make_texts(15, seed=8))
    assert graft.evaluate(text_export, labelled)["accuracy"] == pytest.approx(
        graft.evaluate(text_run, labelled)["accuracy"])
    assert "no dropout" in error_of(graft.Predictor, text_export, mc_dropout=5)


def test_int8_records_the_test_accuracy_before_and_after(int8_export, text_export, text_run):
    import onnx

    meta = json.loads((int8_export / "export.json").read_text())
    test = meta["test"]
    assert meta["precision"] == "int8" and set(test) == {"pytorch", "onnx_fp32", "onnx_int8", "accuracy_change"}
    assert test["accuracy_change"] == pytest.approx(test["onnx_int8"]["accuracy"] - test["pytorch"]["accuracy"])
    assert 0 <= test["onnx_int8"]["same_labels_as_pytorch"] <= 1
    ops = {node.op_type for node in onnx.load(int8_export / "model.onnx").graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert meta["megabytes"]["onnx_int8"] < meta["megabytes"]["onnx_fp32"]
    # int8 weights: close to the fp32 graph, not equal to it
    int8 = graft.Predictor(int8_export).predict(TEXTS)
    close_rows(int8, graft.Predictor(text_run).predict(TEXTS), "text", tolerance=0.05)
    assert [r["probabilities"] for r in int8] != [r["probabilities"] for r in graft.Predictor(text_export).predict(
        TEXTS)]


def test_a_lora_run_is_merged_into_its_base(tiny_bert, tmp_path):
    train = write_csv(tmp_path / "train.csv", make_texts(60, seed=2))
    graft.train(tiny_recipe(tiny_bert, train, tmp_path / "run", train={"epochs": 1}, strategy={"name": "lora"}))
    out = graft.export(tmp_path / "run", tmp_path / "onnx", format="onnx")
    assert not [p for p in out.iterdir() if "adapter" in p.name or "peft" in p.name]
    close_rows(graft.Predictor(out).predict(TEXTS), graft.Predictor(tmp_path / "run").predict(TEXTS), "text")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_folder, plain_checkpoint) -> Path:
    return trained_image_run(image_folder, plain_checkpoint, tmp_path_factory.mktemp("onnx-image"), epochs=1)


def test_an_image_export_carries_its_preprocessing(image_run, tmp_path, monkeypatch):
    out = graft.export(image_run, tmp_path / "onnx", format="onnx")
    meta = json.loads((out / "export.json").read_text())
    assert meta["inputs"] == ["pixel_values"]
    assert meta["preprocessing"] == {
        "kind": "image", "mode": "RGB (transparency composited on white)", "resize_shorter_side_to": 16,
        "resample": "bilinear", "center_crop": [16, 16],
        "scale": "1/255", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "NCHW float32"}
    new = make_images(tmp_path / "new", per_class=2, seed=5, size=24)  # resized and cropped as the run's inputs
    files = sorted(str(p) for p in new.rglob("*.png"))
    close_rows(graft.Predictor(out).predict(files), graft.Predictor(image_run).predict(files), "image")
    Image.open(files[0]).save(tmp_path / "photo.jpg", quality=95)
    label, score = run_snippet(out, monkeypatch).split()  # the card's code, on photo.jpg
    expected = graft.Predictor(image_run).predict(str(tmp_path / "photo.jpg"))
    assert label == expected["label"] and float(score) == pytest.approx(expected["score"], abs=1e-5)


def test_int8_refuses_a_network_of_convolutions(image_run, tmp_path):
    message = error_of(graft.export, image_run, tmp_path / "int8", format="onnx", quantize="int8")
    assert "are convolutions" in message and "export without --quantize" in message
    assert not (tmp_path / "int8").exists()


def test_a_graph_that_strays_from_pytorch_is_refused_and_nothing_is_written(image_run, tmp_path, monkeypatch):
    from graft import onnx_export

    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # any difference, even none, is too much
    message = error_of(graft.export, image_run, tmp_path / "out", format="onnx")
    assert "differ from PyTorch's" in message and "nothing was written" in message
    assert list(tmp_path.iterdir()) == []  # not even the folder being built


def test_what_an_onnx_export_refuses(text_run, text_export, tmp_path):
    assert "--quantize int4: graft quantizes to int8" in error_of(graft.export, text_run, tmp_path / "a",
                                                                   format="onnx", quantize="int4")
    assert "--format tflite" in error_of(graft.export, text_run, tmp_path / "a", format="tflite")
    assert "--quantize int8" in error_of(graft.export, text_run, tmp_path / "a", quantize="int8")  # without --format
    assert "not empty" in error_of(graft.export, text_run, text_export, format="onnx")
    assert "not a graft run directory" in error_of(graft.export, tmp_path, tmp_path / "a", format="onnx")
    assert not (tmp_path / "a").exists()


def test_a_run_whose_test_split_is_gone_cannot_be_checked(text_run, tmp_path):
    data = text_run.parent / "train.csv"
    data.rename(tmp_path / "kept.csv")
    try:
        message = error_of(graft.export, text_run, tmp_path / "out", format="onnx")
    finally:
        (tmp_path / "kept.csv").rename(data)
    assert "checks the graph on the run's test split, which cannot be read" in message
    assert not (tmp_path / "out").exists()


def test_a_language_model_is_refused_in_one_line(tmp_path):
    from tests.test_causal_lm import lm_recipe

    (tmp_path / "run").mkdir()
    tree = lm_recipe(tmp_path / "lm", tmp_path / "pairs.jsonl", tmp_path / "run")
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(graft.load_recipe(tree).dump()))
    message = error_of(graft.export, tmp_path / "run", tmp_path / "out", format="onnx")
    assert "causal_lm run, which generates text token by token" in message


def test_an_unreadable_graph_is_one_line(text_export, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(text_export, broken)
    (broken / "model.onnx").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert "onnxruntime cannot load it" in error_of(graft.Predictor, broken)
