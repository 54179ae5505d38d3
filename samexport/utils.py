"""Small helpers that several pipeline stages share: file hashes and installed versions."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Lower-case hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` where absent), and
    Python's own as ``"python"``."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
