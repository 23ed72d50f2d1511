"""A trained classifier as an ONNX graph for CPU serving: written by torch's exporter, run by onnxruntime, its matrix
products quantized to int8.

`torch.onnx.export(dynamo=True)`: torch's maintained exporter, which keeps the batch and sequence axes symbolic; the
TorchScript exporter it replaces records one trace with Python's branches decided on the example, and is
deprecated.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from graft.errors import GraftError

MODEL_FILE = "model.onnx"
OUTPUT = "logits"
EXTERNAL_OVER = 1.5 * 2**30
"""Weights above this many bytes go to a file beside the graph (`model.onnx.data`): protobuf stops at 2 GB."""
QUANTIZED_OPS = ("MatMul", "Gemm")


class Logits(nn.Module):
    """`model(**inputs).logits` with the inputs given in a fixed order: the function the graph computes."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def write_onnx(model: nn.Module, sample: dict[str, torch.Tensor], path: Path) -> list[str]:
    """The graph of `model` (in eval mode, on the CPU) traced on `sample`, a batch as the eval loader gives it
    (`labels` left out), written to `path`; its input names. Axis 0 of every input is the batch, axis 1 of a 2-d
    input (token ids, masks) the sequence: both free in the graph."""
    names = [k for k in sample if k != "labels"]
    # torch.export fixes an axis of size 1 to 1, so the example batch has two rows at least
    inputs = tuple(sample[k] if len(sample[k]) > 1 else torch.cat([sample[k], sample[k]]) for k in names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = tuple({0: batch, 1: sequence} if x.dim() == 2 else {0: batch} for x in inputs)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with _quiet():
            torch.onnx.export(Logits(model, names).eval(), inputs, str(path), dynamo=True, input_names=names,
                              output_names=[OUTPUT], dynamic_shapes={"inputs": shapes},
                              external_data=size > EXTERNAL_OVER, verbose=False)
    except Exception as error:  # the exporter raises many kinds; the user needs the cause and what to do
        while error.__cause__ is not None:  # torch wraps the reason in advice on filing issues
            error = error.__cause__
        raise GraftError(f"--format onnx: torch's exporter cannot translate this model ({_first_line(error)}); "
                         f"serve the run with PyTorch instead (graft serve RUN_DIR)") from None
    return names


def conv_share(model: nn.Module) -> float:
    """The share of the model's weights that sit in convolutions."""
    total = sum(p.numel() for p in model.parameters())
    convs = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) for p in m.parameters())
    return convs / total if total else 0.0


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization of the matrix products (MatMul, Gemm): int8 weights, one scale per output
    channel, activations scaled to int8 per batch as they come; everything else stays fp32. Per channel rather than
    per tensor: on MiniLM fine-tuned on rt-polarity it changed 1.6% of the test labels against 4.4%, and ran about a
    tenth slower. Convolutions are left alone: onnxruntime's int8 convolution (ConvInteger) is slower than its
    fp32 one on a CPU (measured 8× slower on a ResNet-20), and static quantization needs calibration data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                         per_channel=True, use_external_data_format=(source.parent / f"{source.name}.data").exists())


class OnnxModel(nn.Module):
    """An ONNX graph in an onnxruntime session (CPU), answering as graft's models do, `model(**batch).logits`, so
    evaluation and prediction run it as they run PyTorch models. It has no parameters and no dropout."""

    def __init__(self, path: Path, config: dict[str, Any] | None = None) -> None:
        """`config`: what graft wrote into the exported model's config (a regression's target scale), readable as
        a Hugging Face model's config is (`model.config.graft_targets`)."""
        super().__init__()
        import onnxruntime as ort

        self.config = SimpleNamespace(**(config or {}))

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's errors carry no useful type
            raise GraftError(f"{path}: onnxruntime cannot load it ({_first_line(error)}); export the run again") \
                from None
        self.inputs = [x.name for x in self.session.get_inputs()]

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        feed = {name: batch[name].detach().cpu().numpy() for name in self.inputs}
        (logits,) = self.session.run([OUTPUT], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits).to(batch[self.inputs[0]].device))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporter's progress lines and warnings, and onnxruntime's advice, off the terminal; errors still
    raise."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # the exporter colours its messages
    return " ".join((text.splitlines() or [type(error).__name__])[0].split())[:200]


def model_bytes(path: Path) -> int:
    """The graph's size on disk with its weights file, if it has one."""
    data = path.parent / f"{path.name}.data"
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)

