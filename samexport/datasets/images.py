"""Which files a dataset job reads, and turning one file's bytes into an RGB array or an error.

A job's images are keyed by their absolute path (``image_key``); that key is the ``path`` column
of every output row (with ``path_bytes`` holding the exact bytes of a name that is not UTF-8) and
what a resumed run compares against.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samexport.errors import SamExportError
from samexport.image_sources import IMAGE_SUFFIXES, is_image_file
from samexport.imageio import UnreadableImageError, decode

DEFAULT_MAX_FILE_BYTES = 512 << 20
"""Files larger than this are error rows, not read (512 MiB: an uncompressed 8-bit RGB image of
about 180 megapixels; ``samexport.imageio`` refuses images over 2**28 pixels anyway)."""


class ImageError(Exception):
    """This one image cannot be used; the message becomes the row's ``error``."""


@dataclass(frozen=True)
class Listing:
    """What :func:`scan_images` found: the image keys, and what it passed over and why."""

    keys: list[str]
    passed_over: list[tuple[str, str]] = field(default_factory=list)


def image_key(path: Path | str) -> str:
    """The key of an image file: its absolute, normalised path as a string (symlinks are kept,
    so the row names the file the user listed). A file name that is not valid UTF-8 keeps its
    bytes as surrogate escapes (``os.fsdecode``), so the key still opens the file."""
    return os.path.abspath(path)


def is_utf8(key: str) -> bool:
    """Whether ``key`` is valid UTF-8 (no surrogate escapes of undecodable bytes)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _walk(folder: str, excluded: str | None, keys: set[str], passed_over: list[tuple[str, str]]) -> None:
    """Add the image files under ``folder`` to ``keys``. Unreadable folders, symbolic links to
    folders and special files with an image suffix go to ``passed_over`` with the reason; hidden
    entries and files without an image suffix are skipped silently. ``os.scandir`` rather than
    ``os.walk``, which skips unreadable and symlinked folders without a word."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            passed_over.append((display_path(current), f"folder cannot be read: {exc.strerror or exc}"))
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            path = image_key(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if path != excluded:
                        stack.append(path)
                    continue
                if entry.is_symlink() and entry.is_dir():
                    why = "symbolic link to a folder: not followed (name it as an input to include it)"
                    passed_over.append((display_path(path), why))
                    continue
                if not is_image_file(entry.name):
                    continue
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    keys.add(path)  # a symlink to a file; a dangling one becomes an error row
                else:
                    passed_over.append((display_path(path), f"{_kind(entry.stat(follow_symlinks=False).st_mode)}, not an image file"))
            except OSError as exc:
                passed_over.append((display_path(path), f"cannot be examined: {exc.strerror or exc}"))


def scan_images(inputs: Iterable[Path | str], *, exclude: Path | None = None) -> Listing:
    """The images named by ``inputs``: files as given, folders walked recursively.

    In folders, files with an extension in :data:`~samexport.image_sources.IMAGE_SUFFIXES`
    (case-insensitive) are taken; hidden files and folders (name starting with ``.``) and
    ``exclude`` (the output folder) are skipped without a word; unreadable folders, symbolic
    links to folders (not followed: no loops, no walking out of the tree) and FIFOs, sockets and
    devices with an image suffix are passed over and reported. Files named explicitly are taken
    whatever they are: a bad one becomes an error row.

    Returns:
        a :class:`Listing`: sorted, de-duplicated image keys (:func:`image_key`), and
        ``(path, reason)`` for each thing passed over.

    Raises:
        SamExportError: an input does not exist, or nothing was found.
    """
    keys: set[str] = set()
    passed_over: list[tuple[str, str]] = []
    excluded = image_key(exclude) if exclude is not None else None
    names = [Path(p) for p in inputs]
    if not names:
        raise SamExportError("no images given: pass image files or folders")
    for item in names:
        if item.is_dir():
            _walk(image_key(item), excluded, keys, passed_over)
        elif os.path.lexists(item):  # a dangling symlink too: its row says it cannot be read
            keys.add(image_key(item))
        else:
            raise SamExportError(f"image or folder not found: {display_path(str(item))}")
    if not keys:
        shown = ", ".join(display_path(str(p)) for p in names[:3]) + (" ..." if len(names) > 3 else "")
        reasons = f"; passed over: {passed_over[0][0]}: {passed_over[0][1]}" if passed_over else ""
        raise SamExportError(
            f"no images found in {shown} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){reasons}"
        )
    named = {display_path(k) for k in keys}  # a file passed over in a folder but also named explicitly
    return Listing(sorted(keys), [(path, why) for path, why in passed_over if path not in named])


def list_images(inputs: Iterable[Path | str], *, exclude: Path | None = None) -> list[str]:
    """The image keys of :func:`scan_images` (what it passed over is not returned)."""
    return scan_images(inputs, exclude=exclude).keys


def display_path(key: str) -> str:
    """``key`` as valid UTF-8 text: undecodable bytes of a non-UTF-8 file name written ``\\xNN``."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def row_key(path: str, path_bytes: bytes | None) -> str:
    """The image key of a stored row from its ``path`` and ``path_bytes`` columns."""
    return os.fsdecode(path_bytes) if path_bytes is not None else path


def file_changed(key: str, size: int | None, mtime_ns: int | None, sha256: str | None,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bool:
    """Whether the file at ``key`` differs from the one a row was made from (its stored size,
    modification time and sha256). Same size and time: unchanged (nothing is read). Same size,
    another time (touched, copied): unchanged when the bytes hash the same. Anything else,
    including a file that appeared or disappeared: changed."""
    try:
        status = os.stat(key)
    except (OSError, ValueError):
        status = None
    now = None if status is None else (status.st_size, status.st_mtime_ns)
    before = None if size is None else (size, mtime_ns)
    if now == before:
        return False
    if now is None or before is None or now[0] != before[0] or sha256 is None:
        return True
    try:
        fd, _ = _open_regular(key, max_bytes)
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb") as f:  # hashlib.file_digest is Python 3.11+
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() != sha256
    except (ImageError, OSError):
        return True


def _open_regular(key: str, max_bytes: int) -> tuple[int, os.stat_result]:
    """An open descriptor on ``key`` and its status, or :class:`ImageError`: opened non-blocking
    (a FIFO would block the open), then refused unless a regular file of at most ``max_bytes``."""
    try:
        fd = os.open(key, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ImageError(f"not a regular file ({_kind(status.st_mode)})")
        if status.st_size > max_bytes:
            raise ImageError(
                f"file is {status.st_size} bytes, over the {max_bytes}-byte limit of the job (max_file_bytes)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def read_file(key: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular image file of at most ``max_bytes`` and its status (size, mtime),
    or :class:`ImageError` when it cannot or must not be read (a FIFO, a device, too large)."""
    fd, status = _open_regular(key, max_bytes)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file grew over the {max_bytes}-byte limit of the job (max_file_bytes) while read")
    return data, status


def check_readable(key: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
    """Raise :class:`ImageError` (the message :func:`read_file` would give) unless ``key`` is a
    regular file of at most ``max_bytes`` that this process can open; reads nothing."""
    fd, _ = _open_regular(key, max_bytes)
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
