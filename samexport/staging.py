"""Writing files and folders so that a reader never sees half of one: a file written beside its
target and renamed over it (:func:`atomic_path`, :func:`atomic_file`), and folders assembled
under a hidden name with our marker in them (:func:`staged_directory`), removing the ones killed
runs left behind; and the check that a destination is one samexport may replace
(:func:`check_output_destination`), made before any work.

A run that writes a folder in stages (a build's ``.NAME.partial-*``, the engine step's
``.plans-partial-*``) first writes a marker file into it holding its process id. A later run
removes such a folder only when the marker is there (so the folder is ours) and names a process
that is gone (so no run is still writing it); anything else with a matching name is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from samexport.errors import SamExportError

log = logging.getLogger(__name__)

STAGING_MARKER = ".samexport-staging"  # in a build's staging folder: {"pid": ...} of the build
# Raises SamExportError when the non-empty folder (the first argument) must not be replaced; the
# second argument names it for the message (``--output PATH``).
ReplaceableCheck = Callable[[Path, str], None]


def write_marker(folder: Path, marker: str) -> Path:
    """Write ``folder/marker`` holding this process id (JSON ``{"pid": ...}``)."""
    path = Path(folder) / marker
    path.write_text(json.dumps({"pid": os.getpid()}))
    return path


def marker_pid(folder: Path, marker: str) -> int | None:
    """The process id in ``folder/marker``, or None when it is missing or not ours."""
    try:
        return int(json.loads((Path(folder) / marker).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(parent: Path, pattern: str, marker: str) -> list[Path]:
    """Remove the folders of ``parent`` matching the glob ``pattern`` that carry ``marker`` and
    whose process is gone (or is this one: a folder this process left from an earlier call).

    Returns:
        The folders removed, in glob order.
    """
    removed = []
    for candidate in Path(parent).glob(pattern):
        if not candidate.is_dir() or candidate.is_symlink():
            continue
        pid = marker_pid(candidate, marker)
        if pid is None:
            continue  # not ours, or not readable: leave it alone
        if pid != os.getpid() and process_alive(pid):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


# -- writing one file atomically ----------------------------------------------------------------


def temporary_name(target: str, suffix: str = ".partial") -> str:
    """A hidden name beside ``target`` for its next content: ``.TARGET.<32 hex>SUFFIX``."""
    return f".{target}.{uuid.uuid4().hex}{suffix}"


def _temporary_beside(path: Path, suffix: str, prefix: str | None) -> Path:
    """A new empty file next to ``path`` (same folder, so the rename stays on one file system),
    unique to this call (:func:`temporary_name`, or ``prefix`` + 8 random characters + ``suffix``),
    created with the umask's permissions as ``open(path, "w")`` would."""
    while True:
        name = temporary_name(path.name, suffix) if prefix is None else f"{prefix}{uuid.uuid4().hex[:8]}{suffix}"
        temp = path.with_name(name)
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temp


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, suffix: str = ".partial", prefix: str | None = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to, renamed over ``path`` after the block.

    The temporary is a new hidden file in ``path``'s folder (:func:`temporary_name`; ``suffix``
    and ``prefix`` let a caller that cleans up after killed runs recognise its own).
    After the block its data is flushed to disk (``fsync``), it replaces ``path`` in one rename
    (``os.replace``: a reader sees the old file or the new one, never half of one) and the folder
    entry is flushed too. If the block raises (Ctrl-C included), the temporary is removed and
    ``path`` is left as it was. For writers that take a path (``onnx.save``, Pillow, a plan's
    bytes); :func:`atomic_file` gives an open file instead.
    """
    path = Path(path)
    temp = _temporary_beside(path, suffix, prefix)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    with contextlib.suppress(OSError):  # not every file system can sync a folder
        _fsync(path.parent, directory=True)


@contextlib.contextmanager
def atomic_file(
    path: Path | str, mode: str = "wb", *, suffix: str = ".partial", prefix: str | None = None, **open_kwargs
) -> Iterator[IO]:
    """``open(temporary, mode)`` for :func:`atomic_path`: what the block writes replaces ``path``
    in one rename once the file is closed and synced; nothing changes if the block raises."""
    with atomic_path(path, suffix=suffix, prefix=prefix) as temp, open(temp, mode, **open_kwargs) as stream:
        yield stream


def write_atomically(path: Path | str, data: bytes | str | memoryview, *, suffix: str = ".partial") -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "wb", suffix=suffix) as stream:
        stream.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


# -- replacing a folder -------------------------------------------------------------------------


def _refuse_non_empty(folder: Path, where: str) -> None:
    raise SamExportError(f"{where} exists and is not empty; choose a new folder, or move that one away yourself")


def check_output_destination(destination: Path | str, replaceable: ReplaceableCheck = _refuse_non_empty) -> None:
    """Refuse, before any work, a destination a build must not (or cannot) replace.

    A build may write a new folder or an empty folder, and replace a non-empty one only where
    ``replaceable`` accepts it (the build passes ``samexport.replaceable.check_replaceable_artifact``:
    an artifact samexport wrote, holding nothing it did not write; by default none). It refuses an
    existing file, a symbolic link, the current folder or one above it, and a mount point (the
    final rename cannot move a mount point).

    Raises:
        SamExportError: the destination is one of those; the message says which and what to do.
    """
    destination = Path(destination)
    where = f"--output {destination}"
    if destination.is_symlink():
        raise SamExportError(f"{where} is a symbolic link; name the folder itself (or a new one)")
    resolved = destination.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved.parent == resolved:
        raise SamExportError(
            f"{where} is the current folder or one above it; a build replaces its output folder, so "
            f"name a new one, e.g. --output {destination / 'vit_b-fp32'}"
        )
    if os.path.ismount(resolved):
        raise SamExportError(
            f"{where} is a mount point; a build is renamed into place, which cannot replace a mount "
            f"point: name a folder inside it, e.g. --output {destination / 'vit_b-fp32'}"
        )
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SamExportError(f"{where}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SamExportError(f"{where}: cannot write in {ancestor} (permission denied)")
    if not destination.exists():
        return
    if not destination.is_dir():
        raise SamExportError(
            f"{where} exists and is a file, not an artifact folder; samexport replaces only its own "
            "builds: choose another --output"
        )
    if any(destination.iterdir()):
        replaceable(destination, where)


@contextlib.contextmanager
def staged_directory(destination: Path | str, replaceable: ReplaceableCheck = _refuse_non_empty) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``destination`` atomically.

    The destination is checked first and again just before the swap
    (:func:`check_output_destination`, with ``replaceable``). The staging folder
    ``.NAME.partial-*`` holds our marker (:data:`STAGING_MARKER`) until the swap, so a later build
    removes it if this process is killed; on any failure, the swap included, it is deleted and
    ``destination`` is left as it was.
    """
    check_output_destination(destination, replaceable)
    destination = Path(os.path.abspath(destination))
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{destination.name}.partial-"
    for stale in remove_stale_folders(destination.parent, f"{prefix}*", STAGING_MARKER):
        log.info("removed %s, left by a build that did not finish", stale)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
    try:
        write_marker(staging, STAGING_MARKER)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a build is an ordinary folder
        yield staging
        check_output_destination(destination, replaceable)  # nothing of the user's appeared there meanwhile
        (staging / STAGING_MARKER).unlink()
        old = None
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            os.replace(destination, old)
        try:
            os.replace(staging, destination)
        except BaseException:
            if old is not None:
                os.replace(old, destination)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
