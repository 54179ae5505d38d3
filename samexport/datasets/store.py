"""The output folder of a dataset job: its manifest, its Parquet part files, and resuming.

Layout of an output folder::

    samexport-dataset.json     the manifest: job, artifact file hashes, parameters (written once)
    part-<16 hex>.parquet      one file per batch of images, one row per image
    .samexport-dataset.lock    held (flock) by the running job, so two jobs never share a folder

A part file is written under a hidden temporary name and renamed into place when complete
(``os.replace``), so a killed run leaves only whole parts plus temporaries that the next run
deletes. Its name is a hash of the image keys it holds: a batch that Ray retries after a worker
died rewrites the same file instead of adding a second copy. samexport refuses a folder that is
not empty and has no manifest, and only ever creates, replaces or deletes files of these names.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samexport._version import __version__
from samexport.artifacts import read_manifest
from samexport.datasets.schema import arrow_schema
from samexport.errors import SamExportError, require
from samexport.utils import sha256_file

MANIFEST_NAME = "samexport-dataset.json"
LOCK_NAME = ".samexport-dataset.lock"
FORMAT = 1
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


def write_part(folder: Path | str, table) -> Path:
    """Write a ``pyarrow.Table`` of rows as one part file, atomically; returns its path.

    The rows are sorted by ``path``; the file appears under its final name only when complete
    (written to a hidden temporary, fsynced, then ``os.replace``).
    """
    pq = require("pyarrow.parquet", "datasets")
    folder = Path(folder)
    keys = table.column("path").to_pylist()
    table = table.take(sorted(range(len(keys)), key=keys.__getitem__))
    final = folder / part_name(keys)
    temp = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


@dataclass(frozen=True)
class OutputFolder:
    """An output folder that holds a manifest for ``job`` (see :func:`open_output`)."""

    path: Path
    manifest: dict[str, Any]

    def parts(self) -> list[Path]:
        """The complete part files, sorted by name."""
        return sorted(p for p in self.path.iterdir() if PART_PATTERN.match(p.name) and p.is_file())

    def done_keys(self) -> set[str]:
        """Keys (``path`` column) of every image that already has a row, error rows included."""
        parts = self.parts()
        if not parts:
            return set()
        return set(read_rows(self.path, columns=["path"]).column("path").to_pylist())

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


def open_output(folder: Path | str, *, job: str, artifact: dict, parameters: dict, extra: dict) -> OutputFolder:
    """Create or reopen the output folder of a job.

    A missing or empty folder gets a new manifest. A folder with a manifest is resumed when it is
    for the same job, the same artifact files (sha256) and the same parameters.

    Raises:
        SamExportError: the folder is a file, is not empty and has no manifest (not ours), or its
            manifest is for another job, artifact or parameters.
    """

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise SamExportError(f"output {path} exists and is not a folder")
    manifest_path = path / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise SamExportError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if manifest.get("kind") != KIND or manifest.get("format") != FORMAT:
            raise SamExportError(
                f"{manifest_path} is not a samexport dataset manifest of format {FORMAT}; choose another --output"
            )
        if manifest.get("job") != job:
            raise SamExportError(
                f"{path} holds the output of `{manifest.get('job')}`, not `{job}`; choose another --output"
            )
        if manifest["artifact"]["files"] != artifact["files"]:
            raise SamExportError(
                f"{path} was made with another artifact (file hashes differ from {artifact['dir']}); "
                "choose another --output, or use the artifact it was made with "
                f"({manifest['artifact'].get('dir')})"
            )
        if manifest.get("parameters") != parameters:
            raise SamExportError(
                f"{path} was made with other parameters ({_describe_difference(manifest.get('parameters', {}), parameters)}); "
                "choose another --output or rerun with the same parameters"
            )
        return OutputFolder(path, manifest)
    if path.is_dir() and any(path.iterdir()):
        raise SamExportError(
            f"output folder {path} is not empty and has no {MANIFEST_NAME}: it was not made by "
            "samexport, and samexport does not write into it; choose a new or empty folder"
        )
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
    temp = path / f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
    temp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temp, manifest_path)
    return OutputFolder(path, manifest)


class FolderLock:
    """An exclusive ``flock`` on the folder's lock file for the lifetime of a job (POSIX only;
    elsewhere it does nothing). The kernel releases it when the process dies."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
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

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the (empty) lock file stays, it is ours
            self._fd = None


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
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise SamExportError(f"{path} is not a samexport dataset folder (no {MANIFEST_NAME})")
    schema = arrow_schema(json.loads(manifest_path.read_text())["job"])
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise SamExportError(f"no column {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    tables = []
    for part in sorted(p for p in path.iterdir() if PART_PATTERN.match(p.name) and p.is_file()):
        try:
            tables.append(pq.read_table(part, columns=columns, schema=schema))
        except (OSError, pa.ArrowInvalid) as exc:
            raise SamExportError(f"cannot read {part}: {exc}") from exc
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).sort_by("path")
