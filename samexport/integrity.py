"""File records of an artifact (size and sha256 of every graph and plan) and checking them.

The manifest lists each file the runtime loads with its size and sha256 (:func:`file_records`,
written by ``write_manifest`` on every rewrite). Opening an artifact checks them in two steps:

- sizes, always (``read_manifest``: one ``stat`` per file), which catches truncated and empty
  files and most files swapped in from another build;
- sha256, when a backend opens the artifact (:func:`verify_files`), which catches the rest: a
  flipped byte, a decoder of another build of the same size. Hashing costs about a second per GB,
  so a match is remembered under the file's device and inode with its size and modification and
  change times (nanoseconds): in memory for this process, and in ``verified-files.json`` in
  samexport's cache folder (``samexport.utils.default_cache_dir``) for the next one. Writing,
  copying or replacing a file changes its change time or inode, so the next open hashes it again;
  renaming the folder does not (the build hashes its files in the staging folder, and the first
  open of the finished artifact finds them remembered). The cache lives outside
  the artifact so that a read-only artifact (a device image, a container) still caches, and so
  that nothing is added to a folder a dataset job fingerprints.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from samexport.errors import SamExportError
from samexport.staging import write_atomically
from samexport.utils import default_cache_dir, sha256_file

CACHE_FILE = "verified-files.json"
CACHE_ENTRIES = 512  # most recent files kept in the cache file
_lock = threading.Lock()
_verified: dict[str, tuple[list[int], str]] = {}  # "device:inode" -> (stat key, sha256)


@dataclass(frozen=True)
class FileRecord:
    """One entry of ``manifest.files``: a file's size and sha256 (JSON ``{"bytes": size, "sha256": hex}``).

    Attributes:
        bytes: the file's size.
        sha256: its sha256, in hex.
        extra: keys this version does not know, written back as they were.
    """

    bytes: int
    sha256: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha256, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, name: str, source: str) -> FileRecord:
        """Validate: a size (an int, >= 0) and a sha256 (64 characters), under a relative name
        inside the artifact."""
        if not (
            isinstance(data, dict) and type(data.get("bytes")) is int and data["bytes"] >= 0
            and isinstance(data.get("sha256"), str) and len(data["sha256"]) == 64
        ) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise SamExportError(f"{source}: bad file record {name!r}: {data!r}")
        return cls(data["bytes"], data["sha256"], {key: v for key, v in data.items() if key not in ("bytes", "sha256")})


def file_records(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    """The size and sha256 of the files ``names`` (relative to ``folder``), by name."""
    records = {}
    for name in sorted(names):
        path = Path(folder) / name
        digest = sha256_file(path)
        records[name] = FileRecord(path.stat().st_size, digest)
        _remember(path, digest)  # just hashed: the first open of the artifact needs no second pass
    return records


def check_sizes(folder: Path, records: dict[str, FileRecord], *, source: str) -> None:
    """Every recorded file exists with its recorded size.

    Raises:
        SamExportError: a file is missing or has another size; the message names it.
    """
    for name, record in records.items():
        path = Path(folder) / name
        try:
            size = path.stat().st_size
        except OSError:
            raise SamExportError(f"{Path(folder)} is incomplete: {name} is missing; rebuild it") from None
        if size != record.bytes:
            raise SamExportError(
                f"{path} is {size} bytes but {source} records {record.bytes}: the file is damaged "
                "or comes from another build; copy the artifact again or rebuild it"
            )


def verify_files(folder: Path, records: dict[str, FileRecord], *, source: str, names: list[str] | None = None) -> None:
    """Check the size and sha256 of the recorded files (of ``names`` only, when given).

    Raises:
        SamExportError: a file differs from its record; the message names it.
    """
    selected = {n: r for n, r in records.items() if names is None or n in names}
    check_sizes(folder, selected, source=source)
    for name, record in selected.items():
        path = Path(folder) / name
        digest = _cached_digest(path)
        if digest is None:
            digest = sha256_file(path)
            if digest == record.sha256:
                _remember(path, digest)
        if digest != record.sha256:
            raise SamExportError(
                f"{path} does not match {source} (sha256 {digest[:12]}..., recorded "
                f"{record.sha256[:12]}...): the file is damaged or comes from another build; "
                "copy the artifact again or rebuild it"
            )


def _stat_key(path: Path) -> tuple[str, list[int]]:
    """(``"device:inode"``, [size, mtime_ns, ctime_ns]) of ``path``."""
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}", [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _cache_path() -> Path:
    return default_cache_dir() / CACHE_FILE


def _load_cache_file() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_digest(path: Path) -> str | None:
    """The sha256 remembered for ``path`` if the file is unchanged since, else None."""
    identity, key = _stat_key(path)
    with _lock:
        entry = _verified.get(identity)
    if entry is None:
        stored = _load_cache_file().get(identity)
        if isinstance(stored, dict) and isinstance(stored.get("sha256"), str):
            entry = (stored.get("key"), stored["sha256"])
    if entry is not None and entry[0] == key:
        return entry[1]
    return None


def _remember(path: Path, digest: str) -> None:
    """Remember that ``path`` in its current state hashes to ``digest`` (best effort on disk)."""
    identity, key = _stat_key(path)
    with _lock:
        _verified[identity] = (key, digest)
    cache = _load_cache_file()
    cache.pop(identity, None)
    cache[identity] = {"key": key, "sha256": digest}
    cache = dict(list(cache.items())[-CACHE_ENTRIES:])
    target = _cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, json.dumps(cache))
    except OSError:  # a read-only cache folder: the in-memory entry remains
        pass
