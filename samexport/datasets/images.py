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
from samexport.imageio import UnreadableImageError, decode


class ImageError(Exception):
    """This one image cannot be used; the message becomes the row's ``error``."""


def image_key(path: Path | str) -> str:
    """The key of an image file: its absolute, normalised path as a string (symlinks are kept,
    so the row names the file the user listed)."""
    return os.path.abspath(path)


def list_images(inputs: Iterable[Path | str], *, exclude: Path | None = None) -> list[str]:
    """Keys of the images named by ``inputs``: files as given, folders walked recursively.

    In folders, files with an extension in :data:`~samexport.image_sources.IMAGE_SUFFIXES`
    (case-insensitive) are taken; hidden files and folders (name starting with ``.``) and
    ``exclude`` (the output folder) are skipped. Files named explicitly are taken whatever their
    extension: a bad one becomes an error row.

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
            f"no images found in {shown} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
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
    """Decode an image file's bytes to HxWx3 uint8 RGB with ``samexport.imageio.decode`` (the
    reader every samexport command uses: first frame, EXIF orientation applied, 16-bit and 0..1
    float images scaled to 8 bits).

    Raises:
        ImageError: empty file, not an image Pillow can decode, a bit depth or mode that cannot
            be converted (e.g. float values outside 0..1), too large, or a zero-sized image.
    """

    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        return decode(io.BytesIO(data))
    except UnreadableImageError as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
