"""Dataset jobs under odd files and folders (issue 25): names that are not UTF-8, FIFOs, huge
files, unreadable and symlinked folders, changed files and error rows on resume, rows restored
into another artifact, malformed dataset manifests, a lock file removed under a running job.

The kill-and-resume loop is in ``tests/datasets/test_jobs.py`` (it shares that module's images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import another_artifact
from typer.testing import CliRunner

from samexport import SamExportError
from samexport.datasets import MANIFEST_NAME, embed, embedding_from_row, predictor_from_embedding, read_rows
from samexport.datasets.images import DEFAULT_MAX_FILE_BYTES, scan_images
from samexport.datasets.store import FolderLock
from samexport.datasets.worker import open_predictor
from samexport.testing import make_image

pytest.importorskip("pyarrow", reason="needs the datasets extra: pip install 'samexport[datasets]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings

ROOT = Path(__file__).resolve().parents[2]
LATIN1_NAME = b"caf\xe9.jpg"  # an old zip or SMB share: Latin-1 bytes, not UTF-8


def _save(path: Path, seed: int, size: tuple[int, int] = (30, 40)) -> np.ndarray:
    image = make_image(*size, seed=seed)
    Image.fromarray(image).save(path)
    return np.array(Image.open(path).convert("RGB"))


def _embedding(artifact: Path, image: np.ndarray) -> np.ndarray:
    predictor = open_predictor(artifact, threads=1)
    predictor.set_image(image)
    return predictor.embedding.astype(np.float16)


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "samexport.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


# -- what is read, and what is passed over -----------------------------------------------------


def test_a_file_name_that_is_not_utf8_keeps_its_row(tiny_artifact, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), LATIN1_NAME)
    image = _save(Path(os.fsdecode(odd)), seed=1)
    _save(folder / "plain.png", seed=2)

    result = embed(tiny_artifact, [folder], tmp_path / "out", threads=1, progress=False)
    assert (result.written, result.errors) == (2, 0)
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out").to_pylist()}
    row = rows["caf\\xe9.jpg"]  # valid UTF-8 text; the exact bytes are in path_bytes
    assert row["path_bytes"] == odd and rows["plain.png"]["path_bytes"] is None
    np.testing.assert_array_equal(embedding_from_row(row), _embedding(tiny_artifact, image))
    again = embed(tiny_artifact, [folder], tmp_path / "out", threads=1, progress=False)
    assert (again.skipped, again.written) == (2, 0)  # the resume recognises the row by its bytes


def test_fifos_never_block_and_are_reported(tiny_artifact, tmp_path):
    folder, other = tmp_path / "imgs", tmp_path / "other"
    folder.mkdir(), other.mkdir()
    _save(folder / "good.png", seed=3)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(other / "named.jpg")
    done = _cli("embed", str(tiny_artifact), str(folder), str(other / "named.jpg"), "--output", str(tmp_path / "out"),
                "--threads", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"passed over {folder / 'pipe.jpg'}: a FIFO, not an image file" in done.stderr
    assert "1 files or folders passed over" in done.stdout
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out").to_pylist()}
    assert set(rows) == {"good.png", "named.jpg"}
    assert rows["named.jpg"]["error"] == "not a regular file (a FIFO)" and rows["good.png"]["error"] is None


def test_a_huge_file_is_an_error_row_without_being_read(tiny_artifact, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "huge.jpg", "wb") as f:  # sparse: no disk space, no memory
        f.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    noise = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")  # noise: about 14 kB as PNG
    result = embed(tiny_artifact, [folder], tmp_path / "out", threads=1, progress=False, max_file_bytes=5000)
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out").to_pylist()}
    assert rows["huge.jpg"]["error"].startswith(f"file is {DEFAULT_MAX_FILE_BYTES + 1} bytes, over the 5000-byte limit")
    big = (folder / "big.png").stat().st_size
    assert big > 5000 and rows["big.png"]["error"] == f"file is {big} bytes, over the 5000-byte limit of the job (max_file_bytes)"
    assert result.errors == 2
    # The default cap still refuses the huge file; the retried image now fits.
    again = embed(tiny_artifact, [folder], tmp_path / "out", threads=1, progress=False, retry_errors=True)
    assert (again.redone, again.written, again.errors) == (2, 2, 1)
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out").to_pylist()}
    assert rows["big.png"]["error"] is None and "over the 536870912-byte limit" in rows["huge.jpg"]["error"]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_never_blocks_on_a_fifo_nor_reads_a_huge_file(tiny_artifact, tmp_path):
    """On Ray the driver sorts out what its readers must not open: a FIFO, a file over the cap, a
    name Ray cannot take; the good image is embedded by an actor as locally."""
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'samexport[ray]'")
    pytest.importorskip("ray.data", reason="needs the ray extra: pip install 'samexport[ray]'")
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = _save(folder / "good.png", seed=30)
    os.mkfifo(folder / "pipe.jpg")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    odd = os.fsdecode(os.path.join(os.fsencode(folder), LATIN1_NAME))
    _save(Path(odd), seed=31)
    files = [folder / "good.png", folder / "pipe.jpg", folder / "huge.jpg", odd]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = embed(tiny_artifact, files, tmp_path / "out", executor="ray", workers=1, threads=1, progress=False)
    finally:
        ray.shutdown()
    assert (result.written, result.errors) == (4, 3)
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out").to_pylist()}
    assert rows["pipe.jpg"]["error"] == "not a regular file (a FIFO)"
    assert "over the 536870912-byte limit" in rows["huge.jpg"]["error"]
    assert rows["caf\\xe9.jpg"]["error"].startswith("Ray Data cannot read a file whose name is not UTF-8")
    np.testing.assert_array_equal(embedding_from_row(rows["good.png"]), _embedding(tiny_artifact, image))


def test_unreadable_and_symlinked_folders_are_reported(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    (folder / "locked").mkdir(parents=True)
    (folder / "elsewhere").mkdir()
    _save(folder / "a.png", seed=5)
    _save(folder / "locked" / "b.png", seed=6)
    outside = tmp_path / "outside"
    outside.mkdir()
    _save(outside / "c.png", seed=7)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)

    real_scandir = os.scandir

    def scandir(path):  # root ignores chmod 000, so the refusal is simulated
        if Path(path) == folder / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = scan_images([folder])
    assert [Path(k).name for k in listing.keys] == ["a.png"]
    reasons = {Path(p).name: why for p, why in listing.passed_over}
    assert reasons["locked"] == "folder cannot be read: Permission denied"
    assert reasons["linked"].startswith("symbolic link to a folder: not followed")
    assert reasons["loop"].startswith("symbolic link to a folder")
    assert [Path(k).name for k in scan_images([folder / "linked"]).keys] == ["c.png"]  # named: walked


# -- resuming ----------------------------------------------------------------------------------


def test_resume_redoes_changed_files_and_on_request_error_rows(tiny_artifact, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["im0.png", "im1.bmp", "im2.png"]):
        _save(folder / name, seed=10 + i)
    (folder / "junk.png").write_bytes(b"not an image")
    (folder / "empty.png").write_bytes(b"")
    output = tmp_path / "out"
    first = embed(tiny_artifact, [folder], output, batch_size=2, threads=1, progress=False)
    assert (first.written, first.errors) == (5, 2)

    replaced = _save(folder / "im0.png", seed=99, size=(50, 20))  # another size: redone
    size = (folder / "im1.bmp").stat().st_size
    other = _save(folder / "im1.bmp", seed=55)  # same size (BMP), other bytes, new time: redone after hashing
    assert (folder / "im1.bmp").stat().st_size == size
    os.utime(folder / "im2.png")  # touched only: kept
    Image.fromarray(make_image(30, 40, seed=11)).save(folder / "junk.png")  # repaired: redone
    second = embed(tiny_artifact, [folder], output, batch_size=3, threads=1, progress=False)
    assert (second.redone, second.written, second.skipped) == (3, 3, 2)
    rows = {Path(r["path"]).name: r for r in read_rows(output).to_pylist()}
    assert len(rows) == read_rows(output).num_rows == 5
    np.testing.assert_array_equal(embedding_from_row(rows["im0.png"]), _embedding(tiny_artifact, replaced))
    np.testing.assert_array_equal(embedding_from_row(rows["im1.bmp"]), _embedding(tiny_artifact, other))
    assert rows["junk.png"]["error"] is None and rows["empty.png"]["error"] == "empty file (0 bytes)"
    import hashlib

    for name in ("im0.png", "im1.bmp", "im2.png", "junk.png"):
        assert rows[name]["file_sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest(), name

    third = embed(tiny_artifact, [folder], output, threads=1, progress=False)
    assert (third.redone, third.written, third.skipped) == (0, 0, 5)
    fourth = embed(tiny_artifact, [folder], output, threads=1, progress=False, retry_errors=True)
    assert (fourth.redone, fourth.written, fourth.errors) == (1, 1, 1)
    assert read_rows(output).num_rows == 5


def test_a_row_is_not_restored_into_another_artifacts_predictor(tiny_artifact, tmp_path):
    _save(tmp_path / "a.png", seed=20)
    embed(tiny_artifact, [tmp_path / "a.png"], tmp_path / "out", threads=1, progress=False)
    row = read_rows(tmp_path / "out").to_pylist()[0]
    predictor_from_embedding(open_predictor(tiny_artifact, threads=1), row)  # its own artifact: fine

    other = another_artifact(tiny_artifact, tmp_path / "other-artifact")
    with pytest.raises(SamExportError, match="made with another artifact"):
        predictor_from_embedding(open_predictor(other, threads=1), row)
    with pytest.raises(SamExportError, match="does not record the artifact"):
        predictor_from_embedding(open_predictor(tiny_artifact, threads=1), {**row, "artifact_sha256": None})
    restored = predictor_from_embedding(open_predictor(other, threads=1), row, check_artifact=False)
    assert restored.is_image_set


# -- guards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [[], {"kind": "samexport-dataset", "format": 2, "job": "embed"}, "text", None])
def test_a_malformed_dataset_manifest_is_a_clear_error(tiny_artifact, tmp_path, manifest):
    from samexport.cli import app

    _save(tmp_path / "a.png", seed=21)
    output = tmp_path / "out"
    output.mkdir()
    (output / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(SamExportError, match="not a samexport dataset manifest"):
        embed(tiny_artifact, [tmp_path / "a.png"], output, progress=False)
    with pytest.raises(SamExportError, match="not a samexport dataset manifest"):
        read_rows(output)
    result = CliRunner().invoke(app, ["embed", str(tiny_artifact), str(tmp_path / "a.png"), "--output", str(output)])
    assert result.exit_code == 1 and "not a samexport dataset manifest" in result.output, result.output
    assert [p.name for p in output.iterdir()] == [MANIFEST_NAME]  # nothing added


def test_a_job_stops_when_its_lock_file_is_replaced(tmp_path):
    with FolderLock(tmp_path) as lock:
        lock.check()
        (tmp_path / ".samexport-dataset.lock").unlink()
        with pytest.raises(SamExportError, match="removed or replaced"):
            lock.check()


def test_the_cli_default_file_cap_is_the_librarys():
    from samexport.cli import segment

    assert segment.DEFAULT_MAX_FILE_BYTES == DEFAULT_MAX_FILE_BYTES
