"""Writes a crash never leaves half done: every file and folder graft writes is built beside its final name, then
renamed into place (a rename is atomic), and a folder being replaced is deleted only after the new one is in place.

One module for every write-then-rename, so the rule lives in one place. No torch here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def check_output_file(path: Path, flag: str = "--output") -> None:
    """Refuse, before any work, a file path that cannot be written: a folder, or one whose folder is missing."""
    from graft.errors import GraftError

    if path.is_dir():
        raise GraftError(f"{flag} {path}: is a folder; name a file in it (e.g. {path / 'predictions.csv'})")
    if not path.parent.is_dir():
        raise GraftError(f"{flag} {path}: the folder {path.parent} does not exist; create it or choose another path")


def temp_path(path: Path) -> Path:
    """Where `path` is built before it is renamed into place: hidden, beside it."""
    return path.with_name(f".tmp-{path.name}")


def old_path(path: Path) -> Path:
    """Where a folder being replaced waits until its successor is in place."""
    return path.with_name(f".old-{path.name}")


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (a file or a folder to fill); when the block succeeds it replaces
    `path`, when it fails it is removed and `path` is untouched."""
    tmp = temp_path(path)
    _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    replace(tmp, path)


def replace(new: Path, path: Path) -> None:
    """Move `new` onto `path`, with the permissions the umask gives (see `honour_umask`). A folder already at `path`
    moves aside first and is deleted only once `new` is in place, so a crash in between leaves the old one at
    `old_path(path)`, never nothing."""
    honour_umask(new)
    if path.is_dir() and not path.is_symlink():
        old = old_path(path)
        _remove(old)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def honour_umask(path: Path) -> None:
    """Give a file, or a folder and everything in it, the permissions a plain `open()` / `mkdir()` would: some
    writers (safetensors, so every saved model and checkpoint) create files 0600, which a serving container or a
    colleague on a shared disk then cannot read. Executable files stay executable; links are left alone."""
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]:
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        full = 0o777 if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0o666
        if stat.S_IMODE(mode) != full & ~mask:
            os.chmod(p, full & ~mask)


def _umask() -> int:
    try:  # Linux shows it without changing it
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere: read by setting it, then restored
        os.umask(mask)
        return mask


def write_text(path: Path, text: str) -> Path:
    with writing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object; empty when the file is missing or cannot be read (what graft wrote and may not have)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: Any) -> Path:
    """JSON (indented; anything else as its string), written atomically."""
    return write_text(path, json.dumps(data, indent=2, default=str))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
