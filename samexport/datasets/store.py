"""The output folder of a dataset job: its manifest, its Parquet part files, and resuming.

Layout of an output folder::

    samexport-dataset.json     the manifest: job, artifact file hashes, parameters (written once)
    part-<16 hex>.parquet      one file per batch of images, one row per image
    .samexport-dataset.lock    held (flock) by the running job, so two jobs never share a folder

A worker writes each batch under a hidden temporary name (:func:`stage_part`); only the job's
driver, holding the folder lock, renames it into place (:meth:`OutputFolder.commit`,
``os.replace``). So a killed driver leaves whole parts plus temporaries that the next run
deletes, and a worker that outlives its driver can never add a row behind the back of the run
that resumes: what the next run reads as done (under the lock) is exactly what it will not redo.
A part's name is a hash of the image keys it was written with: a batch that Ray retries after a
worker died rewrites the same file instead of adding a second copy. samexport refuses a folder
that is not empty and has no manifest, and only ever creates, replaces or deletes files of these
names.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samexport._version import __version__
from samexport.artifacts import read_manifest
from samexport.datasets.images import row_key
from samexport.datasets.schema import JOBS, dataset_schema
from samexport.errors import SamExportError, require
from samexport.staging import atomic_file, temporary_name, write_atomically
from samexport.utils import sha256_file

if TYPE_CHECKING:  # typing.Self is Python 3.11+; only the type checker reads it
    from typing_extensions import Self

MANIFEST_NAME = "samexport-dataset.json"
LOCK_NAME = ".samexport-dataset.lock"
FORMAT = 2  # 2: rows record their artifact, the file's size and time, and non-UTF-8 names' bytes
READABLE_FORMATS = (1, 2)  # what read_rows reads; a job resumes only FORMAT
_KEY_COLUMNS = ["path", "path_bytes"]
KIND = "samexport-dataset"
PART_PATTERN = re.compile(r"^part-[0-9a-f]{16}\.parquet$")
TEMP_PATTERN = re.compile(r"^\.part-[0-9a-f]{16}\.parquet\.[0-9a-f]{32}\.tmp$")


def _sha256(path: Path) -> str:
    return sha256_file(path)


def artifact_fingerprint(artifact_dir: Path | str) -> dict[str, Any]:
    """What identifies an artifact: its variant and precision and the sha256 of every file in it.

    Hidden entries (``.fp32``, ``.parity``) and sub-folders are not part of a build's output.
    """

    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    files = {
        entry.name: _sha256(entry)
        for entry in sorted(folder.iterdir())
        if entry.is_file() and not entry.name.startswith(".")
    }
    return {
        "dir": str(folder.resolve()),
        "variant": manifest.variant,
        "precision": manifest.precision,
        "files": files,
    }


def part_name(keys: list[str]) -> str:
    """``part-<16 hex>.parquet``, a hash of the sorted image keys of one batch."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8", "surrogateescape")).hexdigest()
    return f"part-{digest[:16]}.parquet"


