"""Can a smaller model do nearly as well? all-MiniLM-L6-v2 fine-tuned on rt-polarity (the teacher), then a 3-layer
student cut from it (its embeddings, first 3 layers, pooling and head) and distilled from it.

    .venv/bin/python examples/distill_rt.py [SHARED_DATA_DIR] [OUTPUT_DIR] [STUDENT_EPOCHS] [teacher,student,unlabelled]

The sentences: rt-polarity shuffled with seed 0 (`defaults_heldout.rt_polarity_rows`): the first 3,000 train both
(15% carved off as validation), the next 1,000 test both; `unlabelled` adds the rest of the corpus (6,662 sentences,
labels dropped) to the student's batches with the KL loss alone. The teacher is a plain `full` run (AdamW 5e-5,
3 epochs, batch 32, 64 tokens); a completed teacher in OUTPUT_DIR/teacher is reused, students go to
OUTPUT_DIR/student-Nep and OUTPUT_DIR/unlabelled-Nep (N: STUDENT_EPOCHS). Students: the defaults of
strategy.distill (T = 2, weight 0.5), AdamW at STUDENT_LR, STUDENT_EPOCHS epochs. Each student's run.json holds
the `distill` section (teacher and student test metrics, parameters, size on disk, CPU latency at batch 1 and 32,
measured side by side); this prints it as a table.

Target (issue 20): the student keeps >= 97% of the teacher's accuracy at half its latency.
"""

from __future__ import annotations

import sys
from pathlib import Path

from defaults_heldout import rt_polarity_rows, write  # beside this script

import graft
from graft.recipe import load_recipe
from graft.rundir import reuse_completed

HERE = Path(__file__).resolve().parent
STUDENT_LR = 1e-4
"""The student's AdamW LR: twice the teacher's (a half-depth model whose top layers must learn what the teacher's
upper half did; chosen before measuring, not tuned)."""


def recipe(files: dict[str, str], out: Path, epochs: int = 3, **sections: dict) -> dict:
    tree = {"model": {"name": "minilm", "max_length": 64}, "data": {**files, "split": [0.85, 0.15, 0.0]},
            "optim": {"name": "adamw", "lr": 5e-5}, "train": {"epochs": epochs, "batch_size": 32, "seed": 0},
            "output": {"dir": str(out), "trackers": []}}
    return {**tree, **sections}


def train_once(tree: dict) -> dict:
    """The run's record: trained now, or the one already completed with this very recipe."""
    return reuse_completed(load_recipe(tree)) or graft.train(tree, overwrite=True)


def main(shared: Path, out: Path, student_epochs: int = 3,
         parts: tuple[str, ...] = ("teacher", "student", "unlabelled")) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = rt_polarity_rows(shared)
    files = {"train": write(out / "rt_train.csv", ("text", "label"), rows[:3000]),
             "test": write(out / "rt_test.csv", ("text", "label"), rows[3000:4000])}
    unlabelled = write(out / "rt_unlabelled.csv", ("text",), [(text,) for text, _ in rows[4000:]])
    records = {"teacher": train_once(recipe(files, out / "teacher"))}
    students = {"student": {"layers": 3},
                "unlabelled": {"layers": 3, "unlabelled": unlabelled}}
    for name in (n for n in students if n in parts):
        strategy = {"name": "distill", "teacher": str(out / "teacher"), "distill": students[name]}
        tree = recipe(files, out / f"{name}-{student_epochs}ep", student_epochs, strategy=strategy,
                      optim={"name": "adamw", "lr": STUDENT_LR})
        records[name] = train_once({**tree, "model": {"max_length": 64}})  # the model: the teacher, cut
        print(f"\n{name} ({tree['output']['dir']}):\n{format_distill(records[name]['distill'])}", flush=True)
    return records


def format_distill(section: dict) -> str:
    """The teacher-against-student table of a distilled run's record."""
    lines = ["| model | layers | test accuracy | f1_macro | parameters | MB on disk | ms/example at batch 1 | "
             "ms/example at batch 32 |", "|---|---|---|---|---|---|---|---|"]
    for who in ("teacher", "student"):
        x = section[who]
        lines.append(f"| {who} | {x['layers']} | {x['test']['accuracy']:.3f} | {x['test']['f1_macro']:.3f} | "
                     f"{x['params']:,} | {x['megabytes']:.1f} | {x['latency_ms']['batch_1']:.2f} | "
                     f"{x['latency_ms']['batch_32']:.2f} |")
    r = section["student_vs_teacher"]
    lines.append(f"student ÷ teacher: accuracy {r['accuracy']:.3f}, latency {r['latency_batch_1']:.2f} (batch 1) / "
                 f"{r['latency_batch_32']:.2f} (batch 32), parameters {r['params']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/distill-rt"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ("teacher", "student", "unlabelled"))
