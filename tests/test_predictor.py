"""`graft.Predictor` and `graft.predict` on inputs held in memory: the rows `graft predict` writes for the same
inputs as files (text, image, LoRA and language-model runs), one input alone, batching, and a one-line GraftError for
each wrong input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import graft
from graft.cli import app
from tests.conftest import (
    error_of,
    make_images,
    make_texts,
    tiny_recipe,
    trained_image_run,
    write_csv,
)

TEXTS = [text for text, _ in make_texts(13, seed=21)]


def cli_rows(run: Path, source: Path, out: Path) -> list[dict]:
    """What `graft predict RUN SOURCE --output out.jsonl` writes."""
    done = CliRunner().invoke(app, ["predict", str(run), str(source), "--output", str(out)])
    assert done.exit_code == 0, done.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def same_rows(got: list[dict], expected: list[dict], key: str) -> None:
    assert [r[key] for r in got] == [r[key] for r in expected]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["probabilities"] == pytest.approx(e["probabilities"], rel=1e-6, abs=1e-7)
        assert g["score"] == pytest.approx(e["score"], rel=1e-6)


@pytest.fixture(scope="module")
def text_runs(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predictor-text")
    train = write_csv(root / "train.csv", make_texts(90, seed=1))
    runs = {}
    for strategy in ("full", "lora"):
        runs[strategy] = root / strategy
        record = graft.train(tiny_recipe(tiny_bert, train, runs[strategy], train={"epochs": 2},
                                         strategy={"name": strategy}))
        assert record["status"] == "completed"
    return runs


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_text_predictions_equal_graft_predict_on_a_file(strategy, text_runs, tmp_path):
    run = text_runs[strategy]
    expected = cli_rows(run, write_csv(tmp_path / "in.csv", [(t, "") for t in TEXTS]), tmp_path / "out.jsonl")
    predictor = graft.Predictor(run)
    assert predictor.labels == ["billing", "delivery", "login"] and predictor.task == "text_classification"
    same_rows(predictor.predict(TEXTS), expected, "text")
    same_rows(graft.predict(run, TEXTS), expected, "text")  # a list, where a file path used to be expected
    same_rows(predictor.predict(tuple(TEXTS)), expected, "text")
    one = predictor.predict(TEXTS[3])  # one input alone: its row alone
    assert isinstance(one, dict)
    same_rows([one], expected[3:4], "text")


def test_batch_size_and_chunks_change_nothing(text_runs, monkeypatch):
    import graft.trained

    run = text_runs["full"]
    whole = graft.Predictor(run).predict(TEXTS)
    monkeypatch.setattr(graft.trained, "CHUNK_BATCHES", 1)
    small = graft.Predictor(run, batch_size=2, device="cpu").predict(TEXTS)
    same_rows(small, whole, "text")
    assert graft.Predictor(run).predict([]) == []
    assert "batch_size = 0" in error_of(graft.Predictor, run, batch_size=0)


def test_predict_writes_a_list_to_output_as_the_cli_does(text_runs, tmp_path):
    rows = graft.predict(text_runs["full"], TEXTS[:4], tmp_path / "p.csv")
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "text,label,score,p_billing,p_delivery,p_login" and len(rows) == 4


@pytest.mark.parametrize(("given", "message"), [
    ([1, 2], "input 1: a text classifier predicts on strings, got int"),
    (["fine", None], "input 2: a text classifier predicts on strings, got NoneType"),
    ([b"bytes"], "got bytes"),
    (["ok", "   "], "input 2: empty text"),
    (Image.new("RGB", (4, 4)), "got Image"),
])
def test_wrong_text_inputs_are_one_line(given, message, text_runs):
    assert message in error_of(graft.Predictor(text_runs["full"]).predict, given)


def test_a_string_that_is_no_file_says_to_pass_a_list(text_runs):
    message = error_of(graft.predict, text_runs["full"], "my invoice is wrong")
    assert "no such file" in message and "in a list" in message


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_folder, plain_checkpoint) -> Path:
    return trained_image_run(image_folder, plain_checkpoint, tmp_path_factory.mktemp("predictor-image"), epochs=2)


def test_image_predictions_equal_graft_predict_on_a_folder(image_run, tmp_path):
    new = make_images(tmp_path / "new", per_class=3, seed=17, size=20)  # not the model's size: resized as files are
    Image.open(sorted(new.rglob("*.png"))[0]).convert("RGBA").save(new / "red" / "alpha.png")
    expected = cli_rows(image_run, new, tmp_path / "out.jsonl")
    files = [Path(r["image"]) for r in expected]
    predictor = graft.Predictor(image_run)

    same_rows(predictor.predict([str(f) for f in files]), expected, "image")
    same_rows(predictor.predict(files), expected, "image")
    in_memory = [{**r, "image": None} for r in expected]
    same_rows(predictor.predict([Image.open(f) for f in files]), in_memory, "image")
    arrays = [np.array(Image.open(f)) for f in files]  # RGB and one RGBA, uint8 (height, width, channels)
    same_rows(predictor.predict(arrays), in_memory, "image")
    same_rows(predictor.predict(np.stack([a[..., :3] for a in arrays[:-1]])), in_memory[:-1], "image")  # a batch
    same_rows([predictor.predict(arrays[0])], in_memory[:1], "image")  # one array: one row
    same_rows(graft.predict(image_run, [Image.open(f) for f in files]), in_memory, "image")


@pytest.mark.parametrize(("given", "message"), [
    ([np.zeros((3, 16, 16), np.uint8)], "got uint8 (3, 16, 16); channels last"),
    ([np.zeros((16, 16, 3), np.float32)], "got float32 (16, 16, 3)"),
    ([7], "input 1: an image classifier predicts on PIL images"),
    (["missing.png"], "input 1: missing.png: not found"),
])
def test_wrong_image_inputs_are_one_line(given, message, image_run):
    assert message in error_of(graft.Predictor(image_run).predict, given)


def test_a_folder_or_a_broken_file_is_one_line(image_run, image_folder, tmp_path):
    predictor = graft.Predictor(image_run)
    assert "a folder" in error_of(predictor.predict, [image_folder])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert "input 2:" in error_of(predictor.predict, [sorted(image_folder.rglob("*.png"))[0], broken])


def test_a_language_model_answers_prompts_and_conversations(tmp_path):
    from tests.test_causal_lm import PAIRS, build_tiny_lm, lm_recipe

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS * 4))
    graft.train(lm_recipe(build_tiny_lm(tmp_path / "lm"), pairs, tmp_path / "run", train={"epochs": 2}))
    prompts = [p for p, _ in PAIRS]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    expected = graft.predict(tmp_path / "run", str(tmp_path / "prompts.txt"))

    predictor = graft.Predictor(tmp_path / "run")
    assert predictor.labels == [] and predictor.predict(prompts) == expected
    conversation = [{"role": "user", "content": prompts[0]}]
    assert predictor.predict(conversation) == expected[0]  # one conversation: its messages in a list
    assert predictor.predict([conversation, prompts[1]]) == expected[:2]
    assert "one conversation goes in a list of its own" in error_of(predictor.predict, [[{"text": "hi"}]])
    assert "input 1: empty prompt" in error_of(predictor.predict, [""])
