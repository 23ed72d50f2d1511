"""MC dropout and abstention: dropout truly on (attention dropout included) while BatchNorm stays in eval mode with
its statistics untouched, passes batched and differing row by row, the summary formulas against numpy, a model
without dropout refused in one line, rows from a trained run, and `abstain` below a confidence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from graft.evaluation.mc_dropout import (
    ABSTAIN,
    abstain_rows,
    abstained,
    dropout_active,
    mc_columns,
    mc_dropout_logits,
    mc_dropout_predict,
    mc_predict_rows,
    stochastic_modules,
    summarise_passes,
)
from graft.models.build import load_model
from graft.models.plain import PlainClassifier
from graft.recipe import DataSpec, HeadSpec, ModelSpec
from tests.conftest import (
    IMAGE_MEAN,
    IMAGE_STD,
    PLAIN_NETS,
    error_of,
    make_texts,
    trained_text_run,
)


class MaskEcho(nn.Module):
    """logits = the example's own values + dropout(ones): each pass's dropout mask shows in its logits exactly
    (0 or 1/(1-p) added), so the order of examples and the independence of repeated rows can be read off."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.drop = nn.Dropout(p)
        self.scale = nn.Parameter(torch.ones(()))
        self.rows_per_forward: list[int] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        self.rows_per_forward.append(len(x))
        return SequenceClassifierOutput(logits=self.scale * x + self.drop(torch.ones_like(x)))


def echo_batches(examples: int = 10, classes: int = 4, batch: int = 4) -> list[dict[str, torch.Tensor]]:
    x = torch.arange(examples * classes, dtype=torch.float32).view(examples, classes) * 10
    return [{"x": x[i:i + batch], "labels": torch.zeros(len(x[i:i + batch]), dtype=torch.long)}
            for i in range(0, examples, batch)]


def image_batches(n_batches: int = 2, batch: int = 5, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)} for _ in range(n_batches)]


def cnn(tmp_path: Path, dropout: float = 0.5) -> PlainClassifier:
    """tests/plain_nets.py's SmallCNN (three BatchNorms) with graft's head, non-trivial BatchNorm statistics."""
    data = DataSpec(train=tmp_path, image_size=16, mean=IMAGE_MEAN, std=IMAGE_STD)
    model = load_model(ModelSpec(name=f"{PLAIN_NETS}:small_cnn", head=HeadSpec(dropout=dropout)),
                       "image_classification", ["a", "b", "c"], data).model
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def tiny_bert_classifier(hidden: float, attention: float, attn_implementation: str = "eager") -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=hidden,
                        attention_probs_dropout_prob=attention, num_labels=3,
                        attn_implementation=attn_implementation)
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


def token_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (6, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[3:, 8:] = 0
    return [{"input_ids": ids, "attention_mask": mask}]


def distinct_passes(logits: np.ndarray) -> float:
    """The share of examples whose n passes are not all the same."""
    return float(np.mean([len({row.tobytes() for row in example}) > 1 for example in logits]))


# --- dropout on, BatchNorm off ---------------------------------------------------------------------------------


def test_batchnorm_stays_in_eval_mode_and_its_statistics_unchanged(tmp_path):
    model = cnn(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes: dict[str, set[bool]] = {}

    def record(name: str):
        return lambda module, _inputs: modes.setdefault(name, set()).add(module.training)

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.Dropout):
            m.register_forward_pre_hook(record(type(m).__name__))
    model.train()  # as a model may come: its modes must come back as they were
    mc = mc_dropout_predict(model, image_batches(), 8)

    assert modes == {"BatchNorm2d": {False}, "Dropout": {True}}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k],
                                                                                                     after[k])]
    assert all(m.training for m in model.modules())
    assert mc.probabilities.shape == (10, 3) and (mc.std > 0).all()


def test_every_mode_comes_back_even_after_a_failed_forward(tmp_path):
    model = cnn(tmp_path)
    model.eval()
    model.net.block1.train()
    expected = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError):
        mc_dropout_predict(model, [{"pixel_values": torch.randn(2, 5, 16, 16)}], 4)  # 5 channels: conv1 fails
    assert [m.training for m in model.modules()] == expected


