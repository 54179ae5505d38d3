"""Small helpers that several pipeline stages share: file hashes, the cache folder, installed versions."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path

CACHE_ENV = "SAMEXPORT_CACHE"
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


def default_cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$SAMEXPORT_CACHE``, else ``$XDG_CACHE_HOME/samexport``,
    else ``~/.cache/samexport``. The folder is not created here."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "samexport"
