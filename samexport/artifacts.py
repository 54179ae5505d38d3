"""Artifact directories: the ONNX graphs, engine plans and ``manifest.json`` of one build.

A build is written into a hidden staging folder next to its destination and renamed into place only
when complete, manifest last, so a crash never leaves a directory that looks like a finished build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from samexport import constants as C
from samexport.errors import SamExportError

MANIFEST_FORMAT = 1
DEFAULT_ROOT = Path("engines")


def default_artifact_dir(variant: str, precision: str, root: Path = DEFAULT_ROOT) -> Path:
    """``engines/<variant>-<precision>``, e.g. ``engines/vit_b-fp16``."""
    return root / f"{variant}-{precision}"


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically: a temporary file in the same folder, flushed to disk,
    then renamed over the old one, so a reader sees the old manifest or the new, never half."""
    path = Path(folder) / C.MANIFEST
    partial = path.with_name(f".{C.MANIFEST}.partial-{os.getpid()}")
    try:
        with open(partial, "w") as stream:
            stream.write(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=2) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_manifest(folder: Path | str) -> dict:
    """Read and sanity-check ``manifest.json``; a missing or foreign file is a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SamExportError(f"artifact directory not found: {folder}")
    path = folder / C.MANIFEST
    if not path.is_file():
        raise SamExportError(
            f"{folder} has no {C.MANIFEST}: it is not a samexport build, or the build did not "
            "finish; run `samexport build` again"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SamExportError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise SamExportError(
            f"{path} has manifest format {manifest.get('format')!r}; this samexport reads "
            f"format {MANIFEST_FORMAT}: rebuild the artifacts"
        )
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        if not (folder / name).is_file():
            raise SamExportError(f"{folder} is incomplete: {name} is missing; rebuild it")
    return manifest


@contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``destination`` atomically.

    On any exception the staging folder is deleted and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a build is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
    os.replace(staging, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