def test_passes_differ_and_repeated_rows_in_one_forward_differ(tmp_path):
    model = cnn(tmp_path)
    logits = mc_dropout_logits(model, image_batches(batch=5), 6, max_rows=60)
    assert logits.shape == (10, 6, 3)
    assert distinct_passes(logits) == 1.0  # within one forward: the mask is drawn per row, not shared by repeats
    echo = MaskEcho()
    masks = mc_dropout_logits(echo, echo_batches(examples=3, classes=64), 5, max_rows=15) - \
        echo_batches(examples=3, classes=64)[0]["x"].numpy()[:, None, :]
    assert echo.rows_per_forward == [15]
    assert set(np.unique(masks)) == {0.0, 2.0}
    assert len({m.tobytes() for m in masks.reshape(15, 64)}) == 15


@pytest.mark.parametrize("n, max_rows, expected", [
    (3, 12, [12, 12, 6]),      # 4 examples a forward: the batches of 4, 4 and 2, each in one forward
    (5, 7, [5] * 10),          # fewer rows than 2 examples' passes: one example a forward
    (8, 3, [3, 3, 2] * 10),    # more passes than rows: an example's passes split over forwards
])
def test_passes_are_batched_within_the_row_budget_in_loader_order(n, max_rows, expected):
    echo = MaskEcho()
    batches = echo_batches(examples=10, classes=4, batch=4)
    logits = mc_dropout_logits(echo, batches, n, max_rows=max_rows)
    assert echo.rows_per_forward == expected
    x = torch.cat([b["x"] for b in batches]).numpy()
    assert logits.shape == (10, n, 4)
    assert np.isin(logits - x[:, None, :], [0.0, 2.0]).all()  # each example's passes are its own, in order


