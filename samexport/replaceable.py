"""What a build may replace: a folder holding an artifact samexport wrote and nothing else.

``samexport.pipeline.build`` passes :func:`check_replaceable_artifact` to
``samexport.staging.check_output_destination`` and ``staged_directory``: a non-empty destination is
replaced only when it is one of samexport's artifacts (a valid ``manifest.json``) whose every
entry samexport wrote, known by exact name, never by a prefix (``encoder.onnx.bak`` is the user's).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from samexport import constants as C
from samexport.artifacts import (
    PLAN_FILES,
    PLANS_MARKER,
    PLANS_PARTIAL_PREFIX,
    PLANS_PREFIX,
    Manifest,
)
from samexport.errors import SamExportError
from samexport.records import REFERENCES_PREFIX
from samexport.staging import marker_pid

# references-<16 hex>.npz, and the temporary name it is written under (.NAME.partial-<8 hex>, or
# .NAME.partial-<pid> from samexport before staging.atomic_file wrote it)
_REFERENCES_FILE = re.compile(rf"\.?{REFERENCES_PREFIX}[0-9a-f]{{16}}\.npz(\.partial-[0-9a-f]+)?")
# write_manifest's temporary file (samexport.staging.temporary_name)
_PARTIAL_MANIFEST = re.compile(rf"\.{re.escape(C.MANIFEST)}\.[0-9a-f]{{32}}\.partial")


def _foreign_entries(folder: Path, manifest: Manifest) -> list[str]:
    """Entries of an artifact folder that samexport did not write (a user's notes, data): ours
    are known by exact name (a graph, its external data, the manifest, a plan folder holding our
    marker, a manifest a killed write left, a references file by its exact pattern), never by a name's prefix, so ``encoder.onnx.bak``
    is the user's."""
    ours = {C.MANIFEST, *PLAN_FILES, *C.GRAPH_FILES, *C.GRAPH_DATA_FILES, *(name.split("/")[0] for name in manifest.files)}
    ours |= {record.plan.split("/")[0] for record in manifest.engines.values()}
    foreign = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name in ours and (entry.is_file() or name.startswith(PLANS_PREFIX)):
            continue
        if name.startswith((PLANS_PREFIX, PLANS_PARTIAL_PREFIX)) and marker_pid(entry, PLANS_MARKER) is not None:
            continue
        if _PARTIAL_MANIFEST.fullmatch(name) and entry.is_file():
            continue
        if _REFERENCES_FILE.fullmatch(name) and entry.is_file():
            continue  # references `samexport references` wrote, left unlisted by a crash

        foreign.append(name)
    return foreign


def check_replaceable_artifact(folder: Path, where: str) -> None:
    """Accept a non-empty ``folder`` a build may replace: an artifact samexport wrote (a valid
    ``manifest.json``) holding nothing samexport did not write. The build passes it to
    ``samexport.staging.check_output_destination`` / ``staged_directory``.

    Raises:
        SamExportError: ``folder`` has no manifest or a foreign one, or holds a user's files;
            ``where`` names it in the message.
    """
    manifest_path = folder / C.MANIFEST
    if not manifest_path.is_file():
        raise SamExportError(
            f"{where} exists and is not a samexport artifact (it has files but no {C.MANIFEST}); "
            "samexport replaces only its own builds: choose a new folder, or move that one away yourself"
        )
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text()), source=str(manifest_path))
    except (ValueError, UnicodeDecodeError, SamExportError) as exc:
        raise SamExportError(
            f"{where} is not an artifact samexport can replace: {manifest_path} is not a samexport "
            f"manifest ({str(exc).splitlines()[0]}); choose a new folder, or move that one away yourself"
        ) from None
    foreign = _foreign_entries(folder, manifest)
    if foreign:
        raise SamExportError(
            f"{where} is an artifact, but it also holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
            f"samexport did not write ({', '.join(foreign[:3])}); replacing it would delete them: "
            "move them out, or choose another --output"
        )
