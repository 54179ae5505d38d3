"""samexport.staging's atomic writes: a file replaced in one rename after fsync, or left alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from samexport.staging import atomic_file, atomic_path, temporary_name, write_atomically


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_write_replaces_the_file_after_syncing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "data.json"
    target.write_text("old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", Path(b).name)) or real_replace(a, b))

    with atomic_file(target, "w") as stream:
        stream.write("new")
        assert target.read_text() == "old"  # nobody sees the new content before the rename
        assert Path(stream.name).parent == tmp_path and Path(stream.name).name.startswith(".data.json.")

    assert target.read_text() == "new" and _listing(tmp_path) == ["data.json"]
    assert events[:2] == ["fsync", ("replace", "data.json")]  # the data is on disk before the rename


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path, existed: bool):
    target = tmp_path / "plan.bin"
    if existed:
        target.write_bytes(b"old plan")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as stream:
        stream.write(b"half a pl")
        raise KeyboardInterrupt  # Ctrl-C in the middle
    assert _listing(tmp_path) == (["plan.bin"] if existed else [])
    if existed:
        assert target.read_bytes() == b"old plan"


def test_a_failed_rename_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, "new")
    assert _listing(tmp_path) == ["manifest.json"] and target.read_text() == "old"


def test_the_new_file_gets_the_umask_permissions(tmp_path: Path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() makes under this umask
    write_atomically(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_atomic_path_hands_a_path_to_writers_that_take_one(tmp_path: Path):
    target = tmp_path / "graph.onnx"
    with atomic_path(target, suffix=".tmp") as temp:
        assert temp.exists() and temp.name.endswith(".tmp") and temp.name.startswith(".graph.onnx.")
        temp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph" and _listing(tmp_path) == ["graph.onnx"]


def test_temporary_names_are_hidden_and_unique():
    names = {temporary_name("part-0123456789abcdef.parquet", ".tmp") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(".part-0123456789abcdef.parquet.") and n.endswith(".tmp") for n in names)
    assert all(len(n.split(".")[-2]) == 32 for n in names)  # the dataset store's TEMP_PATTERN

