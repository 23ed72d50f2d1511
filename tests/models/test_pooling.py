"""Pooling matched to the backbone: sentence-transformers' config read, the masked mean computed right, the choice
saved with the model and applied again when it loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import graft
from graft.models.build import load_model
from graft.models.pooling import sentence_transformers_pooling
from graft.recipe import DataSpec, ModelSpec
from tests.conftest import error_of, make_texts, tiny_recipe, write_csv


def sentence_model(tiny_bert: Path, folder: Path, mode: str = "mean") -> Path:
    """The tiny BERT as a sentence-transformers folder whose pooling module says `mode`."""
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": mode == "mean",
                                                                  "pooling_mode_cls_token": mode == "cls"}))
    return folder


def test_auto_reads_the_sentence_transformers_config(tiny_bert, tmp_path):
    assert sentence_transformers_pooling(sentence_model(tiny_bert, tmp_path / "st")) == "mean"
    assert sentence_transformers_pooling(sentence_model(tiny_bert, tmp_path / "cls", "cls")) == "cls"
    assert sentence_transformers_pooling(tiny_bert) is None
    data = DataSpec(train=tmp_path)
    mean = load_model(ModelSpec(name=str(tmp_path / "st"), max_length=32), "text_classification", ["a", "b"], data)
    plain = load_model(ModelSpec(name=str(tiny_bert), max_length=32), "text_classification", ["a", "b"], data)
    assert "pooling: mean (auto: the model's sentence-transformers pooling config says mean)" in mean.notes
    assert "pooling: pooler (auto: the model's own)" in plain.notes


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_the_head_reads_the_masked_mean_or_the_first_token(mode, tiny_bert, tmp_path):
    loaded = load_model(ModelSpec(name=str(tiny_bert), pooling=mode, max_length=32), "text_classification", ["a", "b"],
                        DataSpec(train=tmp_path))
    model = loaded.model.eval()
    batch = loaded.processor(["password reset please", "my parcel is late again today"], padding=True,
                             return_tensors="pt")
    seen = {}
    model.dropout.register_forward_hook(lambda m, args, out: seen.setdefault("pooled", args[0]))
    with torch.no_grad():
        model(**batch)
        hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(1) / mask.sum(1) if mode == "mean" else hidden[:, 0]
    torch.testing.assert_close(seen["pooled"], expected)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # padding was there to mask


def test_the_pooling_is_saved_and_applied_again(tiny_bert, tmp_path):
    model = sentence_model(tiny_bert, tmp_path / "st")
    data = write_csv(tmp_path / "train.csv", make_texts(60, seed=2))
    record = graft.train(tiny_recipe(model, data, tmp_path / "run", train={"epochs": 1}))
    assert "bert.pooler" not in [g["name"] for g in record["groups"]]  # the mean has no parameters to train
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["graft_pooling"] == "mean"
    assert graft.evaluate(tmp_path / "run")["accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    # Fine-tuned again from the run's model folder (no sentence-transformers config there): the same pooling.
    again = load_model(ModelSpec(name=str(tmp_path / "run" / "model"), max_length=32), "text_classification",
                       ["a", "b"], DataSpec(train=data))
    assert "pooling: mean (auto: the graft run that saved this model pooled by mean)" in again.notes


def test_pooling_is_for_text_classifiers(tmp_path):
    tree = {"task": "image_classification", "model": {"pooling": "mean"}, "data": {"train": str(tmp_path)}}
    assert "model.pooling: for text classifiers" in error_of(graft.load_recipe, tree)
