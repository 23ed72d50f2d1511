"""Train-time text augmentation: each EDA operation does what it claims on known words, synonyms are the neighbours a
constructed embedding matrix puts there, draws are a function of (seed, epoch, example) only, and a run augments its
training texts afresh each epoch while validation sees them as they are."""

from __future__ import annotations

import math
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertTokenizerFast, DataCollatorWithPadding, PreTrainedTokenizerFast

import graft
from graft.recipe import load_recipe
from graft.setup import setup
from graft.tasks.text import augmented_train_loader, tokenize, train_loader
from graft.tasks.text_augment import (
    TextAugment,
    delete_words,
    insert_words,
    replace_synonyms,
    swap_words,
    synonym_table,
    whole_words,
)
from tests.conftest import FILLER, KEYWORDS, SPECIALS, make_texts, tiny_recipe, write_csv

TEXT = "the parcel was late again and the courier still has not called me back"
WORDS = TEXT.split(" ")
SYNONYMS = {"late": ("delayed", "tardy"), "parcel": ("package",), "called": ("phoned",)}


def rng(k: int = 0) -> np.random.Generator:
    return np.random.default_rng([7, k])


def in_order(part: list[str], whole: list[str]) -> bool:
    """Whether `part` is `whole` with some words taken out."""
    rest = iter(whole)
    return all(any(w == x for x in rest) for w in part)


def test_deletion_at_zero_keeps_every_word_and_at_one_keeps_exactly_one() -> None:
    assert delete_words(WORDS, 0.0, rng()) == WORDS
    for k in range(5):
        kept = delete_words(WORDS, 1.0, rng(k))
        assert len(kept) == 1 and kept[0] in WORDS
    some = delete_words(WORDS, 0.5, rng())
    assert 0 < len(some) < len(WORDS) and in_order(some, WORDS)


def test_swap_keeps_the_words_and_moves_some() -> None:
    assert swap_words(WORDS, 0.0, rng()) == WORDS
    swapped = swap_words(WORDS, 0.5, rng())
    assert Counter(swapped) == Counter(WORDS) and swapped != WORDS
    assert swap_words(["alone"], 1.0, rng()) == ["alone"]


def test_synonym_replacement_takes_words_from_the_table_only() -> None:
    assert replace_synonyms(WORDS, 0.0, SYNONYMS, rng()) == WORDS
    replaced = replace_synonyms(WORDS, 1.0, SYNONYMS, rng())
    assert len(replaced) == len(WORDS)
    for before, after in zip(WORDS, replaced, strict=True):
        assert after in SYNONYMS[before] if before in SYNONYMS else after == before


def test_insertion_adds_synonyms_or_copies_and_keeps_the_text_in_order() -> None:
    assert insert_words(WORDS, 0.0, SYNONYMS, rng()) == WORDS
    grown = insert_words(WORDS, 0.5, SYNONYMS, rng())
    assert len(grown) > len(WORDS) and in_order(WORDS, grown)
    added = Counter(grown) - Counter(WORDS)
    allowed = set(WORDS) | {s for options in SYNONYMS.values() for s in options}
    assert set(added) <= allowed
    only_synonyms = insert_words(["late", "late"], 1.0, SYNONYMS, rng())
    assert len(only_synonyms) == 4 and set(only_synonyms) - {"late"} <= set(SYNONYMS["late"])


def test_an_example_is_augmented_by_its_own_key_in_any_order() -> None:
    augment = TextAugment(swap=0.2, delete=0.1, insert=0.1, synonym=0.3, synonyms=SYNONYMS, seed=3)
    text = TEXT
    keys = [(index, epoch) for index in range(6) for epoch in range(3)]
    forward = {key: augment(text, *key) for key in keys}
    backward = {key: augment(text, *key) for key in reversed(keys)}
    assert forward == backward
    assert len({forward[(0, epoch)] for epoch in range(3)}) == 3  # a new version each epoch
    assert len({forward[(index, 0)] for index in range(6)}) > 1  # and per example
    assert TextAugment(swap=0.2, seed=4)(text, 0, 0) != TextAugment(swap=0.2, seed=3)(text, 0, 0)


def test_no_edit_leaves_the_text_exactly_as_it_was() -> None:
    assert TextAugment()("  spaces\tand  tabs stay ", 0, 0) == "  spaces\tand  tabs stay "
    assert TextAugment(swap=1.0)("   ", 0, 0) == "   "


