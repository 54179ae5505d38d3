"""Folders samexport assembles under a hidden name: our marker in them, and removing the ones
killed runs left behind.

A run that writes a folder in stages (a build's ``.NAME.partial-*``, the engine step's
``.plans-partial-*``) first writes a marker file into it holding its process id. A later run
removes such a folder only when the marker is there (so the folder is ours) and names a process
that is gone (so no run is still writing it); anything else with a matching name is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


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
