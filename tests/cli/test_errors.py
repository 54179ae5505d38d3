"""samexport.cli.errors: a full disk, a quota or a file over ``ulimit -f`` is the user's to fix:
one line with advice, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("private_cache")


def _limited(limit_bytes: int):
    """``preexec_fn`` giving the child ``ulimit -f`` (Python ignores SIGXFSZ, so writes get EFBIG)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def _samexport(*args: str, cwd: Path, limit_bytes: int):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "samexport.cli", *args], cwd=cwd, capture_output=True, text=True,
        preexec_fn=_limited(limit_bytes), timeout=600,
    )


def test_build_over_the_file_size_limit_is_a_clean_error(artifact, tiny_checkpoint, tmp_path):
    before = {p.name: p.read_bytes() for p in artifact.iterdir()}
    done = _samexport("build", "--variant", "tiny", "--checkpoint", str(tiny_checkpoint), "--output", str(artifact),
                      "--no-engines", "--no-parity", cwd=tmp_path, limit_bytes=2 << 20)
    assert done.returncode == 1, done.stderr
    assert "File too large" in done.stderr and "ulimit -f" in done.stderr and "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before  # the old build untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [artifact.name]  # no staging left


def test_embed_over_the_file_size_limit_is_a_clean_error(tiny_artifact, tmp_path):
    from samexport.datasets.store import read_rows
    from samexport.testing import make_image

    pil = pytest.importorskip("PIL.Image")
    images = tmp_path / "imgs"
    images.mkdir()
    for seed in range(3):
        pil.fromarray(make_image(60, 80, seed=seed)).save(images / f"{seed}.jpg")
    done = _samexport("embed", str(tiny_artifact), str(images), "--output", str(tmp_path / "emb"),
                      cwd=tmp_path, limit_bytes=20 << 10)
    assert done.returncode == 1, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in (tmp_path / "emb").iterdir() if p.name.endswith((".parquet", ".tmp"))] == []
    assert read_rows(tmp_path / "emb").num_rows == 0


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    OSError("Error writing bytes to file. Detail: [errno 122] Disk quota exceeded"),  # pyarrow's form
])
def test_full_disks_are_user_errors_with_advice(error):
    import errno

    from samexport.cli.errors import is_user_error, user_message

    assert errno.EDQUOT == 122 and is_user_error(error)
    wrapped = RuntimeError("export failed")
    wrapped.__cause__ = error
    assert is_user_error(wrapped) and "free some space" in user_message(wrapped)
    assert not is_user_error(OSError(5, "Input/output error"))