def test_switching_one_operation_on_leaves_the_others_draws_alone() -> None:
    text = TEXT
    upper = {w: (w.upper(),) for w in WORDS}
    alone = TextAugment(swap=0.3, delete=0.2, seed=1)(text, 2, 5)
    with_synonyms = TextAugment(swap=0.3, delete=0.2, synonym=1.0, synonyms=upper, seed=1)(text, 2, 5)
    assert with_synonyms == alone.upper()


# Unit vectors with known cosines to `happy`: glad 0.9, joyful 0.6, sad -1.
EMBEDDINGS = torch.tensor([[1.0, 0.0, 0.0], [0.9, math.sqrt(1 - 0.81), 0.0], [0.6, 0.0, 0.8], [-1.0, 0.0, 0.0]])
VOCABULARY = {"happy": 0, "glad": 1, "joyful": 2, "sad": 3}


def test_synonyms_are_the_nearest_words_above_the_floor() -> None:
    table = synonym_table(["happy", "sad", "glad", "unknown"], VOCABULARY, EMBEDDINGS, k=5, min_similarity=0.5)
    assert table["happy"] == ("glad", "joyful")  # nearest first, sad (cosine -1) left out
    assert table["glad"] == ("happy", "joyful")  # cosines 0.9 and 0.54
    assert "sad" not in table and "unknown" not in table
    assert synonym_table(["happy"], VOCABULARY, EMBEDDINGS, k=1, min_similarity=0.5) == {"happy": ("glad",)}
    assert synonym_table(["happy"], VOCABULARY, EMBEDDINGS, k=5, min_similarity=0.7) == {"happy": ("glad",)}


def test_synonyms_follow_the_case_of_the_word_and_skip_its_case_variants() -> None:
    table = synonym_table(["Happy", "HAPPY"], VOCABULARY, EMBEDDINGS, k=5, min_similarity=0.5)
    assert table == {"Happy": ("Glad", "Joyful"), "HAPPY": ("GLAD", "JOYFUL")}
    cased = {**VOCABULARY, "Happy": 4}
    twin = torch.cat([EMBEDDINGS, EMBEDDINGS[:1]])  # `Happy` sits exactly on `happy`
    assert synonym_table(["happy"], cased, twin, k=5, min_similarity=0.5)["happy"] == ("glad", "joyful")


def test_whole_words_of_a_wordpiece_vocabulary() -> None:
    vocab = [*SPECIALS, "movie", "film", "##s", "the", "a", "x1", "go-to", "Film"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False)
    assert whole_words(tokenizer) == {"movie": 5, "film": 6, "Film": 12}


@pytest.mark.parametrize("mark", ["Ġ", "▁"])
def test_whole_words_of_a_vocabulary_that_marks_word_starts(mark: str) -> None:
    vocab = ["<s>", "</s>", "<unk>", f"{mark}movie", "movie", f"{mark}film", f"{mark}the", "ing", mark, f"{mark}x"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert whole_words(tokenizer) == {"movie": 3, "film": 5}


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    vocab = SPECIALS + sorted({w for ws in KEYWORDS.values() for w in ws} | set(FILLER))
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


@pytest.fixture(scope="module")
def split() -> datasets.Dataset:
    rows = make_texts(30, seed=2)
    ids = {name: i for i, name in enumerate(KEYWORDS)}
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [ids[x] for _, x in rows]})


