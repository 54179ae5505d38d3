"""INT8 calibration inputs (samexport.precision.calibration): images and the calibration cache are
checked at the build's door, before the export; samexport replaces its own malformed cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samexport.errors import SamExportError
from samexport.pipeline import build

pytestmark = pytest.mark.usefixtures("private_cache")


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


def test_a_truncated_calibration_image_is_named_before_export(tiny_checkpoint, tmp_path, no_export):
    from PIL import Image

    from samexport.testing import make_image

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(make_image(64, 96)).save(calib / "a_good.png")
    Image.fromarray(make_image(64, 96, seed=1)).save(calib / "b_photo.jpg", quality=95)
    data = (calib / "b_photo.jpg").read_bytes()
    (calib / "b_photo.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SamExportError, match=r"calibration image .*b_photo.jpg cannot be read"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8", calib_dir=calib)
    assert not (tmp_path / "out").exists()


def test_a_float_tiff_outside_0_1_in_calib_dir_is_named_before_export(tiny_checkpoint, tmp_path, no_export):
    import numpy as np
    from PIL import Image

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
    with caplog.at_level(logging.WARNING, logger="samexport.precision.calibration"):
        result = build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8",
                       calib_dir=calib, int8_target="onnxruntime", parity=False, engines="skip")
    assert "is malformed" in caplog.text and "replaced" in caplog.text
    assert result.manifest.precision == "int8"
    cached = json.loads(cache.read_text())
    assert cached["key"]["images"] and cached["ranges"]  # a cache again, reused by the next build