def stage_part(folder: Path | str, table) -> Path:
    """Write a ``pyarrow.Table`` of rows as a hidden temporary part file; returns its path.

    The rows are sorted by ``path``; the file is complete and fsynced when this returns, and
    becomes a part only when the driver commits it (:meth:`OutputFolder.commit`).
    """
    pq = require("pyarrow.parquet", "datasets")
    folder = Path(folder)
    keys = table.column("path").to_pylist()
    table = table.take(sorted(range(len(keys)), key=keys.__getitem__))
    temp = folder / temporary_name(part_name(keys), ".tmp")  # renamed by OutputFolder.commit
    try:
        with open(temp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _final_name(temp: Path) -> str:
    if not TEMP_PATTERN.match(temp.name):
        raise SamExportError(f"{temp} is not a staged part file of samexport")
    return temp.name[1:].split(".parquet.", 1)[0] + ".parquet"


@dataclass(frozen=True)
class OutputFolder:
    """An output folder that holds a manifest for ``job`` (see :func:`open_output`)."""

    path: Path
    manifest: dict[str, Any]
    lock: FolderLock | None = None

    def commit(self, temp: Path | str) -> Path:
        """Rename a staged part (:func:`stage_part`) into place, after checking that this job
        still holds the folder's lock; returns the part's path.

        Raises:
            SamExportError: the lock is no longer ours (its file was removed or replaced), or the
                staged file is missing (deleted by someone else).
        """
        temp = Path(temp)
        final = self.path / _final_name(temp)
        if self.lock is not None:
            self.lock.check()
        if final.exists():  # only if the hashes of two different batches' keys collided
            raise SamExportError(f"{final} exists already; not replaced (its rows would be lost)")
        try:
            os.replace(temp, final)
        except FileNotFoundError:
            raise SamExportError(f"the staged part {temp} disappeared before it was committed") from None
        return final

    def parts(self) -> list[Path]:
        """The complete part files, sorted by name."""
        return sorted(p for p in self.path.iterdir() if PART_PATTERN.match(p.name) and p.is_file())

    def done_rows(self) -> dict[str, dict[str, Any]]:
        """Every stored row's ``error``, ``file_size``, ``file_mtime_ns`` and ``file_sha256``, by
        image key (:func:`~samexport.datasets.images.row_key`)."""

        columns = [*_KEY_COLUMNS, "error", "file_size", "file_mtime_ns", "file_sha256"]
        return {row_key(r["path"], r["path_bytes"]): r for r in read_rows(self.path, columns=columns).to_pylist()}

    def done_keys(self) -> set[str]:
        """Keys of every image that already has a row, error rows included."""
        return set(self.done_rows())

    def drop_rows(self, keys: set[str]) -> int:
        """Remove the rows of ``keys`` (to be made again): each part holding one is rewritten
        without them under its own name (``os.replace``), or deleted when no row stays. A kill
        in between loses only rows that are made again. Returns the number of rows removed."""

        if not keys:
            return 0
        pq = require("pyarrow.parquet", "datasets")
        schema = dataset_schema(self.manifest)
        removed = 0
        for part in self.parts():
            held = pq.read_table(part, columns=_KEY_COLUMNS, schema=pa_schema(schema, _KEY_COLUMNS)).to_pylist()
            keep = [i for i, r in enumerate(held) if row_key(r["path"], r["path_bytes"]) not in keys]
            if len(keep) == len(held):
                continue
            if self.lock is not None:
                self.lock.check()
            if keep:
                with atomic_file(part, suffix=".tmp") as f:  # a temporary remove_temporaries knows
                    pq.write_table(pq.read_table(part, schema=schema).take(keep), f)
            else:
                part.unlink()
            removed += len(held) - len(keep)
        return removed

    def remove_temporaries(self) -> int:
        """Delete part files a killed run left half-written (only names samexport makes)."""
        removed = 0
        for entry in self.path.iterdir():
            if TEMP_PATTERN.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def _describe_difference(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])


def read_dataset_manifest(folder: Path | str, *, formats: tuple[int, ...] = READABLE_FORMATS) -> dict[str, Any]:
    """The manifest of a dataset output folder, checked for the fields samexport reads.

    Raises:
        SamExportError: no manifest, not valid JSON, not a JSON object of the expected shape
            (``kind``, ``format``, ``job``, ``artifact.files``, ``parameters``), or a format
            other than ``formats``.
    """

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise SamExportError(f"{path.parent} is not a samexport dataset folder (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SamExportError(f"{path} is not valid JSON: {exc}") from None
    artifact = manifest.get("artifact") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict) or manifest.get("kind") != KIND
        or not isinstance(artifact, dict) or not isinstance(artifact.get("files"), dict)
        or not isinstance(manifest.get("parameters"), dict) or manifest.get("job") not in JOBS
    ):
        raise SamExportError(
            f"{path} is not a samexport dataset manifest (a JSON object with kind {KIND!r}, job, artifact "
            "files and parameters); the folder was not made by samexport or was edited: choose another --output"
        )
    if manifest.get("format") not in formats:
        older = manifest.get("format") in READABLE_FORMATS
        raise SamExportError(
            f"{path} is dataset format {manifest.get('format')!r}, made by "
            + ("an older samexport: read its rows with read_rows, and write new rows into a new --output"
               if older else f"another samexport; this one reads format {', '.join(map(str, formats))}")
        )
    return manifest


