"""Inputs that used to give a wrong result without a word: each now refused in one line, or warned about."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from graft.data.images import decode_images, load_image_splits
from tests.conftest import error_of, make_texts, tiny_recipe, write_csv
from tests.data.test_images import class_folder


def test_one_class_in_train_is_refused(tiny_bert, tmp_path):
    data = write_csv(tmp_path / "train.csv", [(text, "spam") for text, _ in make_texts(40, seed=1)])
    message = error_of(graft.train, tiny_recipe(tiny_bert, data, tmp_path / "run"))
    assert message.startswith("data.train: every example has the label 'spam'") and "two or more" in message
    assert not (tmp_path / "run").exists()


def test_a_validation_split_of_one_class_is_flagged(tiny_bert, tmp_path):
    texts = make_texts(60, seed=1)
    train = write_csv(tmp_path / "train.csv", texts)
    one = [t for t in make_texts(30, seed=9) if t[1] == texts[0][1]]
    validation = write_csv(tmp_path / "val.csv", one)
    record = graft.train(tiny_recipe(tiny_bert, train, tmp_path / "run", data={"validation": str(validation)},
                                     train={"epochs": 1}))
    assert any(w.startswith(f"data.validation: every example is {texts[0][1]!r}") for w in record["data"]["warnings"])


def test_grad_accum_beyond_an_epoch_is_refused(tiny_bert, tmp_path):
    data = write_csv(tmp_path / "train.csv", make_texts(40, seed=1))
    message = error_of(graft.train, tiny_recipe(tiny_bert, data, tmp_path / "run", train={"grad_accum": 50}))
    assert message.startswith("train.grad_accum = 50: an epoch has only") and "at most" in message


def _image_list(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    return path


def test_one_image_under_two_spellings_is_leakage(tmp_path):
    class_folder(tmp_path / "pics", {"cat": 4, "dog": 4})
    files = sorted((tmp_path / "pics").glob("*/*.*"))
    train = _image_list(tmp_path / "train.csv", [(str(p.relative_to(tmp_path)), p.parent.name) for p in files[1:]])
    first = files[0].relative_to(tmp_path)
    aliased = f"{first.parent}/../{first.parent.name}/{first.name}"  # pics/cat/../cat/000.png
    test = _image_list(tmp_path / "test.csv", [(aliased, first.parent.name), (str(files[1].relative_to(tmp_path)),
                                                                            files[1].parent.name)])
    message = error_of(load_image_splits, train, None, test, split=(0.8, 0.2, 0.0), seed=0)
    assert "1 image also in train.csv" in message


def test_one_image_listed_twice_is_not_carved_into_two_splits(tmp_path):
    class_folder(tmp_path / "pics", {"cat": 10, "dog": 10})
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted((tmp_path / "pics").glob("*/*.*"))]
    train = _image_list(tmp_path / "train.csv", rows + rows)  # every file twice
    splits = load_image_splits(train, None, None, split=(0.6, 0.2, 0.2), seed=0)
    seen = [str(p) for part in (splits.train, splits.validation, splits.test) for p in part.paths]
    assert len(seen) == len(set(seen)) == len(rows)
    assert any("dropped 20 rows repeating an earlier image" in w for w in splits.warnings)


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    levels = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63,000 of 65,535
    Image.fromarray(levels).save(tmp_path / "deep.png")
    decoded = decode_images([tmp_path / "deep.png"], (8, 8)).pixels[0]
    expected = np.round(levels / 257).astype(np.uint8)
    assert np.array_equal(decoded[0].numpy(), expected) and np.array_equal(decoded[1], decoded[0])
    assert decoded.float().std() > 50  # not a white square


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_8_bit_images_decode_as_before(tmp_path, mode):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8) if mode == "L" else (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(tmp_path / "x.png")
    decoded = decode_images([tmp_path / "x.png"], (8, 8)).pixels[0].permute(1, 2, 0).numpy()
    assert np.array_equal(decoded[..., 0] if mode == "L" else decoded, pixels)


@pytest.mark.parametrize(("split", "empty"), [([0.85, 0.15, 0.0], "test"), ([0.85, 0.0, 0.15], "validation")])
def test_a_zero_share_with_no_file_is_refused_before_anything_is_written(tiny_bert, tmp_path, split, empty):
    data = write_csv(tmp_path / "train.csv", make_texts(60, seed=1))
    message = error_of(graft.train, tiny_recipe(tiny_bert, data, tmp_path / "run", data={"split": split}))
    assert message.startswith(f"data.{empty}: no examples") and not (tmp_path / "run").exists()


def test_a_failure_before_the_loop_is_recorded(tiny_bert, tmp_path, monkeypatch):
    import json

    from graft.training import lr_find

    def broken(*_, **__):
        raise RuntimeError("the sweep broke")

    monkeypatch.setattr(lr_find, "lr_range_test", broken)
    data = write_csv(tmp_path / "train.csv", make_texts(60, seed=1))
    with pytest.raises(RuntimeError):
        graft.train(tiny_recipe(tiny_bert, data, tmp_path / "run", optim={"lr": "auto"}))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "the sweep broke"
