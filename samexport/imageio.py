"""Reading images and writing masks and overlays a person can look at (Pillow only).

Every image samexport reads (CLI, calibration, parity and bench folders, dataset jobs) goes
through :func:`decode`, so all of them see the same pixels: the first frame, turned upright by its
EXIF orientation as image viewers show it, high bit depths scaled (not clipped) to 8 bits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.staging import atomic_file

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
     [255, 140, 0], [199, 21, 133], [154, 205, 50], [70, 130, 180]],
    dtype=np.uint8,
)

MAX_IMAGE_PIXELS = C.MAX_IMAGE_PIXELS  # see samexport.constants

LOSSLESS_MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
"""File types :func:`write_mask` writes; lossy ones (JPEG, WebP) would blur the mask's edges."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class UnreadableImageError(SamExportError):
    """An image's bytes cannot be turned into RGB pixels; the message does not name the file."""


# Pillow's limit is a module global read while decoding (at open, and per frame for GIFs). While
# any samexport decode runs, it is raised to MAX_IMAGE_PIXELS (never lowered, never disabled) and
# restored when the last one ends; our own check gives the clear message first.
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextlib.contextmanager
def _pillow_pixel_limit() -> Iterator[None]:
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            if _limit_saved is not None and _limit_saved < MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _too_large(pixels: int | None) -> UnreadableImageError:
    size = f"{pixels / 1e6:.0f} MP, " if pixels else ""
    return UnreadableImageError(
        f"image too large ({size}limit {MAX_IMAGE_PIXELS / 1e6:.0f} MP = {MAX_IMAGE_PIXELS} pixels); "
        "downscale it first"
    )


