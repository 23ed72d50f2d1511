"""What a finished run does: evaluate on data, predict (on files, or on inputs in memory through `Predictor`),
export. Each asks the run's task for what differs."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.files import check_output_file, write_json, writing
from graft.recipe import Recipe
from graft.rundir import MODEL_DIR, read_record, run_recipe
from graft.tasks import Task, get_task

if TYPE_CHECKING:
    import numpy as np
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader


@dataclass
class TrainedRun:
    recipe: Recipe
    task: Task
    model: nn.Module
    processor: Any
    labels: list[str]
    input: dict[str, Any]
    temperature: float = 1.0
    """What the logits are divided by before the softmax: the run's fitted temperature, 1 when raw or uncalibrated."""
    mc_passes: int | None = None
    """Predict with this many dropout passes (graft.evaluation.mc_dropout) rather than one deterministic pass."""
    thresholds: dict[str, float] | None = None
    """A multi-label run's decision threshold per label (tuned on validation, kept beside the weights); None: 0.5."""


def open_run(run_dir: Path, raw: bool = False) -> TrainedRun:
    """A finished run's recipe, task, model, tokenizer or image input, class names and temperature (`raw`: 1, the
    model's own probabilities; a run saved without one has 1 too). An ONNX export opens as a run too."""
    from graft.evaluation.calibration import read_temperature
    from graft.evaluation.multilabel import read_thresholds
    from graft.onnx_export import is_onnx_export, open_export
    from graft.strategy.peft import is_peft_run, load_peft_run

    if is_onnx_export(run_dir):
        return open_export(run_dir, raw)
    recipe = run_recipe(run_dir)
    task = get_task(recipe.task)
    check_model_files(run_dir)
    temperature = 1.0 if raw else read_temperature(run_dir / MODEL_DIR)
    thresholds = read_thresholds(run_dir / MODEL_DIR)
    if is_peft_run(run_dir / MODEL_DIR):
        rebuilt = load_peft_run(run_dir / MODEL_DIR)
        model = rebuilt.attached.model
        return TrainedRun(recipe, task, model, rebuilt.processor, task.trained_labels(model, rebuilt.labels),
                          rebuilt.input, temperature, thresholds=thresholds)
    trained = task.load_trained(run_dir / MODEL_DIR, recipe.data)
    return TrainedRun(recipe, task, trained.model, trained.processor, trained.labels, trained.input, temperature,
                      thresholds=thresholds)


def check_model_files(run_dir: Path) -> None:
    """Refuse a run whose final model is missing, has no weights file, or has one that is cut short or damaged,
    before anything reads or copies it."""
    from safetensors import safe_open

    folder = run_dir / MODEL_DIR
    if not folder.is_dir():
        raise GraftError(f"{run_dir}: no final model (model/ missing); did the run finish?")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise GraftError(f"{folder}: no weights file (*.safetensors); the final model is incomplete: restore it or "
                         f"train the run again")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):  # its header must cover the file exactly
                pass
        except Exception as error:  # safetensors raises its own error types for damaged files
            reason = " ".join(str(error).split())[:120] or type(error).__name__
            raise GraftError(f"{path}: damaged ({reason}); restore the file or train the run again") from None


def batches(run: TrainedRun, split: Any) -> tuple[Accelerator, nn.Module, DataLoader]:
    """The run's model and a split as batches, placed on the device the way training does it."""
    from accelerate import Accelerator

    loader = run.task.eval_loader(run.recipe, split, run)
    accelerator = Accelerator()
    model, loader = accelerator.prepare(run.model, loader)
    return accelerator, model, loader