def batches(loader, epoch: int) -> list[dict[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return [dict(batch) for batch in loader]


def rows(batches: list[torch.Tensor]) -> Counter:
    """The token sequences of batches, padding (id 0) taken off, as a multiset."""
    return Counter(tuple(t for t in row.tolist() if t != 0) for batch in batches for row in batch)


def same_batches(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


def test_the_augmented_loader_without_edits_gives_the_plain_loaders_batches(tokenizer, split) -> None:
    plain = train_loader(tokenize(split, tokenizer, 16), tokenizer, 4, seed=3, group_by_length=True)
    keyed = augmented_train_loader(split, tokenizer, 16, 4, seed=3, group_by_length=True, augment=TextAugment())
    for epoch in (0, 1):
        assert same_batches(batches(plain, epoch), batches(keyed, epoch))


def test_the_augmented_loader_replays_an_epoch_in_any_worker_and_moves_on(tokenizer, split) -> None:
    augment = TextAugment(swap=0.3, delete=0.2, seed=3)
    loader = augmented_train_loader(split, tokenizer, 32, 4, seed=3, group_by_length=True, augment=augment)
    workers = augmented_train_loader(split, tokenizer, 32, 4, seed=3, group_by_length=True, augment=augment,
                                     num_workers=2)
    first, second = batches(loader, 0), batches(loader, 1)
    assert same_batches(first, batches(loader, 0)) and same_batches(first, batches(workers, 0))
    assert rows([b["input_ids"] for b in first]) != rows([b["input_ids"] for b in second])  # new texts, not only
    assert [b["labels"].tolist() for b in first] != [b["labels"].tolist() for b in second]  # a new order
    plain = train_loader(tokenize(split, tokenizer, 32), tokenizer, 4, seed=3, group_by_length=True)
    assert [b["labels"].tolist() for b in first] == [b["labels"].tolist() for b in batches(plain, 0)]


# Whole runs on the tiny BERT.


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return write_csv(tmp_path_factory.mktemp("augment-data") / "train.csv", make_texts(80, seed=5))


AUGMENT = {"augment": {"swap": 0.2, "delete": 0.1, "insert": 0.1, "synonym": 0.2, "synonym_similarity": 0.1}}


def spy_on_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, torch.Tensor]]:
    """Every (training?, input_ids) the BERT embeddings see."""
    from transformers.models.bert import modeling_bert

    seen: list[tuple[bool, torch.Tensor]] = []
    forward = modeling_bert.BertEmbeddings.forward

    def spy(self, input_ids=None, *args, **kwargs):
        seen.append((self.training, input_ids.clone()))
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertEmbeddings, "forward", spy)
    return seen


def test_a_run_augments_its_training_texts_afresh_each_epoch_and_validates_on_them_as_they_are(
        tiny_bert, data, tmp_path, monkeypatch) -> None:
    seen = {}
    for name, extra in (("plain", {}), ("augmented", AUGMENT)):
        calls = spy_on_inputs(monkeypatch)
        record = graft.train(tiny_recipe(tiny_bert, data, tmp_path / name, data=extra, train={"epochs": 2}))
        train = [ids for training, ids in calls if training]
        evals = [ids for training, ids in calls if not training]
        per_epoch = len(train) // 2
        val_batches = math.ceil(record["data"]["sizes"]["validation"] / 8)
        seen[name] = (rows(train[:per_epoch]), rows(train[per_epoch:]), evals[:val_batches],
                      evals[val_batches:2 * val_batches])
        monkeypatch.undo()
    plain, augmented = seen["plain"], seen["augmented"]
    assert plain[0] == plain[1]  # unaugmented: the same texts each epoch, only their order changes
    assert augmented[0] != augmented[1] and augmented[0] != plain[0]
    for first, second in ((augmented[2], augmented[3]), (plain[2], augmented[2])):
        assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_resumed_augmented_text_run_equals_an_uninterrupted_one(tiny_bert, data, tmp_path) -> None:
    from tests.e2e.test_resume import assert_resume_matches

    sections = {"data": AUGMENT, "checkpoint": {"every_steps": 3}, "train": {"epochs": 2}}
    assert_resume_matches(lambda run: tiny_recipe(tiny_bert, data, run, **sections), tmp_path)


def test_the_feature_caches_need_fixed_inputs(tiny_bert, data, tmp_path, capsys) -> None:
    head_only = setup(load_recipe(tiny_recipe(tiny_bert, data, tmp_path / "head", data=AUGMENT,
                                              strategy={"name": "head_only"})))
    assert any(n.startswith("text augmentation: off, the feature cache needs fixed inputs") for n in head_only.notes)
    assert isinstance(head_only.train_loader.collate_fn, DataCollatorWithPadding)  # the loader of unaugmented runs
    record = graft.train(tiny_recipe(tiny_bert, data, tmp_path / "freeze", data=AUGMENT, train={"epochs": 1},
                                     strategy={"name": "freeze", "freeze_groups": 2}))
    assert "prefix_cache" not in record["strategy"]
    assert "the training inputs are augmented afresh each epoch" in capsys.readouterr().err


def test_synonyms_that_no_word_has_are_a_warning(tiny_bert, data, tmp_path) -> None:
    strict = {"augment": {"synonym": 0.3, "synonym_similarity": 1.0}}
    run = setup(load_recipe(tiny_recipe(tiny_bert, data, tmp_path / "run", data=strict)))
    assert any(n.startswith("data.augment.synonym: no training word has a whole-word neighbour") for n in run.notes)