def to_rgb8(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an opened Pillow image, high bit depths scaled to 8 bits.

    16-bit grayscale (modes ``I;16*``, and ``I`` with values in 0..65535, as 16-bit PNGs open) is
    scaled by 255/65535 with rounding (``round(v / 257)``); float images (mode ``F``, e.g. float
    TIFFs) must hold values in 0..1 and are scaled by 255 with rounding. Other ranges are
    refused: their meaning (0..255? 0..4095? signed?) cannot be known from the file.

    Raises:
        UnreadableImageError: a 32-bit integer or float image outside those ranges, or a mode
            Pillow cannot convert to RGB.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(image)
        if mode == "F":
            finite = bool(np.isfinite(values).all())
            low, high = (float(values.min()), float(values.max())) if finite and values.size else (0.0, 0.0)
            if not finite or low < 0.0 or high > 1.0:
                shown = "NaN or infinite values" if not finite else f"values {low:g}..{high:g}"
                raise UnreadableImageError(
                    f"float image (mode 'F') with {shown}; samexport reads float images only in "
                    "0..1: convert it to 8-bit RGB first"
                )
            gray = np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
        else:
            wide = values.astype(np.int64)
            if wide.size and (wide.min() < 0 or wide.max() > 65535):
                raise UnreadableImageError(
                    f"32-bit integer image (mode 'I') with values {wide.min()}..{wide.max()}, outside "
                    "16-bit 0..65535; convert it to 8-bit RGB first"
                )
            gray = ((wide * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), halves cannot occur
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as exc:  # a mode without an RGB conversion (e.g. LAB, HSV)
        raise UnreadableImageError(f"cannot convert image mode {mode!r} to RGB ({exc})") from None


def decode(source: Path | str | BinaryIO) -> np.ndarray:
    """Decode an image file (a path or a binary file object) to HxWx3 uint8 RGB.

    The first frame is used, turned by its EXIF orientation tag (``ImageOps.exif_transpose``) so
    the pixels are those a viewer shows upright, then converted by :func:`to_rgb8`. Images over
    :data:`MAX_IMAGE_PIXELS` are refused before their pixels are decoded.

    Raises:
        UnreadableImageError: not an image Pillow can read, corrupt or truncated data, too
            large, a bit depth or mode :func:`to_rgb8` refuses, or no pixels. The message does not
            name the file (callers add it).
    """
    with _pillow_pixel_limit():
        try:
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(width * height)
                rgb = to_rgb8(ImageOps.exif_transpose(image))
        except UnreadableImageError:
            raise
        except Image.DecompressionBombError:  # a GIF frame larger than the header says
            raise _too_large(None) from None
        except UnidentifiedImageError:  # its message names the file or a BytesIO's address
            raise UnreadableImageError("not a format Pillow can read") from None
        # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, ValueError,
        # struct.error, EOFError ...); any of them means this file is unusable.
        except Exception as exc:
            raise UnreadableImageError(f"{type(exc).__name__}: {exc}") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UnreadableImageError(f"image has no pixels (shape {rgb.shape})")
    return rgb


def read_image(path: Path | str) -> np.ndarray:
    """Load an image file as HxWx3 uint8 RGB, upright by its EXIF orientation (see :func:`decode`).

    Raises:
        SamExportError: the path does not exist, is a directory, cannot be opened, or is not an
            image :func:`decode` accepts; the message names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise SamExportError(f"image path is a directory, not an image file: {path}")
    if not path.exists():
        raise SamExportError(f"image not found: {path}")
    if not path.is_file():  # a FIFO or device would block or never end
        raise SamExportError(f"image path is not a regular file: {path}")
    try:
        with open(path, "rb") as file:
            return decode(file)
    except UnreadableImageError as exc:
        raise SamExportError(f"cannot read image {path}: {exc}") from None
    except OSError as exc:
        raise SamExportError(f"cannot read image {path}: {exc.strerror or exc}") from None


def check_mask_path(path: Path | str) -> Path:
    """``path`` if :func:`write_mask` can write a mask there, checked before any work is done.

    Raises:
        SamExportError: ``path`` is a directory, has no extension, or names a lossy or unknown
            format (the mask must come back exactly: PNG, TIFF or BMP).
    """
    path = Path(path)
    if path.is_dir():
        raise SamExportError(f"mask output {path} is a directory; name a file such as {path / 'mask.png'}")
    if not path.parent.is_dir():
        raise SamExportError(f"mask output folder {path.parent} does not exist")
    suffix = path.suffix.lower()
    if suffix not in LOSSLESS_MASK_SUFFIXES:
        what = "has no file extension" if not suffix else f"is not a lossless image format ({suffix})"
        raise SamExportError(
            f"mask output {path} {what}; masks are written losslessly: use "
            f"{', '.join(LOSSLESS_MASK_SUFFIXES)} (e.g. mask.png)"
        )
    return path


def check_picture_path(path: Path | str) -> Path:
    """``path`` if Pillow can save a picture (an overlay) there, checked before any work is done.

    Raises:
        SamExportError: ``path`` is a directory, its folder does not exist, or its extension is
            not an image format Pillow writes.
    """
    path = Path(path)
    if path.is_dir():
        raise SamExportError(f"output {path} is a directory; name a file such as {path / 'overlay.png'}")
    if not path.parent.is_dir():
        raise SamExportError(f"output folder {path.parent} does not exist")
    known = Image.registered_extensions()
    if path.suffix.lower() not in known or known[path.suffix.lower()] not in Image.SAVE:
        raise SamExportError(f"output {path} needs an image file extension Pillow writes, e.g. .png or .jpg")
    return path


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Write an HxW boolean mask as an 8-bit lossless image (0 background, 255 foreground).

    The format follows the suffix (PNG, TIFF or BMP, see :func:`check_mask_path`); the file is
    written next to ``path`` and renamed into place, so a failure leaves nothing half-written.
    """
    path = check_mask_path(path)
    picture = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    with atomic_file(path) as file:
        picture.save(file, format=Image.registered_extensions()[path.suffix.lower()])


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of an HxW boolean ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1)
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside


def overlay(
    image: np.ndarray,
    masks: Iterable[np.ndarray],
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
    colours: np.ndarray | None = None,
    outlined: bool = False,
) -> Image.Image:
    """The image with each HxW mask tinted in its own colour, outlined prompts drawn on top.

    Masks are drawn in order (a later one over an earlier one); ``masks`` may be any iterable
    of HxW bool arrays, read once, so a generator keeps one decoded mask in memory at a time.
    ``colours`` (Kx3 uint8 RGB, repeated after K masks) defaults to :data:`PALETTE`;
    ``outlined`` also paints each mask's outline in its full colour. Foreground points are
    green, background points red, boxes yellow.
    """
    canvas = image.astype(np.float32)
    palette = (PALETTE if colours is None else colours).astype(np.float32)
    for i, mask in enumerate(masks):
        colour = palette[i % len(palette)]
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
        if outlined:
            canvas[outline(mask)] = colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(max(image.shape[:2]) / 150))
    for box in [] if boxes is None else boxes:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 0), width=max(2, radius // 2))
    for (x, y), label in zip([] if points is None else points, [] if labels is None else labels):
        fill = (0, 200, 0) if label == 1 else (220, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return picture