def evaluate_run(run_dir: Path | str, data: Path | str | None = None, *, raw: bool = False) -> dict[str, Any]:
    """Metrics of a trained run on `data` (a labelled file, or a folder of class folders for images), or on the
    run's own test split. A calibrated classifier's probabilities are scaled by its temperature (which the metrics
    then name) unless `raw`."""
    run = open_run(Path(run_dir), raw)
    if data is None:
        split = run.task.load_splits(run.recipe).test
    else:
        split = run.task.read_labelled(run.recipe, Path(data), run.labels)
    scaled: dict[str, Any] = {"temperature": run.temperature} if run.temperature != 1.0 else {}  # a classifier's
    if run.thresholds is not None:  # a multi-label run's
        scaled["thresholds"] = run.thresholds
    return {**run.task.evaluate(*batches(run, split), run.labels, **scaled), **scaled}


def test_run(run_dir: Path | str) -> dict[str, Any]:
    """The test phase of a run trained with `test=False` (a sweep's chosen trial), once: its test metrics, the
    classifier's temperature fitted on validation, the confident mistakes, written into run.json, the report and the
    model card as training would have; the updated record. A run tested already is returned as it is: the test set
    is seen once."""
    import time

    from graft.models.save import write_run_card
    from graft.pipeline import keep_beside_weights, model_warnings
    from graft.report import write_report
    from graft.rundir import RECORD_FILE

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record.get("status") != "completed":
        raise GraftError(f"{run_dir}: the run has not completed (status {record.get('status')!r}); nothing to test")
    if record["metrics"].get("test") is not None:
        return record
    run = open_run(run_dir, raw=True)
    splits = run.task.load_splits(run.recipe)
    started = time.perf_counter()
    accelerator, model, loader = batches(run, splits.test)
    metrics, extras = run.task.test(accelerator, model, loader, splits, run, run.recipe)
    keep_beside_weights(run_dir / MODEL_DIR, extras)
    record["metrics"]["test"] = metrics
    record.update(extras, warnings=model_warnings(metrics))
    record["timings"]["test_s"] = round(time.perf_counter() - started, 3)
    write_json(run_dir / RECORD_FILE, record)
    write_report(run_dir)
    write_run_card(run_dir)
    return record


def predict_run(run_dir: Path | str, source: str, output: Path | str | None = None, *, raw: bool = False,
                mc_dropout: int | None = None, min_confidence: float | None = None) -> list[dict[str, Any]]:
    """Predictions for each input of `source`: labels and probabilities (texts: a file, or '-' for stdin lines;
    images: a file, a folder searched recursively, a table with the image column, or '-' for paths on stdin), or a
    language model's answers to prompts. A calibrated classifier's probabilities are scaled by its temperature;
    `raw` gives the model's own. `mc_dropout`: the mean of that many dropout passes, with the predictive entropy,
    mutual information and each class's spread; `min_confidence`: rows whose top probability is below it are
    labelled `abstain`.

    With `output`, rows are written there (CSV/TSV by suffix, else JSON lines), atomically.
    """
    _check_options(mc_dropout, min_confidence)
    if output is not None:
        check_output_file(Path(output))
    run = open_run(Path(run_dir), raw)
    _set_passes(run, mc_dropout)
    rows, columns = run.task.predict(run, source, lambda split: batches(run, split))
    rows = _abstain(rows, min_confidence)
    if output is not None:
        write_rows(rows, Path(output), columns)
    return rows


