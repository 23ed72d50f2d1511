"""Token classification: tagged files read and checked, tags aligned to sub-words, entity scores, a trained run's
record, report and predictions, and what it refuses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import graft
from graft.data.tagged import load_tagged_splits
from graft.recipe import DataSpec, load_recipe
from tests.conftest import error_of, make_tagged, tiny_recipe, write_conll


def splits_of(train: Path, **fields):
    d = DataSpec(train=train, **fields)
    return load_tagged_splits(d.train, d.validation, d.test, data=d, seed=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CONLL = ("-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\n\nin IN O\nParis NNP B-LOC\n\n"
         "Ann NNP B-PER\nSmith NNP I-PER\n")


# Reading and checking

def test_conll_sentences_skip_docstart_and_keep_where_they_start(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(CONLL, encoding="utf-8")
    splits = splits_of(path, split=(0.34, 0.33, 0.33))
    assert splits.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    every = [*splits.train, *splits.validation, *splits.test]
    assert sorted(tuple(s["words"]) for s in every) == [("Ann", "Smith"), ("John", "lives"), ("in", "Paris")]
    ann = next(s for s in every if s["words"][0] == "Ann")
    assert [splits.labels[i] for i in ann["tags"]] == ["B-PER", "I-PER"] and ann["where"] == "a.conll line 9"


def test_conll_tag_column_picks_another_column(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("John B-PER NNP\nlives O VBZ\n\nParis B-LOC NNP\n\nAnn B-PER NNP\n", encoding="utf-8")
    assert splits_of(path, tag_column=1, split=(0.34, 0.33, 0.33)).labels == ["O", "B-LOC", "B-PER"]
    assert "line 1: tag 'NNP' is not BIO" in error_of(splits_of, path)  # the last column holds POS tags


def test_jsonl_with_named_columns(tmp_path):
    rows = [{"words": ["a", "b", "c"], "labels": ["B-X", "I-X", "O"]} for _ in range(1)] + [
        {"words": [f"w{i}", "x"], "labels": ["O", "B-Y"]} for i in range(9)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    splits = splits_of(path, tokens_column="words", tags_column="labels")
    assert splits.labels == ["O", "B-X", "I-X", "B-Y"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 10


@pytest.mark.parametrize(("content", "expected"), [
    ("John B-PER\nlives\n", "a.conll line 2: token 'lives' has no tag"),
    ("John PER\n", "a.conll line 1: tag 'PER' is not BIO (O, B-TYPE or I-TYPE)"),
    ("John E-PER\n", "a.conll line 1: tag 'E-PER' is not BIO"),
    ("John O\nlives O\n", "a.conll: every tag is O"),
])
def test_bad_conll_lines_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "a.conll"
    path.write_text(content, encoding="utf-8")
    assert expected in error_of(splits_of, path)


def test_tag_column_beyond_the_line(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("John NNP B-PER\n", encoding="utf-8")
    assert "a.conll line 1: data.tag_column = 5, but the line has 3 columns" in error_of(splits_of, path,
                                                                                         tag_column=5)


def test_tokens_and_tags_of_different_lengths(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["B-X", "O"]},
                                              {"tokens": ["a", "b", "c"], "tags": ["B-X", "O"]}])
    assert error_of(splits_of, path) == "t.jsonl row 2: 3 tokens but 2 tags; give each token one tag"
    path = write_jsonl(tmp_path / "u.jsonl", [{"tokens": "a b", "tags": ["B-X", "O"]}])
    assert "u.jsonl row 1: 'tokens' must be a non-empty list of non-empty strings" in error_of(splits_of, path)


def test_unknown_tag_in_validation_names_its_line(tmp_path):
    train = write_conll(tmp_path / "train.conll", make_tagged(20, seed=0))
    validation = tmp_path / "val.conll"
    validation.write_text("my O\ninvoice B-BILLING\n\nthe O\nparcel B-PARCEL\n", encoding="utf-8")
    message = error_of(splits_of, train, validation=validation)
    assert message.startswith("val.conll line 4: tag 'B-PARCEL' is not among the training tags")


def test_inside_tags_that_start_an_entity_are_read_as_starts_with_a_warning(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("the O\nJohn I-PER\n\nin O\nParis I-LOC\nFrance I-LOC\n\nAnn B-PER\n", encoding="utf-8")
    splits = splits_of(path, split=(0.34, 0.33, 0.33))
    assert any("2 I- tags start an entity" in w for w in splits.warnings)


def test_a_sentence_in_two_splits_is_leakage(tmp_path):
    train = write_conll(tmp_path / "train.conll", make_tagged(20, seed=0))
    test = write_conll(tmp_path / "test.conll", make_tagged(20, seed=0)[:2])
    assert "test.conll line 3: this sentence is also in an earlier split" in error_of(
        splits_of, train, validation=test, test=test, leakage="error")


# Sub-words and scores

@pytest.fixture(scope="module")
def piece_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer that splits `invoices` into `invoice ##s`."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "my", "invoice", "##s", "are", "late"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def test_first_subtoken_is_labelled_the_rest_left_out_or_labelled_inside(piece_tokenizer):
    from graft.tasks.tokens import IGNORE, encode, inside_ids

    labels = ["O", "B-DOC", "I-DOC"]
    words, tags = [["my", "invoices", "are", "late"]], [[0, 1, 0, 0]]
    first = encode(words, tags, piece_tokenizer, 32)
    # [CLS] my invoice ##s are late [SEP]
    assert first.items[0]["labels"] == [IGNORE, 0, 1, IGNORE, 0, 0, IGNORE]
    assert first.firsts == [[1, 2, 4, 5]] and first.cut == 0
    every = encode(words, tags, piece_tokenizer, 32, inside_ids(labels))
    assert every.items[0]["labels"] == [IGNORE, 0, 1, 2, 0, 0, IGNORE]


def test_words_beyond_max_length_are_counted_and_have_no_position(piece_tokenizer):
    from graft.tasks.tokens import encode

    cut = encode([["my", "invoices", "are", "late"]], [[0, 1, 0, 0]], piece_tokenizer, 5)
    assert cut.firsts == [[1, 2, -1, -1]] and cut.cut == 2  # [CLS] my invoice ##s [SEP]


def test_entity_metrics_count_type_and_span():
    from graft.evaluation.entities import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC"]]
    guess = [["B-PER", "O", "O", "B-LOC"], ["O", "B-LOC"]]  # the person's span is wrong
    m = entity_metrics(gold, guess)
    assert (m["precision"], m["recall"], m["token_accuracy"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 5 / 6)
    assert m["per_entity"]["PER"]["f1"] == 0.0 and m["per_entity"]["LOC"] == {"precision": 1.0, "recall": 1.0,
                                                                            "f1": 1.0, "support": 2}


def test_entities_have_character_spans_and_scores():
    import numpy as np

    from graft.tasks.tokens import entities, split_words

    text = "  Ann  Smith went to Paris"
    _, spans = split_words(text)
    probs = np.array([[0.1, 0.9, 0, 0], [0.2, 0, 0.7, 0.1], [1, 0, 0, 0], [1, 0, 0, 0], [0.4, 0, 0, 0.6]])
    found = entities(text, spans, probs, ["O", "B-PER", "I-PER", "B-LOC"])
    assert found == [{"type": "PER", "text": "Ann  Smith", "start": 2, "end": 12, "score": 0.8},
                     {"type": "LOC", "text": "Paris", "start": 21, "end": 26, "score": 0.6}]


# A trained run

@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("tagged")
    train = write_conll(root / "train.conll", make_tagged(160, seed=1))
    record = graft.train({**tiny_recipe(tiny_bert, train, root / "run", train={"epochs": 4}),
                          "task": "token_classification"})
    assert record["status"] == "completed"
    return root


def test_cli_eval_prints_entity_scores_and_each_type(tagged_run):
    from tests.e2e.test_cli import graft_cli

    done = graft_cli("eval", str(tagged_run / "run"), cwd=tagged_run)
    assert done.returncode == 0, done.stderr
    first, header, *types = done.stdout.strip().splitlines()
    test = json.loads((tagged_run / "run" / "run.json").read_text())["metrics"]["test"]
    assert first.startswith(f"test: entity f1 {test['f1']:.4f}  precision {test['precision']:.4f}")
    assert header.split()[0] == "type" and sorted(line.split()[0] for line in types) == sorted(test["per_entity"])


def test_run_records_entity_scores_and_sentences(tagged_run):
    record = json.loads((tagged_run / "run" / "run.json").read_text())
    test = record["metrics"]["test"]
    assert record["recipe"]["eval"]["metric"] == "f1"
    assert set(test["per_entity"]) == {"BILLING", "DELIVERY", "LOGIN"}
    assert test["f1"] > 0.3 and test["token_accuracy"] > 0.85  # all-O scores f1 0 (and about 0.7 accuracy)
    assert record["metrics"]["validation"]["f1"] == record["best"]["f1"]
    assert record["tagged"] and all({"words", "gold", "predicted"} <= set(s) for s in record["tagged"])
    page = (tagged_run / "run" / "report.html").read_text()
    assert "Entities on test" in page and "entity F1 (micro)" in page and "entity type (worst F1 first)" in page
    card = (tagged_run / "run" / "model" / "README.md").read_text()
    assert "tag each word with one of 7 tags" in card and 'pipeline("token-classification"' in card


def test_predict_gives_entities_with_spans_in_memory_and_from_files(tagged_run):
    run = tagged_run / "run"
    texts = ["my invoice  charge is late", "why is the parcel still not shipped"]
    rows = graft.predict(run, texts)
    assert [r["text"] for r in rows] == texts
    found = [e for r in rows for e in r["entities"]]
    assert found and all(e["type"] in {"BILLING", "DELIVERY", "LOGIN"} and 0 < e["score"] <= 1 for e in found)
    for row in rows:
        assert all(row["text"][e["start"]:e["end"]] == e["text"] for e in row["entities"])
    source = tagged_run / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert graft.predict(run, source) == rows  # a file gives what memory gives
    out = tagged_run / "entities.csv"
    graft.predict(run, source, out)
    with out.open(encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [json.loads(r["entities"]) for r in written] == [r["entities"] for r in rows]


def test_eval_on_a_tagged_file_and_refusals(tagged_run, tmp_path):
    run = tagged_run / "run"
    held_out = write_conll(tmp_path / "more.conll", make_tagged(20, seed=9))
    metrics = graft.evaluate(run, held_out)
    assert metrics["n"] == 20 and 0 <= metrics["f1"] <= 1
    assert "--mc-dropout: for classifiers of whole examples" in error_of(graft.predict, run, ["a"], mc_dropout=3)
    assert "--format onnx" in error_of(graft.export, run, tmp_path / "x", format="onnx")


def test_compare_writes_the_sentences_once_and_ranks_by_entity_f1(tagged_run, tiny_bert, tmp_path):
    from graft.compare import format_table

    recipe = {**tiny_recipe(tiny_bert, tagged_run / "train.conll", tmp_path / "cmp", train={"epochs": 2}),
              "task": "token_classification"}
    result = graft.compare(recipe, ["full", "scratch"])
    written = [json.loads(line) for line in (tmp_path / "cmp" / "data" / "test.jsonl").read_text().splitlines()]
    assert len(written) == result["strategies"][0]["n_test"] and set(written[0]) == {"tokens", "tags"}
    rows = {r["label"]: r for r in result["strategies"]}
    for label in ("full", "scratch"):  # every run read the written test sentences, and scored entities on them
        run = json.loads((tmp_path / "cmp" / label / "run.json").read_text())
        assert run["data"]["sources"]["test"] == "test.jsonl" and rows[label]["f1"] == run["metrics"]["test"]["f1"]
    assert result["metric"] == "f1" and result["leader"] == max(rows, key=lambda k: rows[k]["f1"])
    assert "test entity F1" in (tmp_path / "cmp" / "compare.html").read_text()
    assert format_table(result).splitlines()[0].split()[:3] == ["strategy", "f1", "token_accuracy"]


def test_cross_validation_folds_sentences_each_once(tmp_path, tiny_bert):
    sentences = make_tagged(40, seed=4)
    train = write_conll(tmp_path / "train.conll", sentences + sentences[:5])  # five repeated: each kept once
    recipe = {**tiny_recipe(tiny_bert, train, tmp_path / "cv", train={"epochs": 1}), "task": "token_classification"}
    summary = graft.cross_validate(recipe, 2)
    folds = [[tuple(json.loads(line)["tokens"]) for line in
              (tmp_path / "cv" / "folds" / f"fold-{i}" / "test.jsonl").read_text().splitlines()] for i in range(2)]
    assert sorted(folds[0] + folds[1]) == sorted({tuple(words) for words, _ in sentences})
    assert [f["test"]["f1"] for f in summary["cv"]["folds"]] == [
        json.loads((tmp_path / "cv" / f"fold-{i}" / "run.json").read_text())["metrics"]["test"]["f1"] for i in range(2)]
    assert summary["cv"]["mean"]["f1"] == pytest.approx(sum(f["test"]["f1"] for f in summary["cv"]["folds"]) / 2)


def test_head_only_trains_on_cached_per_token_states(tmp_path, tiny_bert):
    train = write_conll(tmp_path / "train.conll", make_tagged(60, seed=2))
    tree = {**tiny_recipe(tiny_bert, train, tmp_path / "run", train={"epochs": 2}, strategy={"name": "head_only"}),
            "task": "token_classification"}
    record = graft.train(tree)
    assert record["strategy"]["feature_cache"] is None
    assert record["strategy"]["prefix_cache"][0]["used"] is True  # the frozen backbone ran once


@pytest.mark.parametrize(("section", "value", "expected"), [
    ("model", {"head": {"batchnorm": True}}, "model.head.batchnorm: a token classifier's head reads one state"),
    ("loss", {"class_weights": {"O": 0.5}}, "loss.class_weights: for classifiers of whole examples"),
    ("model", {"pooling": "mean"}, "model.pooling: for text classifiers"),
])
def test_recipe_fields_that_do_not_apply_are_refused(tmp_path, tiny_bert, section, value, expected):
    tree = {**tiny_recipe(tiny_bert, tmp_path / "t.conll", tmp_path / "run"), "task": "token_classification"}
    tree[section] = {**tree.get(section, {}), **value}
    assert expected in error_of(load_recipe, tree)


def test_tagging_fields_are_refused_for_text_classification(tmp_path, tiny_bert):
    tree = tiny_recipe(tiny_bert, tmp_path / "t.csv", tmp_path / "run", data={"tags_column": "labels"})
    assert "data.tags_column: text_classification does not read it" in error_of(load_recipe, tree)


def test_a_slow_tokenizer_is_refused(monkeypatch, tiny_bert):
    from types import SimpleNamespace

    from graft.models import build
    from graft.recipe import ModelSpec
    from graft.tasks import get_task

    monkeypatch.setattr(build, "load_classifier", lambda *a: SimpleNamespace(processor=SimpleNamespace(is_fast=False)))
    message = error_of(get_task("token_classification").load_model, ModelSpec(name=str(tiny_bert)), ["O", "B-X"],
                       None, False)
    assert "its tokenizer is not a fast (Rust) one" in message


def test_the_real_data_rule_tags_exactly_what_it_changed():
    """examples/token_classification_rt.py's tampering rule, on synthetic sentences (the real data is not needed)."""
    import random

    from tests.e2e.test_real_resnet20 import load_example

    tamper = load_example("token_classification_rt").tamper
    sentences = [words for words, _ in make_tagged(300, seed=3)]
    rng = random.Random(0)
    tagged = changed = 0
    for words in sentences:
        out, tags = tamper(words, sentences, rng)
        assert len(out) == len(tags) == len(words)
        for i, tag in enumerate(tags):
            if tag == "B-SWAP":
                assert (out[i], out[i + 1]) == (words[i + 1], words[i]) and tags[i + 1] == "I-SWAP"
            if tag == "O":
                assert out[i] == words[i]
        tagged += sum(t != "O" for t in tags)
        changed += sum(a != b for a, b in zip(out, words, strict=True))
    share = tagged / sum(len(w) for w in sentences)
    assert 0.12 < share < 0.22 and changed <= tagged  # about 17% tagged; a replacement may repeat a word by chance
