"""Checkpoint → local file: find an official SAM checkpoint in the cache, or download it.

Each variant's checkpoint record (``samexport.variants.CheckpointRecord``) gives the file's name,
URL and, where one is known, its sha256. A download streams into a temporary file next to its
destination, is checked against the ``Content-Length`` and (where known) the sha256, and only
then is renamed to its final name, so a cut-off or corrupt download never sits in the cache
under the name that :func:`resolve_checkpoint` looks for.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from samexport.errors import SamExportError
from samexport.staging import atomic_file, process_alive
from samexport.utils import default_cache_dir, sha256_file
from samexport.variants import ModelVariant, get_model

CHECKPOINT_URL_ENV = "SAMEXPORT_CHECKPOINT_URL"
_CHUNK_BYTES = 1 << 20
_MANUAL_HINT = "download it yourself and pass --checkpoint PATH"
# A part file left by a download of another machine sharing the cache (or by a samexport that did
# not put its process id in the name) is removed once it has not been written for this long.
STALE_PART_SECONDS = 24 * 3600
log = logging.getLogger(__name__)


def _host_tag() -> str:
    """8 hex digits naming this machine in part-file names (the host name may hold any character)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _part_pattern(name: str) -> re.Pattern:
    """Names of the part files a download of ``name`` writes: ``NAME.part-HOST-PID-XXXXXXXX``
    (:func:`download`), and ``NAME.part-XXXXXXXX`` of samexport versions before the process id."""
    return re.compile(rf"{re.escape(name)}\.part-(?:(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]+)-)?[a-z0-9_]{{8}}")


def remove_stale_parts(dest: Path) -> list[Path]:
    """Remove the part files of killed downloads of ``dest`` (a SIGKILL, a power cut: nothing
    could clean up), and only those: files named as :func:`download` names them whose process,
    on this machine, is gone; or, from another machine or an older samexport, not written for
    :data:`STALE_PART_SECONDS`. Any other file is left alone. Returns the files removed."""
    dest = Path(dest)
    pattern, host, removed = _part_pattern(dest.name), _host_tag(), []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if match["host"] == host:
            pid = int(match["pid"])
            if pid == os.getpid() or process_alive(pid):
                continue
        else:
            try:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_PART_SECONDS:
                    continue
            except OSError:
                continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        log.info("removed %s, left by a download that did not finish", entry.path)
        removed.append(Path(entry.path))
    return removed


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    Args:
        url: ``http(s)://`` (or any urllib-supported) address of the file.
        dest: final path; its folder is created if needed. An existing file there is replaced
            only after the new one has been fully received and verified.
        sha256: expected hex digest (any case), or ``None`` to skip the checksum.
        progress: show a tqdm bar on stderr (total taken from ``Content-Length``).
        timeout: seconds to wait for the connection and for each read.

    Raises:
        SamExportError: on an HTTP error, a network failure, a short read or a checksum mismatch.
            The temporary file is removed on any failure, Ctrl-C included (``KeyboardInterrupt``
            is re-raised as is), so no partial file is left behind. A download killed outright
            leaves its part file, ``NAME.part-HOST-PID-XXXXXXXX``; the next download of ``dest``
            removes it (:func:`remove_stale_parts`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(dest)
    # Checked before it is renamed into place; the part file's name says whose it is.
    with atomic_file(dest, prefix=f"{dest.name}.part-{_host_tag()}-{os.getpid()}-", suffix="") as out:
        received, expected_size, actual = _stream(url, out, progress=progress, timeout=timeout)
        if expected_size is not None and received != expected_size:
            raise SamExportError(
                f"download of {url} was cut short: received {received} of {expected_size} bytes; "
                f"try again, or {_MANUAL_HINT}"
            )
        if sha256 is not None and actual != sha256.lower():
            raise SamExportError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
                "the file was discarded"
            )
    return dest


def _stream(
    url: str, out: BinaryIO, *, progress: bool, timeout: float
) -> tuple[int, int | None, str]:
    """Copy the body of ``url`` into the binary file ``out``.

    Returns (bytes received, ``Content-Length`` or ``None`` if absent, hex sha256 of the bytes).
    """
    digest = hashlib.sha256()
    received = 0
    expected_size: int | None = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length and length.isdigit() else None
            name = url.rsplit("/", 1)[-1]
            with tqdm(
                total=expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError, refused or reset connections and timeouts are all OSErrors;
        # ValueError is a malformed URL.
        raise SamExportError(f"could not download {url}: {exc}; {_MANUAL_HINT}") from exc
    return received, expected_size, digest.hexdigest()


def resolve_checkpoint(
    variant: ModelVariant | str,
    checkpoint: Path | str | None = None,
    *,
    cache_dir: Path | None = None,
    download_missing: bool = True,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the path of a checkpoint file for ``variant``, downloading it to the cache if needed.

    Args:
        variant: the model variant (or its registry name); its checkpoint record
            (:class:`~samexport.variants.CheckpointRecord`) names the file in the cache, gives the
            URL and, where one is known, the sha256 that is verified. Without a sha256 (MobileSAM
            publishes none) a download is checked against its ``Content-Length`` only.
        checkpoint: a file the user supplied; returned as is (not checksummed, so fine-tuned
            weights work) after checking it exists.
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.
        download_missing: download a checkpoint missing from the cache; if ``False``, raise.
        base_url: a mirror folder, ending in ``/``, holding the file under its record's name;
            defaults to ``$SAMEXPORT_CHECKPOINT_URL``, else the record's own URL is used.
        progress: show a download progress bar.

    Raises:
        SamExportError: the given file is missing, the variant has no official checkpoint, the
            cached file fails its checksum, or the download fails. Every message says how to
            proceed (usually: pass ``--checkpoint PATH``).
    """
    variant = get_model(variant)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SamExportError(f"checkpoint {path} does not exist or is not a file")
        return path

    record = variant.checkpoint
    if record is None:
        raise SamExportError(
            f"variant {variant.name!r} has no official checkpoint; --checkpoint PATH is required"
        )
    cached = Path(cache_dir if cache_dir is not None else default_cache_dir()) / record.filename
    expected = record.sha256.lower() if record.sha256 else None

    if cached.is_file():
        if expected is not None and (actual := sha256_file(cached)) != expected:
            raise SamExportError(
                f"cached checkpoint {cached} is corrupt: expected sha256 {expected}, got {actual}; "
                "delete the file to download it again, or pass --checkpoint PATH"
            )
        return cached

    mirror = base_url or os.environ.get(CHECKPOINT_URL_ENV)
    url = mirror + record.filename if mirror else record.url
    if not download_missing:
        raise SamExportError(
            f"no checkpoint for {variant.name!r} at {cached} and downloading is disabled; "
            f"download {url} there yourself, or pass --checkpoint PATH"
        )
    return download(url, cached, sha256=expected, progress=progress)
