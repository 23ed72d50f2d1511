"""Write-then-rename: a failed write leaves the old file or folder as it was, and no half-written one."""

from __future__ import annotations

import json

import pytest

from graft.files import old_path, temp_path, write_json, writing


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "run.json", {"status": "completed"})
    with pytest.raises(RuntimeError), writing(path) as tmp:
        tmp.write_text('{"status": "runn')
        raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_folder_is_replaced_whole_and_the_old_one_removed(tmp_path):
    folder = tmp_path / "model"
    with writing(folder) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("old")
    with writing(folder) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("new")
        assert (folder / "weights").read_text() == "old"  # in place until the new one is complete
    assert (folder / "weights").read_text() == "new"
    assert not temp_path(folder).exists() and not old_path(folder).exists()
