"""Nothing lost, nothing half-written, errors found before the work (issue 25, items 2, 9, 11,
15, 16, 17 and 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.pipeline import build


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A private samexport cache and an empty in-memory verified-files cache."""
    import samexport.integrity as integrity

    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "_verified", {})


@pytest.fixture
def artifact(tiny_artifact, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_artifact, tmp_path / "tiny-fp32"))


# Item 2: a rebuild removes only the files a build writes, by exact name.


@pytest.mark.parametrize("name", ["encoder.onnx.bak", "decoder.onnx~", "encoder.onnx.data.old", ".manifest.json.partial-mine"])
def test_a_rebuild_keeps_user_files_named_like_graphs(artifact, tiny_checkpoint, name):
    (artifact / name).write_text("mine")
    with pytest.raises(SamExportError, match=rf"1 entry samexport did not write \({name}\)"):
        build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert (artifact / name).read_text() == "mine"


@pytest.mark.slow
def test_a_rebuild_replaces_its_own_external_data(artifact, tiny_checkpoint):
    (artifact / f"{C.ENCODER_ONNX}.data").write_bytes(b"weights of an earlier vit_h build")
    build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert not (artifact / f"{C.ENCODER_ONNX}.data").exists()


# Item 9: a current-format manifest must carry its file records and digest.


def _rewrite(artifact: Path, change) -> None:
    path = artifact / C.MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_format_2_manifest_without_records_is_refused(artifact):
    from samexport.artifacts import DIGEST_KEY, read_manifest
    from samexport.runtime.backends import open_backend

    _rewrite(artifact, lambda data: (data.pop("files"), data.pop(DIGEST_KEY)))
    with pytest.raises(SamExportError, match="has manifest format 2 but no 'files' or 'manifest_sha256'"):
        read_manifest(artifact)
    with pytest.raises(SamExportError, match="the manifest was edited"):
        open_backend(artifact, "onnxruntime-cpu")


def test_a_manifest_dressed_as_format_1_is_refused(artifact):
    from samexport.artifacts import DIGEST_KEY, read_manifest

    _rewrite(artifact, lambda data: (data.pop("files"), data.pop(DIGEST_KEY), data.update(format=1)))
    with pytest.raises(SamExportError, match="claims manifest format 1 but has the 'runtime' section"):
        read_manifest(artifact)


def test_a_graph_without_a_record_is_refused(artifact):
    """A record deleted and the digest recomputed: the graph would go unchecked."""
    from samexport.artifacts import DIGEST_KEY, _digest, read_manifest

    def drop_decoder(data):
        del data["files"][C.DECODER_ONNX], data[DIGEST_KEY]
        data[DIGEST_KEY] = _digest(data)

    _rewrite(artifact, drop_decoder)
    with pytest.raises(SamExportError, match="records no size or hash for decoder.onnx"):
        read_manifest(artifact)


# Item 11: a file over the size limit (EFBIG), a full disk or quota is the user's to fix.


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


# Item 16: segment-all checks its output file's folder before the run.


def test_segment_all_refuses_an_output_in_a_missing_folder_before_the_run(tiny_artifact, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    import samexport.amg
    from samexport.cli import app
    from samexport.testing import make_image

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(samexport.amg.AutomaticMaskGenerator, "generate", must_not_run)
    image = tmp_path / "scene.png"
    Image.fromarray(make_image(60, 80, seed=1)).save(image)
    for output, says in ((tmp_path / "nodir" / "m.json", "nodir does not exist"), (tmp_path, "is a folder")):
        result = CliRunner().invoke(app, ["segment-all", str(tiny_artifact), str(image), "--output", str(output)])
        assert result.exit_code == 1 and says in result.output, result.output
    assert not (tmp_path / "nodir").exists()


# Item 17: the engine step checks its dependencies before it writes in the artifact.


def test_engines_without_polygraphy_say_so_before_touching_the_artifact(artifact, monkeypatch):
    import errno
    import os
    import sys

    from samexport.engines.artifact import build_artifact_engines
    from samexport.errors import MissingExtraError

    before = sorted(p.name for p in artifact.iterdir())
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # the artifact on a read-only mount (root ignores chmod)
        if Path(path).resolve().is_relative_to(artifact.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    monkeypatch.setitem(sys.modules, "polygraphy", None)  # not installed
    with pytest.raises(MissingExtraError, match="polygraphy is not installed"):
        build_artifact_engines(artifact, builder="tensorrt-rtx")
    assert sorted(p.name for p in artifact.iterdir()) == before


# Item 15: calibration images and the calibration cache are checked before the export.


def _calibration_folder(folder: Path, count: int = 2) -> Path:
    from PIL import Image

    from samexport.testing import make_image

    folder.mkdir()
    for seed in range(count):
        Image.fromarray(make_image(64, 96, seed=seed)).save(folder / f"photo{seed}.png")
    return folder


def _own_cache(checkpoint: Path, target: str = "onnxruntime") -> Path:
    """Where ``build`` keeps its calibration cache for ``checkpoint`` (samexport's cache folder)."""
    import os

    from samexport.utils import sha256_file

    return Path(os.environ["SAMEXPORT_CACHE"]) / "calibration" / f"tiny-{sha256_file(checkpoint)[:16]}-{target}.json"


def test_a_float_tiff_outside_0_1_in_calib_dir_is_named_before_export(tiny_checkpoint, tmp_path, no_export):
    from PIL import Image
    import numpy as np

    calib = _calibration_folder(tmp_path / "calib")
    Image.fromarray(np.array([[0.0, 200.0]], np.float32)).save(calib / "z_float.tif")  # Pillow opens it
    with pytest.raises(SamExportError, match=r"calibration image .*z_float.tif cannot be read .*float image"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8", calib_dir=calib)
    assert not (tmp_path / "out").exists()


def test_an_unusable_calibration_cache_is_named_before_export(tiny_checkpoint, tmp_path, no_export):
    calib = _calibration_folder(tmp_path / "calib")
    cache = _own_cache(tiny_checkpoint)
    cache.mkdir(parents=True)  # a folder where the cache file goes
    with pytest.raises(SamExportError, match=r"calibration cache .* is a folder"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8", calib_dir=calib,
              int8_target="onnxruntime")


@pytest.mark.slow
def test_samexport_replaces_its_own_malformed_calibration_cache(tiny_checkpoint, tmp_path, caplog):
    import logging

    calib = _calibration_folder(tmp_path / "calib")
    cache = _own_cache(tiny_checkpoint)
    cache.parent.mkdir(parents=True)
    cache.write_text("{half a cache")  # a disk that filled up while samexport wrote it
    with caplog.at_level(logging.WARNING, logger="samexport.precision.int8"):
        result = build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8",
                       calib_dir=calib, int8_target="onnxruntime", parity=False, engines="skip")
    assert "is malformed" in caplog.text and "replaced" in caplog.text
    assert result.manifest.precision == "int8"
    cached = json.loads(cache.read_text())
    assert cached["key"]["images"] and cached["ranges"]  # a cache again, reused by the next build