class Predictor:
    """A finished run, loaded once, that predicts on inputs held in memory:

    - text classifiers: strings (a multi-label run's rows give `labels`, the set, instead of `label` and `score`);
    - image classifiers: PIL images, uint8 arrays (height, width, 3) (a 4-d array is a batch) or image file paths;
    - language models: prompts (strings) or conversations (lists of {role, content}); answers are greedy.

    `predict(["great film", "dull"])` gives one row per input, in order, as `graft predict` writes them for the same
    inputs: `{"text": "great film", "label": "pos", "score": 0.93, "probabilities": {"neg": 0.07, "pos": 0.93}}`
    (`image`: the file, or None for an image given in memory; language models: `prompt` and `generated`). One input
    not in a list gives its row alone. PEFT runs load as any other. Inputs go through the model `batch_size` at a
    time (default: the run's evaluation batch size), on `device` (default: the GPU when there is one).
    Probabilities are scaled by the run's fitted temperature; `raw=True` gives the model's own.
    """

    def __init__(self, run_dir: Path | str, *, batch_size: int | None = None, device: str | None = None,
                 raw: bool = False, mc_dropout: int | None = None, min_confidence: float | None = None) -> None:
        from accelerate import PartialState
        from torch import device as torch_device

        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise GraftError(f"batch_size = {batch_size!r}: give a whole number of at least 1")
        _check_options(mc_dropout, min_confidence)
        self.run_dir = Path(run_dir)
        self._run = open_run(self.run_dir, raw)
        _set_passes(self._run, mc_dropout)
        self.min_confidence = min_confidence
        if batch_size is not None:
            self._run.recipe.train.eval_batch_size = batch_size
        self.device = torch_device(device) if device is not None else PartialState().device
        self._run.model.to(self.device).eval()

    @property
    def task(self) -> str:
        return self._run.recipe.task

    @property
    def labels(self) -> list[str]:
        """The class names, in the order of the model's outputs (empty for a language model)."""
        return list(self._run.labels)

    def __repr__(self) -> str:
        return f"Predictor({str(self.run_dir)!r}, task={self.task!r}, labels={self.labels!r})"

    def predict(self, inputs: Any) -> list[dict[str, Any]] | dict[str, Any]:
        """A row per input (a list for a list, one row for one input); a wrong input is a GraftError naming it."""
        many, items = self.as_items(inputs)
        rows, _ = self.rows(items)
        return rows if many else rows[0]

    def as_items(self, inputs: Any) -> tuple[bool, list[Any]]:
        """Whether `inputs` is many inputs, and them as a list."""
        import numpy as np
        from PIL import Image

        if isinstance(inputs, np.ndarray) and self._run.task.input_kind == "image":
            return (True, list(inputs)) if inputs.ndim == 4 else (False, [inputs])
        if isinstance(inputs, str | bytes | Path | dict | Image.Image) or not isinstance(inputs, Iterable):
            return False, [inputs]
        items = list(inputs)
        if items and all(isinstance(x, dict) for x in items):
            return False, [items]  # the messages of one conversation (which only a language model takes)
        return True, items

    def rows(self, items: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows for `items` and the columns of a CSV of them; CHUNK_BATCHES batches at a time, so images given as
        files are not all decoded at once."""
        from graft.evaluation.predictions import loader_logits

        step = CHUNK_BATCHES * self._run.recipe.train.eval_batch

        def logits(loader: DataLoader) -> np.ndarray:
            return loader_logits(self._run.model, loader, self.device)

        rows: list[dict[str, Any]] = []
        for start in range(0, max(len(items), 1), step):  # once even for no inputs: the columns
            chunk, columns = self._run.task.predict_inputs(self._run, items[start:start + step], logits)
            rows += chunk
        return _abstain(rows, self.min_confidence), columns


CHUNK_BATCHES = 64
"""Batches per chunk of in-memory inputs: whole batches, so each batch is the one `graft predict` would make."""


def predict(run_dir: Path | str, inputs: Any, output: Path | str | None = None, *, raw: bool = False,
            mc_dropout: int | None = None, min_confidence: float | None = None) -> list[dict[str, Any]]:
    """`graft.predict`: rows for a file as `graft predict` reads it (texts: a table or a .txt, `-` for stdin;
    images: an image, a folder, a table of paths), or for inputs held in memory, in a list (see `Predictor`).
    With `output`, the rows are written there too (CSV/TSV by suffix, else JSON lines). `raw`: the model's own
    probabilities, not scaled by the run's temperature; `mc_dropout`, `min_confidence` as for `predict_run`."""
    if isinstance(inputs, str | Path):
        if str(inputs) != "-" and not Path(inputs).exists():
            raise GraftError(f"{str(inputs)[:80]!r}: no such file; graft.predict reads a file, or takes the inputs "
                             f"themselves in a list: graft.predict(run_dir, [...])")
        return predict_run(run_dir, str(inputs), output, raw=raw, mc_dropout=mc_dropout,
                           min_confidence=min_confidence)
    if output is not None:
        check_output_file(Path(output))
    predictor = Predictor(run_dir, raw=raw, mc_dropout=mc_dropout, min_confidence=min_confidence)
    rows, columns = predictor.rows(predictor.as_items(inputs)[1])
    if output is not None:
        write_rows(rows, Path(output), columns)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    """Rows as CSV/TSV (by suffix; a row's `probabilities` become p_<label> columns) or JSON lines; atomically."""
    with writing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            w = csv.DictWriter(f, fieldnames=columns, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            w.writeheader()
            w.writerows(_flat(r) for r in rows)
        else:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row for a CSV: `probabilities`, (MC dropout) `std` and (regression) `predicted` spread out as p_<label>,
    std_<label> and predicted_<target>; a list of names (a multi-label row's `labels`) joined by commas, of records (a
    token classifier's entities) as JSON."""
    spread = {"probabilities": "p_", "std": "std_", "predicted": "predicted_"}
    out = {k: _cell(v) for k, v in row.items() if k not in spread}
    for key, prefix in spread.items():
        out.update({f"{prefix}{n}": v for n, v in row.get(key, {}).items()})
    return out


def _cell(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if any(isinstance(v, dict) for v in value):
        return json.dumps(value, ensure_ascii=False)
    return ",".join(map(str, value))


def _check_options(mc_dropout: int | None, min_confidence: float | None) -> None:
    from graft.evaluation.mc_dropout import check_min_confidence, check_passes

    if mc_dropout is not None:
        check_passes(mc_dropout)
    if min_confidence is not None:
        check_min_confidence(min_confidence)


def _set_passes(run: TrainedRun, mc_dropout: int | None) -> None:
    from graft.models.onnx_graph import OnnxModel

    if mc_dropout is not None and isinstance(run.model, OnnxModel):
        raise GraftError("--mc-dropout: an ONNX export's graph has no dropout to switch on; predict with the run "
                         "directory it came from")
    run.mc_passes = mc_dropout


def _abstain(rows: list[dict[str, Any]], min_confidence: float | None) -> list[dict[str, Any]]:
    from graft.evaluation.mc_dropout import abstain_rows

    if min_confidence is None or not rows:
        return rows
    if "probabilities" not in rows[0]:
        raise GraftError("--min-confidence: this run's predictions (a language model's answers, a regression's "
                         "values, a token classifier's entities) have no class probabilities to hold back; leave it "
                         "out")
    if "label" not in rows[0]:
        raise GraftError("--min-confidence: holds back a single answer below it; a multi-label run's labels are each "
                         "decided at their own threshold (thresholds.json beside the weights): leave it out")
    return abstain_rows(rows, min_confidence)


def export_run(run_dir: Path | str, output: Path | str, *, merge: bool = False, format: str | None = None,
               quantize: str | None = None) -> Path:
    """A standalone copy of a run's final model at `output`: with `merge`, a PEFT run's update folded into the
    base weights (LoRA, IA³), so plain transformers (or graft's plain-module loader) serves it without peft.
    A full fine-tune's model is standalone already and is copied. Written beside `output`, then renamed.

    The folder holds no path of this machine: a plain module's factory file travels inside it as a copy, and a
    local base model, checkpoint or data file is named by its file name. Its files get the permissions the umask
    gives, and its model card (README.md) says what the folder holds and how to load it. A calibrated classifier's
    temperature (calibration.json) travels with it.

    `format="onnx"`: an ONNX graph for onnxruntime instead, checked against PyTorch on the run's test split
    (`graft.onnx_export`); `quantize="int8"` gives its matrix products int8 weights."""
    from graft.evaluation.calibration import TEMPERATURE_FILE
    from graft.evaluation.multilabel import THRESHOLDS_FILE
    from graft.models.save import write_model_card
    from graft.strategy.peft import is_peft_run

    if format == "onnx":
        from graft.onnx_export import export_onnx

        return export_onnx(run_dir, output, quantize)
    if format is not None or quantize is not None:
        flag = f"--format {format}" if format is not None else f"--quantize {quantize}"
        raise GraftError(f"{flag}: graft exports the model as it trained (no --format) or as ONNX (--format onnx, "
                         f"which --quantize int8 takes)")
    run_dir, output = Path(run_dir), Path(output)
    source = run_dir / MODEL_DIR
    recipe = run_recipe(run_dir)  # a run directory, with its recipe
    check_model_files(run_dir)
    check_export_folder(output)
    record = {**read_record(run_dir), "recipe": recipe.dump()}
    with writing(output) as tmp:
        if merge and is_peft_run(source):
            _save_merged(source, run_dir, recipe, tmp)
            for beside in (TEMPERATURE_FILE, THRESHOLDS_FILE):  # how the outputs are read travels with the weights
                if (source / beside).is_file():
                    shutil.copyfile(source / beside, tmp / beside)
        else:
            shutil.copytree(source, tmp)
        _make_portable(tmp)
        write_model_card(tmp, record, output.resolve().name)
    return output


def check_export_folder(output: Path) -> None:
    """An export goes to a new folder, or an empty one: never over files."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise GraftError(f"--output {output}: already exists and is not empty; choose another folder or remove it")


def _make_portable(folder: Path) -> None:
    """Rewrite what names this machine's paths in a model folder: graft's notes on how to rebuild it (a factory in a
    file is copied in and named relatively) and peft's adapter config."""
    from graft.models.plain import META_FILE as PLAIN_META
    from graft.models.save import portable_name
    from graft.strategy.peft import META_FILE as PEFT_META

    if (folder / PLAIN_META).is_file():
        meta = json.loads((folder / PLAIN_META).read_text())
        write_json(folder / PLAIN_META, {**meta, "factory": _carry_factory(meta["factory"], folder)})
    if (folder / PEFT_META).is_file():
        meta = json.loads((folder / PEFT_META).read_text())
        meta["model"]["name"] = _carry_factory(meta["model"]["name"], folder)
        write_json(folder / PEFT_META, portable(meta))
    adapter = folder / "adapter_config.json"  # peft's; it names the base model as it was loaded
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        if isinstance(config.get("base_model_name_or_path"), str):
            config["base_model_name_or_path"] = portable_name(config["base_model_name_or_path"])
        write_json(adapter, config)


def _carry_factory(name: str, folder: Path) -> str:
    """A factory in a file (`/path/nets.py:f`) copied into `folder` and named relatively (`nets.py:f`, which graft's
    loader finds beside the weights); anything else as it is."""
    module, _, function = name.rpartition(":")
    if not module.endswith(".py") or not Path(module).is_absolute():
        return name
    source = Path(module)
    if not source.is_file():
        raise GraftError(f"{source}: the model's factory file is gone, and an export carries a copy of it; restore "
                         f"the file (model.name = {name!r})")
    shutil.copyfile(source, folder / source.name)
    return f"{source.name}:{function}"


def portable(value: Any) -> Any:
    """JSON data with every absolute path in it reduced to its name."""
    from graft.models.save import portable_name

    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return portable_name(value)
    return value


def _save_merged(source: Path, run_dir: Path, recipe: Recipe, tmp: Path) -> None:
    from graft.models.save import plain_meta
    from graft.strategy.peft import load_peft_run, merged_model

    rebuilt = load_peft_run(source)
    merged = merged_model(rebuilt, run_dir)
    if rebuilt.plain_head is not None:
        from graft.models.plain import PlainClassifier, save_plain

        head_path, in_shape = rebuilt.plain_head
        plain = PlainClassifier(merged, head_path, recipe.model.head.input_from)
        save_plain(plain, plain.state_dict(), tmp, plain_meta(recipe, rebuilt.labels, head_path, in_shape,
                                                              rebuilt.input))
    else:
        merged.save_pretrained(tmp)
    if rebuilt.processor is not None:
        rebuilt.processor.save_pretrained(tmp)
