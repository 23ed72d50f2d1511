"""Teacher -> student distillation (strategy.name: distill), on tiny random BERTs trained in seconds.

By construction: a student that is its teacher, taught by the KL alone, has zero loss and zero gradient; a student
cut from the teacher starts as exactly its lower layers. Then: every bad teacher is refused in one line before
anything is written, a resumed distillation (unlabelled texts mixed in) ends bit for bit where an uninterrupted one
does, and the record sets teacher and student side by side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import graft
from graft.recipe import load_recipe
from graft.setup import setup
from tests.conftest import error_of, make_texts, tiny_recipe, trained_text_run, write_csv
from tests.e2e.test_real_resnet20 import load_example
from tests.e2e.test_resume import assert_resume_matches


@pytest.fixture(scope="module")
def teacher(tiny_bert_no_dropout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the 2-layer tiny BERT (no dropout: a student equal to it computes the very same logits)."""
    return trained_text_run(tiny_bert_no_dropout, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def data(teacher: Path) -> Path:
    return teacher.parent / "train.csv"  # the teacher's own training file: the same splits, the same labels


def distill_recipe(teacher: Path, data: Path, run_dir: Path, model: dict | None = None, **distill) -> dict:
    tree = tiny_recipe(Path("unused"), data, run_dir, strategy={"name": "distill", "teacher": str(teacher),
                                                               "distill": distill}, train={"epochs": 2})
    return {**tree, "model": model or {"max_length": 32}}


def test_a_student_that_is_its_teacher_has_zero_loss_and_zero_gradient_at_weight_1(teacher, data, tmp_path):
    tree = distill_recipe(teacher, data, tmp_path / "run", {"name": str(teacher / "model"), "max_length": 32},
                          weight=1.0)
    run = setup(load_recipe(tree))
    batch = next(iter(run.train_loader))
    run.model.train()
    output = run.model(**batch)
    task, kl = run.task_loss(batch, output), run.loss_terms["distill"](batch, output)
    assert output.loss > 0.01  # the labels' loss is there, and weight 1 gives it no say
    assert task.item() == 0 and abs(kl.item()) < 1e-7
    (task + kl).backward()
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-7


def test_a_cut_student_starts_as_the_teachers_first_layers(teacher, data, tmp_path):
    run = setup(load_recipe(distill_recipe(teacher, data, tmp_path / "run", layers=1)))
    student, original = run.model.state_dict(), load_file(teacher / "model" / "model.safetensors")
    assert run.model.config.num_hidden_layers == 1 and len(run.model.bert.encoder.layer) == 1
    assert not any(".layer.1." in k for k in student)
    kept = [k for k in student if k in original]
    assert any(".layer.0." in k for k in kept) and any("embeddings" in k for k in kept)
    assert "classifier.weight" in kept  # the teacher's fine-tuned head
    for k in kept:
        assert torch.equal(student[k], original[k]), k
    assert run.recipe.model.name == str(teacher / "model")


def _copy(teacher: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "teacher-copy"
    shutil.copytree(teacher, copy)
    edit(copy)
    return copy


def _edit_json(path: Path, change) -> None:
    tree = json.loads(path.read_text())
    change(tree)
    path.write_text(json.dumps(tree))


def _edit_yaml(path: Path, change) -> None:
    tree = yaml.safe_load(path.read_text())
    change(tree)
    path.write_text(yaml.safe_dump(tree))


BAD_TEACHERS = {
    "missing": (lambda t, tmp: tmp / "nowhere", {}, "no such folder"),
    "not finished": (lambda t, tmp: _copy(t, tmp, lambda c: _edit_json(c / "run.json", lambda r: r.update(
        status="interrupted"))), {}, "not a finished graft run (its run.json says 'interrupted')"),
    "another task": (lambda t, tmp: _copy(t, tmp, lambda c: _edit_yaml(c / "recipe.yaml", lambda r: r.update(
        task="image_classification"))), {}, "a image_classification run, and this run is text_classification"),
    "other labels": (lambda t, tmp: _copy(t, tmp, lambda c: _edit_json(c / "run.json", lambda r: r["data"].update(
        labels=["billing", "login"]))), {}, "its labels (billing, login) are not this data's (billing, delivery"),
    "layers not fewer": (lambda t, tmp: t, {"layers": 2}, "the teacher has 2 layers; a student cut from it has fewer"),
    "not BERT-like": (lambda t, tmp: _copy(t, tmp, lambda c: _edit_json(c / "model" / "config.json", lambda r: r.update(
        model_type="gpt2"))), {"layers": 1}, "is a gpt2 model; a student is cut only from a BERT-like encoder"),
}


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_a_bad_teacher_is_refused_in_one_line_before_anything_is_written(case, teacher, data, tmp_path):
    where, distill, expected = BAD_TEACHERS[case]
    run_dir = tmp_path / "run"
    message = error_of(graft.train, distill_recipe(where(teacher, tmp_path), data, run_dir, **distill))
    assert expected in message and "strategy." in message
    assert not run_dir.exists()


def test_a_student_with_another_vocabulary_is_refused(teacher, data, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path / "other-vocab"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "invoice", "parcel", "password", "the"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    message = error_of(graft.train, distill_recipe(teacher, data, tmp_path / "run", {"name": str(folder),
                                                                                     "max_length": 32}))
    assert "the student's tokenizer is not the teacher's" in message and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("sections", "expected"), [
    ({"strategy": {"name": "distill"}}, "strategy.teacher: the run directory of a finished graft run"),
    ({"strategy": {"name": "full", "teacher": "t"}}, "only strategy.name: distill learns from a teacher"),
    ({"strategy": {"name": "distill", "teacher": "t", "distill": {"layers": 1}}, "model": {"name": "minilm"}},
     "strategy.distill.layers cuts the student from the teacher"),
    ({"strategy": {"name": "distill", "teacher": "t"}, "model": {"name": "teacher"}},
     "a student cut from the teacher needs strategy.distill.layers"),
    ({"strategy": {"name": "distill", "teacher": "t"}, "retention": {"data": "old.csv"}},
     "a distilled student has no pretrained skill of its own"),
    ({"strategy": {"name": "distill", "teacher": "t"}, "task": "image_classification"},
     "distillation is for text classifiers"),
])
def test_a_recipe_that_cannot_distil_is_refused(sections, expected):
    assert expected in error_of(load_recipe, {"data": {"train": "x.csv"}, **sections})


def test_resumed_distillation_with_unlabelled_texts_equals_an_uninterrupted_one(tiny_bert, tmp_path):
    (tmp_path / "teacher").mkdir()
    teacher = trained_text_run(tiny_bert, tmp_path / "teacher")  # dropout on: restoring the RNG is tested too
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [(t,) for t, _ in make_texts(40, seed=9)], ("text",))

    def recipe(run_dir: Path) -> dict:
        tree = distill_recipe(teacher, teacher.parent / "train.csv", run_dir, layers=1, unlabelled=str(unlabelled),
                              unlabelled_share=0.25)
        return {**tree, "checkpoint": {"every_steps": 3}}

    assert_resume_matches(recipe, tmp_path, stop=7)
    logged = [h for h in json.loads((tmp_path / "whole" / "run.json").read_text())["metrics"]["history"]
              if h["split"] == "train"]
    assert logged and all(r["loss_distill"] > 0 and "loss_task" in r for r in logged)


def test_the_record_sets_teacher_and_student_side_by_side(teacher, data, tmp_path):
    record = graft.train(distill_recipe(teacher, data, tmp_path / "run", layers=1, weight=0.7))
    d = record["distill"]
    assert d["teacher"]["layers"] == 2 and d["student"]["layers"] == 1
    assert d["student"]["params"] < d["teacher"]["params"] and d["student"]["megabytes"] < d["teacher"]["megabytes"]
    teacher_record = json.loads((teacher / "run.json").read_text())
    assert d["teacher"]["test"]["accuracy"] == teacher_record["metrics"]["test"]["accuracy"]
    assert d["teacher"]["test_from"].startswith("the teacher run's record")
    assert d["student"]["test"]["accuracy"] == record["metrics"]["test"]["accuracy"]
    for side in ("teacher", "student"):
        assert set(d[side]["latency_ms"]) == {"batch_1", "batch_32"}
        assert all(v > 0 for v in d[side]["latency_ms"].values())
    assert d["student_vs_teacher"]["accuracy"] == pytest.approx(
        d["student"]["test"]["accuracy"] / d["teacher"]["test"]["accuracy"])
    assert d["loss"] == {"temperature": 2.0, "weight": 0.7, "unlabelled": None}
    assert "the teacher cut to 1 of its 2 layers" in d["student"]["start"]
    table = load_example("distill_rt").format_distill(d)  # the example prints the section as this table
    assert "| teacher | 2 |" in table and "| student | 1 |" in table
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Distillation: teacher and student" in page and "ms / example, batch 32" in page
    # the saved student is an ordinary 1-layer model: it loads and scores as the run did
    assert graft.evaluate(tmp_path / "run", raw=True)["accuracy"] == record["metrics"]["test"]["accuracy"]


def test_a_teacher_measured_on_another_test_split(teacher, tmp_path):
    other = write_csv(tmp_path / "other.csv", make_texts(90, seed=5))
    record = graft.train(distill_recipe(teacher, other, tmp_path / "run", layers=1))
    assert record["distill"]["teacher"]["test_from"] == "measured on this run's test split"
    assert 0 <= record["distill"]["teacher"]["test"]["accuracy"] <= 1
