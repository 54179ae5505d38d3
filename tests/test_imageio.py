"""Images read as a viewer shows them, high bit depths scaled, large images bounded (issue 12).

Every reader (CLI ``read_image``, dataset ``decode_image``, calibration ``encoder_feeds``, parity
``read_images``) must give the same pixels; the expected pixels here are computed with NumPy
from the stored array, not with Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samexport import imageio
from samexport.datasets.images import ImageError, decode_image
from samexport.errors import SamExportError
from samexport.image_sources import read_images
from samexport.precision.calibration import encoder_feeds
from samexport.testing import make_image
from samexport.transforms import preprocess

# EXIF orientation tag value -> how the stored pixels must be turned to be seen upright.
ORIENTATIONS = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # "rotate 90 CW to display"
    8: lambda a: np.rot90(a, 1),
}


def _readers(path: Path) -> dict[str, np.ndarray]:
    """What each samexport image reader makes of ``path``."""
    return {
        "read_image": imageio.read_image(path),
        "decode_image": decode_image(path.read_bytes()),
        "read_images": read_images(path.parent)[path.name],
    }


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_by_every_reader(orientation, suffix, tmp_path):
    stored = make_image(30, 50, seed=orientation)  # not square: a rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    with Image.open(path) as picture:  # what the file holds (JPEG is lossy: compare with that)
        stored = np.array(picture.convert("RGB"))
    expected = np.ascontiguousarray(ORIENTATIONS[orientation](stored))
    for name, rgb in _readers(path).items():
        assert rgb.shape == expected.shape and np.array_equal(rgb, expected), name
    (feed,) = encoder_feeds([path])
    assert np.array_equal(next(iter(feed.values())), preprocess(expected))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (40, 60)).astype(np.uint16)
    values[0, :4] = [0, 128, 129, 65535]  # round(128/257) = 0, round(129/257) = 1
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    gray = np.rint(values / 257.0).astype(np.uint8)
    assert list(gray[0, :4]) == [0, 0, 1, 255]
    for name, rgb in _readers(path).items():
        assert rgb.dtype == np.uint8 and np.array_equal(rgb, np.dstack([gray] * 3)), name


def test_thirty_two_bit_integer_image_in_sixteen_bit_range_is_scaled():
    values = np.arange(0, 65536, 65536 // 600, dtype=np.int32)[:600].reshape(20, 30)
    rgb = imageio.to_rgb8(Image.fromarray(values))  # mode "I", as older Pillow opens 16-bit PNGs
    assert np.array_equal(rgb[..., 0], np.rint(values / 257.0).astype(np.uint8))
    with pytest.raises(SamExportError, match=r"mode 'I'\) with values -5\.\.65535"):
        imageio.to_rgb8(Image.fromarray(np.array([[-5, 65535]], np.int32)))


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    values = np.random.default_rng(1).random((24, 36), dtype=np.float32)
    values[0, :2] = [0.0, 1.0]
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    gray = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    assert gray.mean() > 100  # not black
    for name, rgb in _readers(path).items():
        assert np.array_equal(rgb, np.dstack([gray] * 3)), name


@pytest.mark.parametrize(
    "values, shown",
    [(np.array([[0.0, 200.0]], np.float32), "values 0..200"), (np.array([[np.nan, 0.5]], np.float32), "NaN")],
)
def test_float_tiff_outside_unit_range_is_refused(values, shown, tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(SamExportError, match=f"cannot read image {path}: float image .*{shown}.*only in 0..1"):
        imageio.read_image(path)
    with pytest.raises(ImageError, match="float image"):
        decode_image(path.read_bytes())


def _png_with_size(width: int, height: int) -> bytes:
    """A 1x1 1-bit PNG whose header claims ``width`` x ``height`` (its CRC recomputed)."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # said again by our error
def test_image_over_the_limit_is_refused_in_one_line(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_size(20000, 15000))  # 300 MP: over Pillow's 179 MP and our 268 MP
    with pytest.raises(SamExportError, match=r"image too large \(300 MP, limit 268 MP"):
        imageio.read_image(path)
    with pytest.raises(ImageError, match="image too large"):
        decode_image(path.read_bytes())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_pillows_limit_are_read_up_to_ours(tmp_path, monkeypatch):
    """Pillow's own limit (scaled down here, so a small image stands for a 200 MP photo) does not
    stop an image under MAX_IMAGE_PIXELS, and is restored afterwards; ours does."""
    image = make_image(20, 30)
    path = tmp_path / "big.png"
    Image.fromarray(image).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 200 pixels
    assert np.array_equal(imageio.read_image(path), image)
    assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(SamExportError, match=r"image too large \(0 MP, limit 0 MP = 599 pixels\)"):
        imageio.read_image(path)


def test_image_path_that_is_a_directory(tmp_path):
    with pytest.raises(SamExportError, match="is a directory"):
        imageio.read_image(tmp_path)
    with pytest.raises(SamExportError, match="image not found"):
        imageio.read_image(tmp_path / "missing.png")
