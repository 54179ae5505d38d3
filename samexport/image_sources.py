"""Where images come from: image files in a folder, scikit-image's sample photos, synthetic pictures.

Read by parity, bench, INT8 calibration, the dataset jobs and the tests, so each rule (which file
suffixes are images, which sample photos are used) is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samexport.errors import SamExportError, require
from samexport.imageio import read_image

# File suffixes (case-insensitive) taken as images when a folder is listed; Pillow reads them all.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".jp2"}
)

# Photos bundled with scikit-image. ``stereo_motorcycle`` is downloaded on first use by some
# installs, so it is used only when its file is already in scikit-image's data folder.
SAMPLE_IMAGES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")


def is_image_file(path: Path | str) -> bool:
    """Whether ``path``'s suffix is one of :data:`IMAGE_SUFFIXES`."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path | str, *, what: str = "image") -> list[Path]:
    """The image files directly in ``folder`` (not recursive), sorted by name.

    Raises:
        SamExportError: ``folder`` is not a folder ("{what} folder not found"), or has no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SamExportError(f"{what} folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if is_image_file(p) and p.is_file())
    if not paths:
        raise SamExportError(f"no images in {what} folder {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The scikit-image sample photos as HxWx3 uint8 RGB, without downloading anything.

    Returns:
        (images by name, skipped names -> reason).
    """
    data = require("skimage.data", "bench")
    images, skipped = {}, {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            skipped[name] = f"scikit-image has no sample image {name!r}"
            continue
        if name == "stereo_motorcycle" and not _in_skimage_cache("motorcycle_left.png"):
            skipped[name] = "not bundled with scikit-image (download needed); not fetched"
            continue
        try:
            image = loader()
        except Exception as exc:  # noqa: BLE001 - pooch/network errors vary by version
            skipped[name] = f"could not load: {type(exc).__name__}: {exc}"
            continue
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        images[name] = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    return images, skipped


def _in_skimage_cache(filename: str) -> bool:
    """Whether scikit-image has ``filename`` in its data folder (so loading it downloads nothing)."""
    from skimage.data import data_dir

    return Path(data_dir, filename).is_file()


def read_images(folder: Path | str) -> dict[str, np.ndarray]:
    """Every image in ``folder`` that Pillow reads, by file name, as HxWx3 uint8 RGB."""

    return {p.name: read_image(p) for p in image_files(folder)}


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture (gradients and solid rectangles) for when no photo is at hand."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1), 128 + 0 * xx], -1)
    for _ in range(6):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        image[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)
