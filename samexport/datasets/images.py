"""Which files a dataset job reads, and turning one file's bytes into an RGB array or an error.

A job's images are keyed by their absolute path (``image_key``); that key is the ``path`` column
of every output row and what a resumed run compares against.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from samexport.errors import SamExportError
from samexport.image_sources import IMAGE_SUFFIXES, is_image_file

# Extensions picked up when walking a folder (case-insensitive). Files named explicitly are taken
# whatever their extension: a bad one becomes an error row.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES

# Pillow modes with 8 bits per channel: converting them to RGB keeps their content. Anything else
# (16-bit "I;16*", 32-bit "I", float "F") would be clipped to 0..255 by ``convert("RGB")``, which
# silently produces a mostly white image, so those are error rows instead.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


class ImageError(Exception):
    """This one image cannot be used; the message becomes the row's ``error``."""


def image_key(path: Path | str) -> str:
    """The key of an image file: its absolute, normalised path as a string (symlinks are kept,
    so the row names the file the user listed)."""
    return os.path.abspath(path)


def list_images(inputs: Iterable[Path | str], *, exclude: Path | None = None) -> list[str]:
    """Keys of the images named by ``inputs``: files as given, folders walked recursively.

    In folders, files with an extension in :data:`IMAGE_EXTENSIONS` are taken; hidden files and
    folders (name starting with ``.``) and ``exclude`` (the output folder) are skipped.

    Returns:
        Sorted, de-duplicated image keys (:func:`image_key`).

    Raises:
        SamExportError: an input does not exist, or nothing was found.
    """
    keys: set[str] = set()
    excluded = image_key(exclude) if exclude is not None else None
    names = [Path(p) for p in inputs]
    if not names:
        raise SamExportError("no images given: pass image files or folders")
    for item in names:
        if item.is_dir():
            for root, dirs, files in os.walk(item, followlinks=False):
                dirs[:] = sorted(
                    d for d in dirs if not d.startswith(".") and image_key(Path(root, d)) != excluded
                )
                for name in files:
                    if not name.startswith(".") and is_image_file(name):
                        keys.add(image_key(Path(root, name)))
        elif os.path.lexists(item):  # a dangling symlink too: its row says it cannot be read
            keys.add(image_key(item))
        else:
            raise SamExportError(f"image or folder not found: {item}")
    if not keys:
        shown = ", ".join(str(p) for p in names[:3]) + (" ..." if len(names) > 3 else "")
        raise SamExportError(
            f"no images found in {shown} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return sorted(keys)


def read_file(key: str) -> bytes:
    """The bytes of an image file, or :class:`ImageError` when it cannot be read.

    Only regular files are read (a FIFO or device under a folder would block or never end).
    """
    import stat

    try:
        with open(key, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ImageError("not a regular file")
            return f.read()
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc


def check_readable(key: str) -> None:
    """Raise :class:`ImageError` (the message :func:`read_file` would give) unless ``key`` is a
    regular file this process can open; reads nothing."""
    import stat

    try:
        fd = os.open(key, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("not a regular file")
    finally:
        os.close(fd)


def decode_image(data: bytes) -> np.ndarray:
    """Decode an image file's bytes to HxWx3 uint8 RGB, as ``samexport.imageio.read_image`` does.

    The first frame of a multi-frame file is used; EXIF orientation is not applied (as in
    ``read_image`` and the official predictor, which see the stored pixels).

    Raises:
        ImageError: empty file, not an image Pillow can decode, a mode that is not 8-bit
            (e.g. 16-bit grayscale), or a zero-sized image.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            if mode not in EIGHT_BIT_MODES:
                raise ImageError(
                    f"unsupported image mode {mode!r} (not 8 bits per channel); convert it to 8-bit RGB first"
                )
            rgb = np.array(image.convert("RGB"))
    except ImageError:
        raise
    except UnidentifiedImageError:  # its message names a BytesIO object's address
        raise ImageError("cannot decode image: not a format Pillow can read") from None
    # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, DecompressionBombError ...); any of them means this file is unusable.
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"image has no pixels (shape {rgb.shape})")
    return rgb
