"""Plain `nn.Module`s: built by the user's factory, given a new head, wrapped to speak the loop's language.

The loop calls `model(pixel_values=..., labels=...)` and reads `.loss` and `.logits`, as Hugging Face models
answer; `PlainClassifier` gives a plain network that interface. The final model is saved as safetensors plus
a small JSON that says how to rebuild it (factory, kwargs, head, labels, input).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from graft.errors import GraftError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "graft_model.json"


class _Reached(Exception):  # a control-flow signal, not an error
    def __init__(self, value: Any) -> None:
        self.value = value


def run_until(model: nn.Module, module: str, take: str, *args: Any, **kwargs: Any) -> Any:
    """Run `model` and return the input (`take='input'`) or output of its submodule `module`, skipping the rest of
    the forward pass. Works whatever the model's forward does between modules (functional pooling, reshapes)."""
    target = model.get_submodule(module)

    def pre(_: nn.Module, inputs: tuple) -> None:
        raise _Reached(inputs[0])

    def post(_: nn.Module, __: tuple, output: Any) -> None:
        raise _Reached(output)

    handle = target.register_forward_pre_hook(pre) if take == "input" else target.register_forward_hook(post)
    try:
        model(*args, **kwargs)
    except _Reached as reached:
        return reached.value
    finally:
        handle.remove()
    raise GraftError(f"the forward pass never reached {module!r}; check model.head.path / model.head.input_from")


class PlainClassifier(nn.Module):
    """A user's network as a classifier: logits from `net`, or from its head fed by `input_from`'s output."""

    def __init__(self, net: nn.Module, head_path: str, input_from: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.head_path = head_path
        self.input_from = input_from

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        if self.input_from:
            features = run_until(self.net, self.input_from, "output", pixel_values)
            logits = self.net.get_submodule(self.head_path)(features)
        else:
            logits = self.net(pixel_values)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def import_factory(name: str) -> Callable[..., nn.Module]:
    """`package.module:function` or `/path/file.py:function` to the function."""
    module_name, _, function = name.rpartition(":")
    if not module_name or not function:
        raise GraftError(f"model.name = {name!r}: expected package.module:function or path/file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise GraftError(f"model.name = {name!r}: file {path} not found")
        spec = importlib.util.spec_from_file_location(f"graft_user_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # so classes defined there pickle and dataclasses resolve
        try:
            spec.loader.exec_module(module)
        except ImportError as e:
            del sys.modules[spec.name]
            raise GraftError(f"model.name = {name!r}: {path} does not import ({e}); install what it "
                             f"needs") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise GraftError(f"model.name = {name!r}: cannot import {module_name} ({e}); install it, or give "
                             f"path/to/file.py:{function}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise GraftError(f"model.name = {name!r}: {module_name} has no function {function!r}")
    return factory


def build_net(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the user's factory; its result must be an nn.Module."""
    factory = import_factory(name)
    try:
        net = factory(**kwargs)
    except TypeError as e:
        raise GraftError(f"model.kwargs: {name} rejected {kwargs}: {e}") from None
    if not isinstance(net, nn.Module):
        raise GraftError(f"model.name = {name!r}: the factory returned {type(net).__name__}, not a torch nn.Module")
    return net


@torch.no_grad()
def head_input_shape(net: nn.Module, head_path: str, input_from: str | None, image_size: tuple[int, int]) -> list[int]:
    """The shape (without batch) of what the head receives for an input of `image_size`, by one dry forward."""
    if input_from:
        try:
            net.get_submodule(input_from)
        except AttributeError:
            raise GraftError(f"model.head.input_from = {input_from!r}: no such module; see the names in "
                             f"model.named_modules()") from None
    was_training = net.training
    net.eval()
    dummy = torch.zeros(2, 3, *image_size)
    try:
        if input_from:
            features = run_until(net, input_from, "output", dummy)
        else:
            features = run_until(net, head_path, "input", dummy)
    except GraftError:
        raise
    except RuntimeError as e:
        raise GraftError(f"model: a {image_size[0]}x{image_size[1]} input fails before the head "
                         f"({str(e).splitlines()[0][:160]}); set data.image_size to the size the network was built "
                         f"for, or make it size-independent (adaptive pooling)") from None
    finally:
        net.train(was_training)
    if not isinstance(features, torch.Tensor):
        raise GraftError(f"model.head.input_from = {input_from!r}: its output is {type(features).__name__}, "
                         f"not a tensor; choose a module that returns a feature map")
    return list(features.shape[1:])


def save_plain(model: PlainClassifier, state_dict: dict[str, torch.Tensor], folder: Path,
               meta: dict[str, Any]) -> None:
    """Weights of the network (keys as the factory names them) and how to rebuild it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    prefix = "net."
    weights = {k.removeprefix(prefix): v.contiguous() for k, v in state_dict.items() if k.startswith(prefix)}
    save_file(weights, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def is_plain_dir(folder: Path) -> bool:
    return (folder / META_FILE).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META_FILE).read_text())
