"""Pretrained weights from a file into a plain `nn.Module`: read safely, fix up key names, load what fits, report.

Only tensors are read: safetensors files, or PyTorch files through `torch.load(weights_only=True)`. A file that
needs full unpickling is refused with a one-line recipe to convert it, since unpickling can run arbitrary code.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from graft.errors import GraftError
from graft.models.groups import under

STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
"""Where training scripts usually nest the weights inside a checkpoint dict, in the order they are tried."""
_MAX_DEPTH = 3
_SHOW = 5
"""Names a report line shows before 'and N more'."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """(key, file shape, model shape); these were not loaded."""

    def lines(self) -> list[str]:
        """A human summary: the count loaded, then one line per non-empty problem list."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        out = [f"loaded {len(self.loaded)} of {total} tensors"]
        if self.missing:
            out.append(f"missing ({len(self.missing)}): {_short(self.missing)}")
        if self.unexpected:
            out.append(f"unexpected ({len(self.unexpected)}): {_short(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{key} file {list(a)} vs model {list(b)}" for key, a, b in self.mismatched]
            out.append(f"shape mismatch ({len(shapes)}): {_short(shapes)}")
        return out


def _short(names: list[str]) -> str:
    more = len(names) - _SHOW
    return ", ".join(names[:_SHOW]) + (f" and {more} more" if more > 0 else "")


def read_state_dict(path: Path, field: str = "model.checkpoint") -> dict[str, Tensor]:
    """Tensors from a .safetensors file or a PyTorch file (.pt/.pth/.th/.bin/anything else torch.load reads)."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{field} {path}: " + ("a directory; give the weights file in it" if path.is_dir()
                                                 else "file not found"))
    safetensors = path.suffix == ".safetensors"
    try:
        if safetensors:
            return load_file(path, device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and _is_refusal(str(e)):
            raise GraftError(_refusal_message(path, field, str(e))) from e
        kind = "safetensors file" if safetensors else "PyTorch checkpoint"
        raise GraftError(f"{field} {path}: not a readable {kind} ({_first_line(e)})") from e
    return _find_state_dict(obj, path, field)


def _first_line(error: BaseException) -> str:
    """The useful first line of an error; torch's weights_only errors bury it after a long preamble."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _is_refusal(message: str) -> bool:
    """Whether weights_only stopped at something a full unpickle would run, rather than at a broken file."""
    return any(mark in message for mark in ("GLOBAL", "add_safe_globals", "unrecognized function", "must be imported"))


def _refusal_message(path: Path, field: str, message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    holds = f" (it holds {found.group(1)}, not only tensors)" if found else ""
    convert = (f"python -c \"import torch; from safetensors.torch import save_file; "
               f"sd = torch.load('{path}', weights_only=False); "
               f"sd = sd.get('state_dict', sd) if isinstance(sd, dict) else sd.state_dict(); "
               f"save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, '{path}.safetensors')\"")
    return (f"{field} {path}: needs full unpickling{holds}, which can run arbitrary code, so graft refuses it "
            f"(torch.load weights_only=True failed); if you trust the file, convert it to safetensors once with "
            f"{convert} and point {field} at the .safetensors file")


def _find_state_dict(obj: Any, path: Path, field: str) -> dict[str, Tensor]:
    found = _search(obj, _MAX_DEPTH)
    if found is not None:
        return found
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:10])) or "none"
        raise GraftError(f"{field} {path}: no dict of tensors found (top-level keys: {keys}); "
                         f"save the weights under 'state_dict', e.g. torch.save({{'state_dict': model.state_dict()}})")
    raise GraftError(f"{field} {path}: holds a {type(obj).__name__}, not a dict of tensors; "
                     f"save model.state_dict() instead")


def _search(obj: Any, depth: int) -> dict[str, Tensor] | None:
    """The first non-empty all-tensor dict: `obj` itself, else under the usual keys, depth first."""
    if not isinstance(obj, dict) or depth < 0:
        return None
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    for key in STATE_KEYS:
        found = _search(obj.get(key), depth - 1)
        if found is not None:
            return found
    return None


def remap_keys(state: dict[str, Tensor], renames: dict[str, str] | None = None) -> dict[str, Tensor]:
    """Strip a `module.` prefix left by DataParallel/DDP (only when EVERY key has it, repeatedly), then rename
    prefixes {old: new}; the longest old prefix wins and a key matching none stays.

    Prefixes match whole dotted components: 'backbone' renames 'backbone.0.weight' but not 'backbone2.weight'.
    An empty old prefix prepends `new` to every key; an empty new prefix drops `old`.
    """
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    pairs = sorted(((o.rstrip("."), n.rstrip(".")) for o, n in (renames or {}).items()), key=lambda p: -len(p[0]))
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key = next((r for old, new in pairs if (r := _rename(key, old, new)) is not None), key)
        if new_key in out:
            raise GraftError(f"checkpoint key renames map two file keys to '{new_key}'; "
                             f"change the renames so each file key gets its own name")
        out[new_key] = value
    return out


def _rename(key: str, old: str, new: str) -> str | None:
    if old and not under(key, [old]):
        return None
    rest = key[len(old):].removeprefix(".")
    return ".".join(part for part in (new, rest) if part)


def load_into(model: nn.Module, state: dict[str, Tensor], *, skip: Iterable[str] = ()) -> LoadReport:
    """Copy tensors whose key and shape match into the model's state dict (parameters and buffers).

    Keys under a `skip` prefix ('linear' means 'linear' and 'linear.*') are ignored on both sides. Never raises
    for a partial load: what did not fit is in the report.
    """
    # A lone string is one prefix, not a sequence of one-letter prefixes.
    prefixes = [p.rstrip(".") for p in ([skip] if isinstance(skip, str) else skip)]
    target = {k: v for k, v in model.state_dict().items() if not under(k, prefixes)}
    report, chosen = LoadReport(), {}  # chosen: the tensors to copy, key to tensor
    for key, value in state.items():
        if under(key, prefixes):
            continue
        if key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            chosen[key] = value
    # load_state_dict copies into parameters and buffers alike and honours modules' own loading hooks.
    model.load_state_dict(chosen, strict=False)
    report.loaded = [k for k in target if k in chosen]
    # BatchNorm's batch counter is not a weight (checkpoints from before PyTorch 0.4.1 lack it; BatchNorm's own
    # loading hook fills it in), so its absence is not a missing weight.
    report.missing = [k for k in target if k not in state and not k.endswith(".num_batches_tracked")]
    return report


def load_checkpoint(model: nn.Module, path: Path, *, renames: dict[str, str] | None = None,
                    skip: Iterable[str] = (), field: str = "model.checkpoint") -> LoadReport:
    """Read `path`, fix its key names and load what fits into `model`: read_state_dict + remap_keys + load_into."""
    return load_into(model, remap_keys(read_state_dict(path, field), renames), skip=skip)
