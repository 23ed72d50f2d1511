"""`graft export --format onnx`: a run's classifier or regression as an ONNX graph that onnxruntime serves on a CPU,
checked against PyTorch on the run's test split before it is written, optionally with int8 matrix products; and such a
folder opened again as a run (`open_export`), so `graft predict`, `graft eval`, `Predictor` and `graft serve` take it
as they take a run directory.

The folder carries what a user needs beside onnxruntime: the tokenizer files or the image preprocessing
(`export.json`), the class or target names, the temperature or a multi-label run's thresholds, and a model card that
says how to run it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError
from graft.files import write_json, writing

if TYPE_CHECKING:
    import numpy as np
    from torch import nn
    from torch.utils.data import DataLoader

    from graft.tasks import Task
    from graft.trained import TrainedRun

EXPORT_FILE = "export.json"
TOLERANCE = 1e-3
"""The largest difference between ONNX Runtime's fp32 logits and PyTorch's, as a share of the largest logit."""
MOSTLY_CONV = 0.5
"""--quantize int8 refuses a model with more than this share of its weights in convolutions."""


def export_onnx(run_dir: Path | str, output: Path | str, quantize: str | None = None) -> Path:
    """The run's model as `output/model.onnx` (batch and sequence axes free), with its tokenizer or image
    preprocessing, labels, temperature or thresholds (`export.json`) and a model card. ONNX Runtime's outputs must
    match PyTorch's on the run's test split within TOLERANCE, or nothing is written. `quantize="int8"`: the matrix
    products get int8 weights (onnxruntime's dynamic quantization) and the task's test metrics before and after are
    recorded. A LoRA or IA³ run is merged into its base first. Written beside `output`, then renamed."""
    from graft.evaluation.calibration import TEMPERATURE_FILE
    from graft.evaluation.multilabel import THRESHOLDS_FILE
    from graft.models.onnx_graph import MODEL_FILE, conv_share, write_onnx
    from graft.models.save import graft_config, write_model_card
    from graft.rundir import MODEL_DIR, read_record, run_recipe
    from graft.tasks import get_task
    from graft.trained import check_export_folder, check_model_files, open_run, portable

    run_dir, output = Path(run_dir), Path(output)
    if quantize not in (None, "int8"):
        raise GraftError(f"--quantize {quantize}: graft quantizes to int8; give --quantize int8 or leave it out")
    recipe = run_recipe(run_dir)
    refused = get_task(recipe.task).refused_commands.get("export --format onnx")
    if refused:
        raise GraftError(f"--format onnx: {run_dir} is a {recipe.task} run: {refused}")
    if get_task(recipe.task).input_kind is None:
        raise GraftError(f"--format onnx: {run_dir} is a {recipe.task} run, which generates text token by token "
                         f"(a loop one ONNX graph of logits does not hold); export it with --merge and serve it "
                         f"with transformers, or with graft serve {run_dir}")
    check_model_files(run_dir)
    check_export_folder(output)
    run = open_run(run_dir, raw=True)
    model = _servable(run_dir, run).float().eval()
    if quantize and conv_share(model) > MOSTLY_CONV:
        raise GraftError(f"--quantize int8: {conv_share(model):.0%} of this model's weights are convolutions, which "
                         f"dynamic int8 quantization makes slower on a CPU (static quantization needs calibration "
                         f"data, which graft does not do); export without --quantize")
    loader = _test_loader(run)
    record = {**read_record(run_dir), "recipe": portable(recipe.dump())}  # the recipe, less this machine's paths
    with writing(output) as tmp:
        tmp.mkdir()
        graph = tmp / MODEL_FILE
        inputs = write_onnx(model, next(iter(loader)), graph)
        measured = _measure(model, graph, loader, run, quantize)
        if run.task.input_kind == "text":
            run.processor.save_pretrained(tmp)
        for kept in (TEMPERATURE_FILE, THRESHOLDS_FILE):
            if (run_dir / MODEL_DIR / kept).is_file():
                shutil.copyfile(run_dir / MODEL_DIR / kept, tmp / kept)
        write_json(tmp / EXPORT_FILE, {
            "format": "onnx", "precision": quantize or "fp32", "task": recipe.task, "labels": list(run.labels),
            "inputs": inputs, "outputs": ["logits"], "temperature": _temperature(run_dir),
            **({"thresholds": run.thresholds} if run.thresholds is not None else {}),
            "config": graft_config(model), "preprocessing": _preprocessing(run), **measured,
            "run": run_dir.resolve().name, "recipe": record["recipe"]})
        write_model_card(tmp, record, output.resolve().name)
    return output


def _servable(run_dir: Path, run: TrainedRun) -> nn.Module:
    """The model to export: a LoRA or IA³ run's update merged into its base weights (a smaller, faster graph),
    anything else as the run trained it."""
    from graft.rundir import MODEL_DIR
    from graft.strategy.peft import MERGEABLE, is_peft_run, load_peft_run, merged_model

    folder = run_dir / MODEL_DIR
    if is_peft_run(folder) and run.recipe.strategy.name in MERGEABLE:
        return merged_model(load_peft_run(folder), run_dir)
    return run.model


def _measure(model: nn.Module, graph: Path, loader: DataLoader, run: TrainedRun,
             quantize: str | None) -> dict[str, Any]:
    """The graph against PyTorch on the test split (`check`: an error if it strays), each one's test scores (`test`:
    the task's export metrics), and its size; with `quantize`, the graph is replaced by its int8 version and that is
    measured too, with the change in the task's headline metric (`accuracy_change`, `rmse_change`...)."""
    from graft.models.onnx_graph import OnnxModel, model_bytes

    def scores(logits: np.ndarray) -> dict[str, float]:
        metrics = run.task.score_logits(logits, truth, run.labels, run.thresholds)
        return {name: metrics[name] for name in run.task.export_metrics}

    reference, truth = _logits(model, loader)
    fp32 = _logits(OnnxModel(graph), loader)[0]
    single = run.task.single_label
    check = _check(reference, fp32, single)
    test = {"pytorch": scores(reference), "onnx_fp32": scores(fp32)}
    megabytes = {"onnx_fp32": model_bytes(graph) / 2**20}
    if quantize:
        _quantize_in_place(graph)
        int8 = _logits(OnnxModel(graph), loader)[0]
        same = {"same_labels_as_pytorch": float((int8.argmax(1) == reference.argmax(1)).mean())} if single else {}
        test["onnx_int8"] = {**scores(int8), **same}
        headline = run.task.export_metrics[0]
        test[f"{headline}_change"] = test["onnx_int8"][headline] - test["pytorch"][headline]
        megabytes["onnx_int8"] = model_bytes(graph) / 2**20
    return {"check": check, "test": test, "megabytes": megabytes}


def _quantize_in_place(graph: Path) -> None:
    """The int8 graph in the place of the fp32 one, built in a folder of its own: a graph names its weights file
    (`model.onnx.data`, over 1.5 GB) by the name it was saved under."""
    from graft.models.onnx_graph import quantize_int8

    built = graph.parent / "int8"
    built.mkdir()
    quantize_int8(graph, built / graph.name)
    for old in graph.parent.glob(f"{graph.name}*"):
        old.unlink()
    for new in built.iterdir():
        new.replace(graph.parent / new.name)
    built.rmdir()


def _test_loader(run: TrainedRun) -> DataLoader:
    """The run's test split in batches, as its evaluation made them; a split that cannot be read is one line."""
    try:
        split = run.task.load_splits(run.recipe).test
    except GraftError as error:
        raise GraftError(f"--format onnx checks the graph on the run's test split, which cannot be read: {error}") \
            from None
    loader = run.task.eval_loader(run.recipe, split, run)
    if len(loader) == 0:
        raise GraftError("--format onnx checks the graph on the run's test split, which is empty")
    return loader


def _logits(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Logits (fp32) and labels of a labelled loader, on the CPU."""
    import torch

    logits, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            labels.append(batch.pop("labels"))
            logits.append(model(**batch).logits.float())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _check(reference: np.ndarray, onnx: np.ndarray, single_label: bool) -> dict[str, Any]:
    """How far ONNX Runtime's outputs are from PyTorch's; over TOLERANCE of the largest is an error. A classifier's
    check also says the share of examples given the same class."""
    import numpy as np

    diff = float(np.abs(onnx - reference).max())
    allowed = TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if not diff <= allowed:  # NaN fails too
        raise GraftError(f"--format onnx: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} on the run's "
                         f"test split (allowed {allowed:.3g}): the exporter mistranslated this model; nothing was "
                         f"written; serve it with PyTorch (graft serve RUN_DIR)")
    same = {"same_labels": float((onnx.argmax(1) == reference.argmax(1)).mean())} if single_label else {}
    return {"examples": len(reference), "max_abs_diff": diff, "allowed": allowed, **same}


def _temperature(run_dir: Path) -> float:
    from graft.evaluation.calibration import read_temperature
    from graft.rundir import MODEL_DIR

    return read_temperature(run_dir / MODEL_DIR)


def _preprocessing(run: TrainedRun) -> dict[str, Any]:
    """What turns an input into the graph's inputs, in words and numbers a user can follow without graft."""
    if run.task.input_kind == "text":
        return {"kind": "text", "tokenizer": "the tokenizer files in this folder (AutoTokenizer.from_pretrained, or "
                                              "tokenizers.Tokenizer.from_file('tokenizer.json'))",
                "max_length": run.recipe.model.max_length, "truncation": True, "padding": "to the longest in a batch"}
    from graft.data.images import resize_target

    size = run.input["image_size"]
    return {"kind": "image", "mode": "RGB (transparency composited on white)",
            "resize_shorter_side_to": resize_target((size[0], size[1])), "resample": "bilinear",
            "center_crop": size, "scale": "1/255", "mean": run.input["mean"], "std": run.input["std"],
            "layout": "NCHW float32"}


def is_onnx_export(folder: Path) -> bool:
    return (folder / EXPORT_FILE).is_file()


def open_export(folder: Path, raw: bool = False) -> TrainedRun:
    """An ONNX export as a finished run: its recipe, task, the graph in onnxruntime, tokenizer or image input, labels
    (a regression's with its targets' scale), temperature (`raw`: 1) or a multi-label run's thresholds."""
    from graft.evaluation.calibration import read_temperature
    from graft.evaluation.multilabel import read_thresholds
    from graft.models.onnx_graph import MODEL_FILE, OnnxModel
    from graft.recipe import validate_recipe
    from graft.tasks import get_task
    from graft.trained import TrainedRun

    meta = json.loads((folder / EXPORT_FILE).read_text())
    recipe = validate_recipe(meta["recipe"], str(folder / EXPORT_FILE))
    if not (folder / MODEL_FILE).is_file():
        raise GraftError(f"{folder}: no {MODEL_FILE}; the export is incomplete: export the run again")
    task = get_task(recipe.task)
    processor, image = None, {}
    if task.input_kind == "text":
        from transformers import AutoTokenizer

        processor = AutoTokenizer.from_pretrained(str(folder))
    else:
        pre = meta["preprocessing"]
        image = {"image_size": pre["center_crop"], "mean": pre["mean"], "std": pre["std"]}
    temperature = 1.0 if raw else read_temperature(folder)
    model = OnnxModel(folder / MODEL_FILE, config=meta.get("config"))
    return TrainedRun(recipe, task, model, processor, task.trained_labels(model, meta["labels"]), image, temperature,
                      thresholds=read_thresholds(folder))


def onnx_usage(folder: Path, task: Task, name: str) -> list[str]:
    """The model card's lines on running the export in `folder`, which its snippets call `name`: with graft, and
    with onnxruntime alone."""
    meta = json.loads((folder / EXPORT_FILE).read_text())
    check, test = meta["check"], meta["test"]
    free = "batch size and sequence length" if task.input_kind == "text" else "batch size"
    headline = task.export_metrics[0]
    lines = [f"`model.onnx` ({meta['precision']}) computes `logits`, one column for each of the {len(meta['labels'])} "
             f"names in `export.json`'s `labels` (a class's or a label's logit, or a target's value in its units), for "
             f"inputs {', '.join(f'`{n}`' for n in meta['inputs'])} ({free} free). Checked at export on the "
             f"{check['examples']} test examples: ONNX Runtime fp32 within {check['max_abs_diff']:.2g} of PyTorch's "
             f"outputs; test {headline} "
             + ", ".join(f"{k.replace('_', ' ')} {v[headline]:.4f}" for k, v in test.items() if isinstance(v, dict))
             + ".", "",
             f"With graft: `graft serve {name}` (HTTP: POST /predict {{\"inputs\": [...]}}), `graft predict {name} "
             f"INPUT`, or `graft.Predictor(\"{name}\")`.", "", "With onnxruntime alone:", "", "```python",
             "import json", "", "import numpy as np", "import onnxruntime as ort"]
    if task.input_kind == "text":
        lines += ["from transformers import AutoTokenizer  # or tokenizers.Tokenizer.from_file(\".../tokenizer.json\")",
                  "", *_loading(name), f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
                  'batch = tokenizer(["an example text"], truncation=True, padding=True,',
                  '                  max_length=spec["preprocessing"]["max_length"], return_tensors="np")']
    else:
        lines += ["from PIL import Image", "", *_loading(name), 'p = spec["preprocessing"]',
                  'image = Image.open("photo.jpg").convert("RGB")  # transparency: composite on white first',
                  'side, (h, w), (W, H) = p["resize_shorter_side_to"], p["center_crop"], image.size',
                  "new = (side, int(side * H / W)) if W <= H else (int(side * W / H), side)",
                  "image = image.resize(new, Image.Resampling.BILINEAR)",
                  "left, top = round((new[0] - w) / 2), round((new[1] - h) / 2)",
                  "x = np.asarray(image.crop((left, top, left + w, top + h)), np.float32) / 255",
                  'x = (x - np.float32(p["mean"])) / np.float32(p["std"])',
                  'batch = {"pixel_values": x.transpose(2, 0, 1)[None]}']
    lines += ['logits = session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})[0]',
              *task.onnx_decode, "```"]
    return lines


def _loading(name: str) -> list[str]:
    return [f'spec = json.load(open("{name}/export.json"))', f'session = ort.InferenceSession("{name}/model.onnx")']
