"""Causal LMs on instructions: the label mask token by token, packing that changes nothing but the padding, a tiny
model that memorises a handful of answers and then says them, LoRA, resume, and the data errors.

Tiny random Llama and GPT-2 models share a small word-level vocabulary (a WordPiece tokenizer over our words, with
[SEP] as the end of sequence); the tokenizer has no chat template, so graft's default one is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.tasks.chat import DEFAULT_TEMPLATE, IGNORE, Encoded, Pad, encode, prepare_tokenizer
from tests.conftest import SPECIALS, error_of

PAIRS = [
    ("what colour is the sky", "the sky is blue"),
    ("what colour is grass", "grass is green"),
    ("what do cats say", "cats say meow"),
    ("what do dogs say", "dogs say woof"),
]
WORDS = sorted({w for p, r in PAIRS for w in f"{p} {r}".split()} | {"#", ":", "system", "user", "assistant", "be",
                                                                   "brief", "and", "thanks", "welcome", "you", "are"})


def build_tiny_lm(path: Path, kind: str = "llama", seed: int = 0) -> Path:
    from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, eos_token="[SEP]",
                                  model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             max_position_embeddings=128, pad_token_id=0, bos_token_id=None,
                                             eos_token_id=vocab.index("[SEP]")))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=None, eos_token_id=vocab.index("[SEP]"), pad_token_id=0))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS * 4))
    return path


def lm_recipe(model: Path, examples: Path, run: Path, **sections) -> dict:
    tree = {"task": "causal_lm", "model": {"name": str(model), "max_length": 48},
            "data": {"train": str(examples), "validation": str(examples), "test": str(examples), "leakage": "warn"},
            "optim": {"lr": 1e-2, "weight_decay": 0.0}, "schedule": {"name": "constant", "warmup_ratio": 0.0},
            "train": {"epochs": 12, "batch_size": 4, "log_every": 4, "precision": "fp32"},
            "eval": {"samples": 4, "max_new_tokens": 8},
            "output": {"dir": str(run), "tensorboard": False}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def tokenizer_of(model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prepare_tokenizer(tokenizer)
    return tokenizer


def test_the_default_template_and_the_labels_token_by_token(tiny_llama):
    tok = tokenizer_of(tiny_llama)
    assert tok.chat_template == DEFAULT_TEMPLATE
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what do cats say"},
                {"role": "assistant", "content": "cats say meow"}]
    enc = encode(tok, messages, 128)
    labelled = [t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != IGNORE]
    assert all(label in (IGNORE, t) for t, label in zip(enc["input_ids"], enc["labels"], strict=True))
    assert tok.decode(labelled) == "cats say meow [SEP]"  # the answer and its end, nothing of the prompt
    prompt = [t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label == IGNORE]
    assert tok.decode(prompt).replace(" ", "") == "###system:bebrief###user:whatdocatssay###assistant:"


def test_every_assistant_turn_of_a_chat_is_learned_and_no_user_turn(tiny_llama):
    tok = tokenizer_of(tiny_llama)
    messages = [{"role": "user", "content": "what do cats say"}, {"role": "assistant", "content": "cats say meow"},
                {"role": "user", "content": "and dogs"}, {"role": "assistant", "content": "dogs say woof"}]
    enc = encode(tok, messages, 128)
    runs, current = [], []
    for t, label in zip(enc["input_ids"], enc["labels"], strict=True):
        if label != IGNORE:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    assert runs == ["cats say meow [SEP]", "dogs say woof [SEP]"]


def test_truncation_that_cuts_away_the_answer_drops_the_example_and_counts_it(tiny_llama):
    tok = tokenizer_of(tiny_llama)
    long = [{"role": "user", "content": " ".join(["what"] * 60)}, {"role": "assistant", "content": "blue"}]
    short = [{"role": "user", "content": "what colour is grass"}, {"role": "assistant", "content": "grass is green"}]
    encoded = Encoded([long, short, long], tok, 32)
    assert encoded.dropped == 2 and len(encoded) == 1
    cut = encode(tok, [short[0], {"role": "assistant", "content": " ".join(["green"] * 40)}], 32)
    assert len(cut["input_ids"]) == 32 and cut["labels"][-1] != IGNORE  # cut, but answers remain: kept


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_and_padded_batches_give_the_same_loss(kind, tmp_path):
    """Tolerance 1e-5: the same tokens and masks, summed in another order."""
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

    path = build_tiny_lm(tmp_path / kind, kind)
    tok = tokenizer_of(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    items = Encoded([[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in PAIRS],
                    tok, 64).items
    padded = Pad(tok.pad_token_id)(items)
    packed = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)(items)
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())
    with torch.no_grad():
        a = model(**padded, use_cache=False).loss
        b = model(**packed, use_cache=False).loss
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_tiny_model_memorises_its_answers_and_says_them(tiny_llama, pairs_file, tmp_path):
    record = graft.train(lm_recipe(tiny_llama, pairs_file, tmp_path / "run", data={"packing": True},
                                   train={"epochs": 30}))
    assert record["metrics"]["test"]["token_accuracy"] == 1.0 and record["metrics"]["test"]["perplexity"] < 1.5
    train = [h for h in record["metrics"]["history"] if h["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] / 5 and train[0]["real_token_share"] == 1.0  # packed: no padding
    assert {s["generated"] for s in record["samples"]} <= {r for _, r in PAIRS} and record["samples"]
    assert "### assistant" in record["data"]["rendered_example"].lower()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for p, _ in PAIRS))
    answers = graft.predict(tmp_path / "run", str(prompts))
    assert [a["generated"] for a in answers] == [r for _, r in PAIRS]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Greedy generations" in page and "cats say meow" in page

    from transformers import AutoModelForCausalLM, AutoTokenizer  # the saved model is a plain transformers one

    model, tok = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model"), AutoTokenizer.from_pretrained(
        tmp_path / "run" / "model")
    assert tok.chat_template == DEFAULT_TEMPLATE and model.config.use_cache is True


def test_lora_on_a_causal_lm_through_the_cli_and_peft(tiny_gpt2, pairs_file, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    lora = {"name": "lora", "lora": {"r": 8, "target_modules": ["c_attn"]}}
    recipe.write_text(yaml.safe_dump(lm_recipe(tiny_gpt2, pairs_file, tmp_path / "run", strategy=lora,
                                               optim={"lr": 3e-2}, train={"epochs": 15})))
    runner = CliRunner()
    done = runner.invoke(app, ["train", str(recipe)])
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["params"]["trainable"] < record["params"]["total"] / 10
    assert record["metrics"]["test"]["loss"] < record["metrics"]["history"][1]["loss"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _ in PAIRS))
    out = runner.invoke(app, ["predict", str(tmp_path / "run"), str(prompts), "--output", str(tmp_path / "a.csv")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "prompt,generated"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    PeftModel.from_pretrained(base, tmp_path / "run" / "model")  # peft loads graft's adapter as it is


def test_a_resumed_lm_run_equals_an_uninterrupted_one(tiny_llama, pairs_file, tmp_path):
    from tests.e2e.test_resume import assert_resume_matches

    sections = {"train": {"epochs": 3}, "checkpoint": {"every_steps": 2}, "data": {"packing": True}}
    assert_resume_matches(lambda run: lm_recipe(tiny_llama, pairs_file, run, **sections), tmp_path)


UNEVEN = [("what colour is the sky", "blue"), ("what do cats say", "cats say meow and dogs say woof you are welcome"),
          ("what colour is grass", "green"), ("what do dogs say", "dogs say woof and cats say meow thanks")]


def _uneven_file(tmp_path: Path) -> Path:
    path = tmp_path / "uneven.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in UNEVEN * 3))
    return path


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def test_accumulated_batches_weigh_every_answer_token_alike(tiny_llama, tmp_path):
    """A step of 4 conversations taken whole, or as 2 accumulated batches of 2, follows the gradient of the mean over
    the step's answer tokens: one-word answers beside ten-word ones would otherwise count 5x more per token in the
    batch that holds them."""
    examples = _uneven_file(tmp_path)
    sections = {"train": {"epochs": 3}, "data": {"group_by_length": False, "validation": str(examples),
                                                 "test": str(examples)}, "eval": {"samples": 0}}
    whole = graft.train(lm_recipe(tiny_llama, examples, tmp_path / "whole", **sections))
    parts = graft.train(lm_recipe(tiny_llama, examples, tmp_path / "parts",
                                  **{**sections, "train": {"epochs": 3, "batch_size": 2, "grad_accum": 2}}))
    assert whole["timings"]["steps"] == parts["timings"]["steps"] == 9
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    for key in a:
        # padding 2 or 4 conversations to their longest differs in float rounding, which Adam's normalised steps
        # carry a little: up to 1e-4 here; weighing each batch's mean alike instead puts them 0.1 apart
        torch.testing.assert_close(b[key], a[key], atol=1e-3, rtol=1e-3, msg=lambda m, k=key: f"{k}: {m}")


def test_a_resumed_run_with_accumulated_batches_equals_an_uninterrupted_one(tiny_llama, tmp_path):
    from tests.e2e.test_resume import assert_resume_matches

    examples = _uneven_file(tmp_path)
    sections = {"train": {"epochs": 2, "batch_size": 2, "grad_accum": 2}, "checkpoint": {"every_steps": 2},
                "eval": {"samples": 0}}
    assert_resume_matches(lambda run: lm_recipe(tiny_llama, examples, run, **sections), tmp_path)


def test_instruction_data_errors_are_one_line(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "answer": "hello"}) + "\n")
    message = error_of(graft.train, lm_recipe(tiny_llama, bad, tmp_path / "run"))
    assert "data.response_column" in message and "'response'" in message
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    message = error_of(graft.train, lm_recipe(tiny_llama, chat, tmp_path / "run"))
    assert message.startswith("chat.jsonl: row 1, column 'messages': no assistant message")
    assert not (tmp_path / "run").exists()


def test_head_only_is_refused_for_a_language_model(tiny_llama, pairs_file, tmp_path):
    with pytest.raises(graft.GraftError, match="keeps its pretrained output layer"):
        graft.load_recipe(lm_recipe(tiny_llama, pairs_file, tmp_path / "run", strategy={"name": "head_only"}))


# Compare and cross-validation

def test_compare_ranks_by_test_loss_and_shows_every_strategys_answers_side_by_side(tiny_llama, pairs_file, tmp_path):
    from graft.compare import format_table

    recipe = lm_recipe(tiny_llama, pairs_file, tmp_path / "cmp", data={"system": "be brief"},
                       train={"epochs": 20})
    result = graft.compare(recipe, ["full", {"label": "one-epoch", "train": {"epochs": 1}}])
    written = [json.loads(line)["messages"] for line in (tmp_path / "cmp" / "data" / "test.jsonl").read_text()
               .splitlines()]
    assert written[0][0] == {"role": "system", "content": "be brief"} and len(written) == 16
    rows = {r["label"]: r for r in result["strategies"]}
    full = json.loads((tmp_path / "cmp" / "full" / "run.json").read_text())
    assert full["recipe"]["data"]["messages_column"] == "messages"  # the run read the written conversations
    # The memorised answers against one epoch's: far apart in loss, measured against its error over examples.
    assert result["metric"] == "loss" and result["winner"] == "full" and not result["ties"]
    assert rows["full"]["loss"] < rows["one-epoch"]["loss"] / 3 and rows["one-epoch"]["loss_se"] > 0
    assert rows["full"]["perplexity"] == pytest.approx(full["metrics"]["test"]["perplexity"])
    assert [s["generated"] for s in rows["full"]["samples"]] == [s["generated"] for s in full["samples"]]
    assert format_table(result).splitlines()[0].split() == ["strategy", "perplexity", "token_accuracy", "loss",
                                                           "trainable", "cost", "s", "s/epoch", "peak", "MB"]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "What each strategy says" in page and page.count("cats say meow") >= 2  # reference and full's answer


def test_the_standard_error_of_a_loss_counts_examples_not_tokens():
    from graft.tasks.chat import _MOMENTS, _ratio_se

    per = [(3.0, 2.0), (1.0, 4.0), (6.0, 3.0)]  # (loss sum, tokens) of three answers
    total = {key: 0.0 for key in _MOMENTS}
    for loss, tokens in per:
        values = {"n": 1.0, "T": tokens, "L": loss, "C": 0.0}
        for a, b in _MOMENTS:
            total[a, b] += values[a] * (values[b] if b else 1.0)
    ratio = 10.0 / 9.0
    expected = (sum((loss - ratio * tokens) ** 2 for loss, tokens in per) * 3 / 2) ** 0.5 / 9.0
    assert _ratio_se(total, "L", ratio) == pytest.approx(expected)


def test_cross_validation_folds_conversations_each_once(tiny_llama, pairs_file, tmp_path):
    recipe = lm_recipe(tiny_llama, pairs_file, tmp_path / "cv", train={"epochs": 2})
    recipe["data"].pop("test")  # each fold is the test split once
    summary = graft.cross_validate(recipe, 2)
    folds = [[json.loads(line)["messages"][0]["content"] for line in
              (tmp_path / "cv" / "folds" / f"fold-{i}" / "test.jsonl").read_text().splitlines()] for i in range(2)]
    assert sorted(folds[0] + folds[1]) == sorted(p for p, _ in PAIRS)  # the file's 16 rows are 4 conversations
    assert summary["cv"]["k"] == 2 and set(summary["cv"]["mean"]) >= {"loss", "perplexity", "token_accuracy"}
    assert summary["metrics"]["test"]["loss"] == pytest.approx(
        sum(f["test"]["loss"] for f in summary["cv"]["folds"]) / 2)
    assert (tmp_path / "cv" / "report.html").is_file()


def test_advise_verify_compares_a_language_models_advice(tiny_llama, pairs_file, tmp_path):
    from graft.advise.advisor import verify_advice

    advice = {"strategy": "full", "fragment": {"strategy": {"name": "full"}},
              "runner_up": {"strategy": "lora", "fragment": {"strategy": {"name": "lora"}}}}
    verified = verify_advice(graft.load_recipe(lm_recipe(tiny_llama, pairs_file, tmp_path / "run",
                                                         train={"epochs": 6})), advice, tmp_path, print)
    assert verified["metric"] == "loss" and {s["label"] for s in verified["strategies"]} == {"full", "lora", "scratch"}
    assert verified["held"] == (verified["leader"] == "full" or "full" in verified["ties"])
    assert all(s["loss"] > 0 for s in verified["strategies"]) and (tmp_path / "verify" / "compare.html").is_file()
