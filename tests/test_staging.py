"""samexport.staging: atomic writes (a file replaced in one rename after fsync, or left alone), build
destinations checked before any work, and the staging folder an artifact is assembled in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.errors import SamExportError
from samexport.pipeline import build
from samexport.staging import (
    STAGING_MARKER,
    atomic_file,
    atomic_path,
    check_output_destination,
    staged_directory,
    temporary_name,
    write_atomically,
)

pytestmark = pytest.mark.usefixtures("private_cache")


def listing(folder: Path) -> list[str]:
    """Names in ``folder``, hidden ones included, less the private cache."""
    return sorted(p.name for p in folder.iterdir() if p.name != "cache")


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

    assert target.read_text() == "new" and listing(tmp_path) == ["data.json"]
    assert events[:2] == ["fsync", ("replace", "data.json")]  # the data is on disk before the rename


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path, existed: bool):
    target = tmp_path / "plan.bin"
    if existed:
        target.write_bytes(b"old plan")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as stream:
        stream.write(b"half a pl")
        raise KeyboardInterrupt  # Ctrl-C in the middle
    assert listing(tmp_path) == (["plan.bin"] if existed else [])
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
    assert listing(tmp_path) == ["manifest.json"] and target.read_text() == "old"


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
    assert target.read_bytes() == b"graph" and listing(tmp_path) == ["graph.onnx"]


def test_temporary_names_are_hidden_and_unique():
    names = {temporary_name("part-0123456789abcdef.parquet", ".tmp") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(".part-0123456789abcdef.parquet.") and n.endswith(".tmp") for n in names)
    assert all(len(n.split(".")[-2]) == 32 for n in names)  # the dataset store's TEMP_PATTERN


# Build destinations: refused before any work, replaced only when samexport wrote them.


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_folder_that_is_not_an_artifact_is_refused_before_export(tiny_checkpoint, tmp_path, no_export):
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    with pytest.raises(SamExportError, match="is not a samexport artifact"):
        build("tiny", checkpoint=tiny_checkpoint, output=documents)
    assert (documents / "thesis.tex").read_text() == "years of work"
    assert listing(tmp_path) == ["Documents"]


def test_an_existing_file_is_refused_before_export(tiny_checkpoint, tmp_path, no_export):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(SamExportError, match="exists and is a file"):
        build("tiny", checkpoint=tiny_checkpoint, output=target)
    assert target.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_current_folder_and_mount_point_are_refused_before_export(tiny_checkpoint, tmp_path, monkeypatch, no_export):
    monkeypatch.chdir(tmp_path)
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(SamExportError, match="current folder or one above it"):
            build("tiny", checkpoint=tiny_checkpoint, output=output)
    mounts = [p for p in ("/dev/shm", "/dev", "/proc", "/sys") if os.path.ismount(p)]
    if not mounts:
        pytest.skip("no mount point to try")
    with pytest.raises(SamExportError, match="is a mount point"):
        build("tiny", checkpoint=tiny_checkpoint, output=mounts[0])
    assert listing(tmp_path) == []


def test_a_symlink_and_a_folder_under_a_file_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SamExportError, match="symbolic link"):
        check_output_destination(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SamExportError, match="is a file, not a folder"):
        check_output_destination(tmp_path / "file" / "out")
    check_output_destination(tmp_path / "real")  # an empty folder may be filled
    check_output_destination(tmp_path / "new" / "deeper")


@pytest.mark.slow
def test_rebuild_replaces_an_artifact_and_removes_only_our_stale_staging_folders(artifact, tiny_checkpoint, monkeypatch):
    stale = artifact.parent / f".{artifact.name}.partial-killed"  # a build killed by SIGKILL
    stale.mkdir()
    (stale / STAGING_MARKER).write_text(json.dumps({"pid": dead_pid()}))
    (stale / C.ENCODER_ONNX).write_bytes(b"half")
    running = artifact.parent / f".{artifact.name}.partial-running"  # a build still running
    running.mkdir()
    (running / STAGING_MARKER).write_text(json.dumps({"pid": os.getppid()}))
    foreign = artifact.parent / f".{artifact.name}.partial-user"  # same pattern, not ours
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    before = read_manifest(artifact)
    result = build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert result.artifact_dir == artifact and read_manifest(artifact).created is not None
    assert read_manifest(artifact).files == result.manifest.files
    assert result.manifest.files[C.DECODER_ONNX] == before.files[C.DECODER_ONNX]  # same weights, same graph
    assert not stale.exists() and running.is_dir() and (foreign / "data.bin").read_bytes() == b"keep"
    assert listing(artifact.parent) == sorted([artifact.name, running.name, foreign.name])
    # The build hashed its files in the staging folder; the renamed artifact opens without hashing.
    import samexport.integrity
    from samexport.runtime.backends import open_backend

    calls = []
    monkeypatch.setattr(samexport.integrity, "sha256_file", lambda path: calls.append(path))
    open_backend(artifact, "onnxruntime-cpu")
    assert calls == []


def test_a_failed_swap_leaves_no_staging_folder(tmp_path, monkeypatch):
    destination = tmp_path / "out"
    real_replace = os.replace

    def refuse_folders(src, dst):
        if Path(src).is_dir():
            raise OSError(18, "Invalid cross-device link")
        return real_replace(src, dst)

    with pytest.raises(OSError, match="cross-device"), staged_directory(destination) as staging:
        assert (staging / STAGING_MARKER).is_file()
        (staging / "graph.onnx").write_bytes(b"x")
        monkeypatch.setattr(os, "replace", refuse_folders)
    monkeypatch.setattr(os, "replace", real_replace)
    assert listing(tmp_path) == []


def test_staging_marker_is_not_left_in_the_artifact(tmp_path):
    with staged_directory(tmp_path / "out") as staging:
        (staging / "graph.onnx").write_bytes(b"x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["graph.onnx"]