def check_output(folder: Path | str) -> Path:
    """Refuse an output that samexport must not write into, reading only: a file, a folder that is
    not empty and has no dataset manifest, or one with a malformed manifest or of another format
    (the rest of a manifest is checked by :func:`open_output`)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise SamExportError(f"output {path} exists and is not a folder")
    if (path / MANIFEST_NAME).is_file():
        read_dataset_manifest(path, formats=(FORMAT,))  # a malformed one is refused before any lock file
    elif path.is_dir() and any(e.name != LOCK_NAME for e in path.iterdir()):
        raise SamExportError(
            f"output folder {path} is not empty and has no {MANIFEST_NAME}: it was not made by "
            "samexport, and samexport does not write into it; choose a new or empty folder"
        )
    return path


def open_output(
    folder: Path | str, *, job: str, artifact: dict, parameters: dict, extra: dict, lock: FolderLock | None = None,
) -> OutputFolder:
    """Create or reopen the output folder of a job (call it holding the folder's ``lock``).

    A missing or empty folder gets a new manifest. A folder with a manifest is resumed when it is
    for the same job, the same artifact files (sha256) and the same parameters.

    Raises:
        SamExportError: the folder is a file, is not empty and has no manifest (not ours), or its
            manifest is malformed or for another format, job, artifact or parameters.
    """

    path = check_output(folder)
    if (path / MANIFEST_NAME).is_file():
        manifest = read_dataset_manifest(path, formats=(FORMAT,))
        if manifest["job"] != job:
            raise SamExportError(
                f"{path} holds the output of `{manifest['job']}`, not `{job}`; choose another --output"
            )
        if manifest["artifact"]["files"] != artifact["files"]:
            raise SamExportError(
                f"{path} was made with another artifact (file hashes differ from {artifact['dir']}); "
                "choose another --output, or use the artifact it was made with "
                f"({manifest['artifact'].get('dir')})"
            )
        if manifest["parameters"] != parameters:
            raise SamExportError(
                f"{path} was made with other parameters ({_describe_difference(manifest['parameters'], parameters)}); "
                "choose another --output or rerun with the same parameters"
            )
        return OutputFolder(path, manifest, lock)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "kind": KIND,
        "job": job,
        "artifact": artifact,
        "parameters": parameters,
        **extra,
        "samexport_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomically(path / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n", suffix=".tmp")
    return OutputFolder(path, manifest, lock)


class FolderLock:
    """An exclusive ``flock`` on the folder's lock file for the lifetime of a job (POSIX only;
    elsewhere it does nothing). The kernel releases it when the process dies; the file descriptor
    is not inherited by worker processes, so a worker never holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> Self:
        try:
            import fcntl
        except ImportError:  # Windows
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise SamExportError(
                f"another samexport job is writing into {self.path.parent}; wait for it or choose another --output"
            ) from None
        return self

    def check(self) -> None:
        """Raise :class:`SamExportError` unless the lock file is still the one this job locked
        (someone who deletes it lets a second job lock a new file of the same name)."""
        if self._fd is None:
            return
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise SamExportError(
                f"{self.path} was removed or replaced while this job held it: another job may be writing "
                f"into {self.path.parent}; stopped before writing more (rerun to resume)"
            )

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the (empty) lock file stays, it is ours
            self._fd = None


def pa_schema(schema, columns: list[str]):
    """The fields ``columns`` of a ``pyarrow.Schema``, with its metadata."""
    pa = require("pyarrow", "datasets")
    return pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)


def read_rows(folder: Path | str, columns: list[str] | None = None):
    """Every row of a dataset output folder as one ``pyarrow.Table``, sorted by ``path``.

    Args:
        folder: an output folder of :func:`samexport.datasets.embed` or ``segment_all``.
        columns: only these columns (e.g. ``["path", "error"]``); default all.

    Raises:
        SamExportError: the folder has no dataset manifest, or a part file cannot be read.
    """

    pa = require("pyarrow", "datasets")
    pq = require("pyarrow.parquet", "datasets")
    path = Path(folder)
    schema = dataset_schema(read_dataset_manifest(path))
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise SamExportError(f"no column {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        schema = pa_schema(schema, columns)
    tables = []
    for part in sorted(p for p in path.iterdir() if PART_PATTERN.match(p.name) and p.is_file()):
        try:
            tables.append(pq.read_table(part, columns=columns, schema=schema))
        except (OSError, pa.ArrowInvalid) as exc:
            raise SamExportError(f"cannot read {part}: {exc}") from exc
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).sort_by("path")