def test_seeded_passes_repeat_and_leave_the_global_rng_alone(tmp_path):
    model = cnn(tmp_path)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = mc_dropout_logits(model, image_batches(), 4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(first, mc_dropout_logits(model, image_batches(), 4, seed=7))
    assert not np.array_equal(first, mc_dropout_logits(model, image_batches(), 4, seed=8))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_dropout_is_on_in_bert(attn_implementation):
    """Hidden and classifier dropout 0: only the attention probabilities are dropped, which BERT's attention does
    functionally from its own training flag."""
    model = tiny_bert_classifier(hidden=0.0, attention=0.3, attn_implementation=attn_implementation)
    attention = [type(m).__name__ for m in stochastic_modules(model) if not isinstance(m, nn.Dropout)]
    assert attention == ["BertSelfAttention", "BertSelfAttention"]
    assert distinct_passes(mc_dropout_logits(model, token_batches(), 5)) == 1.0

    with dropout_active(model):  # what dropout layers alone would give: no attention dropout, identical passes
        for m in model.modules():
            if not isinstance(m, nn.Dropout):
                m.training = False
        with torch.no_grad():
            a, b = (model(**token_batches()[0]).logits for _ in range(2))
    assert torch.equal(a, b)


def test_attention_dropout_is_on_in_vit():
    """ViT keeps its attention dropout as a float (`attention_dropout`), no dropout layer."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3, num_labels=3)
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    assert {type(m).__name__ for m in stochastic_modules(model)} == {"ViTAttention"}
    assert distinct_passes(mc_dropout_logits(model, image_batches(), 4)) == 1.0


def test_a_model_without_dropout_is_one_line_naming_head_dropout(tmp_path):
    for model, batches in ((tiny_bert_classifier(0.0, 0.0), token_batches()),
                           (cnn(tmp_path, dropout=0.0), image_batches())):
        model.train()
        message = error_of(mc_dropout_predict, model, batches, 5)
        assert message.startswith("--mc-dropout: the model has no dropout") and "model.head.dropout" in message
        assert all(m.training for m in model.modules())


def test_wrong_arguments_are_one_line_each(tmp_path):
    model = cnn(tmp_path)
    assert "--mc-dropout 1: give a whole number of passes of at least 2" in error_of(mc_dropout_predict, model,
                                                                                   image_batches(), 1)
    assert "temperature = 0" in error_of(mc_dropout_predict, model, image_batches(), 4, temperature=0)
    assert "max_rows = 0" in error_of(mc_dropout_logits, model, image_batches(), 4, max_rows=0)


# --- the summary ------------------------------------------------------------------------------------------------


def numpy_summary(logits: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mean = p.mean(1)
    entropy = -(mean * np.log(mean)).sum(-1)
    each = -(p * np.log(p)).sum(-1)
    return {"probabilities": mean, "entropy": entropy, "mutual_information": entropy - each.mean(1),
            "std": np.sqrt(((p - mean[:, None]) ** 2).mean(1))}


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
def test_summary_formulas_equal_a_direct_numpy_computation(temperature):
    logits = np.random.default_rng(0).normal(0, 3, (20, 7, 5)).astype(np.float32)
    got = summarise_passes(logits, temperature)
    for name, expected in numpy_summary(logits, temperature).items():
        np.testing.assert_allclose(getattr(got, name), expected, rtol=1e-10, atol=1e-12, err_msg=name)
    assert (got.mutual_information >= 0).all() and (got.entropy <= math.log(5) + 1e-12).all()


def test_agreeing_passes_have_no_mutual_information_and_a_masked_class_counts_zero():
    logits = np.tile(np.array([[2.0, -1.0, -np.inf]], dtype=np.float32), (1, 6, 1))
    got = summarise_passes(logits)
    assert got.mutual_information[0] == 0 and (got.std == 0).all() and got.probabilities[0, 2] == 0
    p = np.exp([2.0, -1.0]) / np.exp([2.0, -1.0]).sum()
    assert got.entropy[0] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)


def test_temperature_divides_each_pass_before_its_softmax(tmp_path):
    model = cnn(tmp_path)
    logits = mc_dropout_logits(model, image_batches(), 6)
    scaled = mc_dropout_predict(model, image_batches(), 6, temperature=3.0)
    np.testing.assert_allclose(scaled.probabilities, numpy_summary(logits, 3.0)["probabilities"], rtol=1e-6)
    assert not np.allclose(scaled.probabilities, numpy_summary(logits, 1.0)["probabilities"])


def test_gather_sees_each_batch_passes():
    seen = []
    mc_dropout_predict(MaskEcho(), echo_batches(examples=6, batch=4), 3, gather=lambda t: seen.append(t.shape) or t)
    assert seen == [(4, 3, 4), (2, 3, 4)]


# --- rows from a trained run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:
    return trained_text_run(tiny_bert, tmp_path_factory.mktemp("mc-run"), model={"head": {"dropout": 0.2}})


def test_rows_of_a_trained_run(text_run):
    from graft.trained import open_run

    run = open_run(text_run)
    texts = [t for t, _ in make_texts(11, seed=5)]
    _, loader = run.task.memory_loader(run, texts)
    rows = mc_predict_rows(run.model, loader, run.labels, 8)
    assert len(rows) == 11 and run.labels == ["billing", "delivery", "login"]
    for row in rows:
        assert set(row) == {"label", "score", "probabilities", "entropy", "mutual_information", "std"}
        assert list(row["probabilities"]) == list(row["std"]) == run.labels
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert row["score"] == max(row["probabilities"].values())
        assert 0 < row["mutual_information"] <= row["entropy"] <= math.log(3)
        assert all(s > 0 for s in row["std"].values())
    assert rows == mc_predict_rows(run.model, loader, run.labels, 8)  # seeded
    assert mc_columns(run.labels, "text") == ["text", "label", "score", "p_billing", "p_delivery", "p_login",
                                              "entropy", "mutual_information", "std_billing", "std_delivery",
                                              "std_login"]


def test_a_declared_head_on_a_hugging_face_model_is_saved_and_loaded(text_run):
    from safetensors.torch import load_file

    from graft.trained import open_run

    config = json.loads((text_run / "model" / "config.json").read_text())
    assert config["graft_head"] == {"path": "classifier", "in_features": 32, "bias": True, "batchnorm": False,
                                    "dropout": 0.2, "hidden": None}
    head = open_run(text_run).model.classifier
    assert isinstance(head[0], nn.Dropout) and head[0].p == 0.2
    saved = load_file(str(text_run / "model" / "model.safetensors"))
    assert torch.equal(head[1].weight, saved["classifier.1.weight"])
    assert torch.equal(head[1].bias, saved["classifier.1.bias"])


def test_a_declared_head_saved_without_its_record_is_refused(text_run, tmp_path):
    import shutil

    from graft.trained import open_run

    copy = tmp_path / "run"
    shutil.copytree(text_run, copy)
    config_file = copy / "model" / "config.json"
    config = json.loads(config_file.read_text())
    del config["graft_head"]  # as runs saved before graft recorded declared heads
    config_file.write_text(json.dumps(config))
    message = error_of(open_run, copy)
    assert "the saved head has weights the model has no place for (classifier.1." in message
    assert "train the run again" in message


# --- abstention -------------------------------------------------------------------------------------------------


def test_abstention_marks_rows_below_the_confidence():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.6, 0.4]])
    assert abstained(probabilities, 0.6).tolist() == [False, True, False, False]  # 0.6 itself answers
    assert not abstained(probabilities, 0.0).any() and abstained(probabilities, 1.0).all()
    rows = [{"text": str(i), "label": ["neg", "pos"][int(p.argmax())], "score": float(p.max()),
             "probabilities": {"neg": float(p[0]), "pos": float(p[1])}} for i, p in enumerate(probabilities)]
    marked = abstain_rows(rows, 0.65)
    assert [r["label"] for r in marked] == ["neg", ABSTAIN, "pos", ABSTAIN]
    assert [r["score"] for r in marked] == [r["score"] for r in rows] and marked[1]["probabilities"] == \
        rows[1]["probabilities"]
    assert rows[1]["label"] == "neg"  # the caller's rows are left as they were
    assert abstain_rows([], 0.5) == []


def test_abstention_refuses_a_wrong_threshold_and_a_class_named_abstain():
    assert "--min-confidence 1.5: give a probability from 0 to 1" in error_of(abstained, np.ones((1, 2)), 1.5)
    rows = [{"label": "abstain", "score": 0.9, "probabilities": {"abstain": 0.9, "other": 0.1}}]
    assert "the model has a class named 'abstain'" in error_of(abstain_rows, rows, 0.5)


# --- graft predict --mc-dropout / --min-confidence ---------------------------------------------------------------


def test_predict_with_mc_dropout_from_a_file_the_api_and_the_cli(text_run, tmp_path, monkeypatch, capsys):
    import csv
    import sys

    from graft.cli import main
    from graft.trained import Predictor, predict_run

    texts = [t for t, _ in make_texts(9, seed=6)]
    source = tmp_path / "new.txt"
    source.write_text("\n".join(texts) + "\n")
    rows = predict_run(text_run, str(source), mc_dropout=6)
    assert [r["text"] for r in rows] == texts
    assert all({"entropy", "mutual_information", "std"} <= set(r) for r in rows)
    deterministic = predict_run(text_run, str(source))
    assert [r["probabilities"] for r in rows] != [r["probabilities"] for r in deterministic]
    in_memory = Predictor(text_run, mc_dropout=6).predict(texts)
    for a, b in zip(rows, in_memory, strict=True):  # the same batches, the same seeded masks
        assert a["probabilities"] == pytest.approx(b["probabilities"]) and a["label"] == b["label"]

    out = tmp_path / "mc.csv"
    monkeypatch.setattr(sys, "argv", ["graft", "predict", str(text_run), str(source), "--mc-dropout", "6",
                                      "--output", str(out)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    with out.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == mc_columns(["billing", "delivery", "login"], "text")
    assert [float(r["std_login"]) for r in table] == pytest.approx([r["std"]["login"] for r in rows])

    monkeypatch.setattr(sys, "argv", ["graft", "predict", str(text_run), str(source), "--mc-dropout", "1"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and "--mc-dropout 1: give a whole number of passes of at least 2" in \
        capsys.readouterr().err


def test_predict_abstains_below_the_minimum_confidence(text_run, tmp_path):
    from graft.trained import predict_run

    source = tmp_path / "new.txt"
    source.write_text("\n".join(t for t, _ in make_texts(12, seed=7)) + "\n")
    plain = predict_run(text_run, str(source))
    threshold = sorted(r["score"] for r in plain)[len(plain) // 2]
    held = predict_run(text_run, str(source), min_confidence=threshold)
    assert [r["label"] == "abstain" for r in held] == [r["score"] < threshold for r in plain]
    assert any(r["label"] == "abstain" for r in held) and any(r["label"] != "abstain" for r in held)
    assert [r["probabilities"] for r in held] == [r["probabilities"] for r in plain]
    assert "from 0 to 1" in error_of(predict_run, text_run, str(source), min_confidence=1.5)
