"""One worker of a dataset job: opens the artifact once, turns batches of images into part files.

The same :class:`ImageWorker` runs in the local executor's process(es) and inside each Ray actor,
so both executors write byte-for-byte the same rows.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samexport import constants as C
from samexport.amg import generator_class
from samexport.datasets.images import DEFAULT_MAX_FILE_BYTES, ImageError, decode_image, display_path, is_utf8, read_file
from samexport.datasets.schema import EMBEDDING_DTYPE, EMBEDDING_SHAPE, SAM2_FEATURE_COLUMNS, Job, arrow_schema
from samexport.datasets.store import stage_part
from samexport.errors import SamExportError
from samexport.runtime.backends import open_backend
from samexport.runtime.predictors import AnyPredictor, contract_of
from samexport.runtime.predictors import open_predictor as family_predictor
from samexport.utils import sha256_file

# AutomaticMaskGenerator options a segment_all job accepts (JSON-friendly; they go in the manifest).
_NOT_JOB_OPTIONS = {"self", "model", "predictor", "point_grids", "output_mode", "progress"}


def generator_defaults(contract: C.GraphContract = C.SAM_GRAPHS) -> dict[str, Any]:
    """The keyword options and defaults of the family's mask generator (``AutomaticMaskGenerator``,
    or ``SAM2AutomaticMaskGenerator`` for SAM 2.1: :func:`~samexport.amg.generator_class`), as a
    segment_all job uses them."""

    signature = inspect.signature(generator_class(contract).__init__)
    return {
        name: p.default for name, p in signature.parameters.items()
        if name not in _NOT_JOB_OPTIONS and p.default is not inspect.Parameter.empty
    }


class _NoBackend:
    """Lets ``AutomaticMaskGenerator`` check its options without opening an artifact."""

    name = "none"

    def __init__(self, contract: C.GraphContract = C.SAM_GRAPHS) -> None:
        self.contract = contract

    def encode(self, image):  # pragma: no cover - never called
        raise RuntimeError("not a real backend")

    decode = encode


def resolve_generator_options(options: dict[str, Any], contract: C.GraphContract = C.SAM_GRAPHS) -> dict[str, Any]:
    """All mask-generator options of a job (defaults filled in), checked by the generator itself
    (the family's: ``contract``, the artifact's graph contract).

    Raises:
        SamExportError: an option the job does not take (e.g. ``point_grids``, ``output_mode``).
        ValueError: an option's value is invalid (the generator's message).
    """

    defaults = generator_defaults(contract)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise SamExportError(
            f"segment_all does not take {', '.join(unknown)}; options: {', '.join(defaults)}"
        )
    resolved = {**defaults, **options}
    generator_class(contract)(_NoBackend(contract), **resolved)  # raises ValueError on a bad value
    return resolved


@dataclass(frozen=True)
class JobSpec:
    """What every worker of a job needs: picklable, sent to worker processes and Ray actors.

    Args:
        job: ``"embed"`` or ``"segment_all"``.
        artifact_dir: the artifact directory, a path every worker can read.
        manifest_sha256: sha256 of the artifact's ``manifest.json`` seen by the driver; a worker
            that finds another (a different build at the same path on another node) refuses.
        backend: as ``SamPredictor(backend=...)``.
        threads: ONNX Runtime intra-op threads per worker; ``None``: ONNX Runtime's default.
        generator_options: ``AutomaticMaskGenerator`` options (segment_all only).
        max_file_bytes: larger files become error rows without being read.
        contract: the name of the artifact's graph contract (``"sam"`` or ``"sam2"``): the
            ``embed`` rows' columns (:func:`~samexport.datasets.schema.arrow_schema`).
    """

    job: Job
    artifact_dir: str
    manifest_sha256: str
    backend: str = "auto"
    threads: int | None = None
    generator_options: dict[str, Any] = field(default_factory=dict)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    contract: str = C.SAM_GRAPHS.name


def open_predictor(artifact_dir: Path | str, backend: str = "auto", threads: int | None = None) -> AnyPredictor:
    """The artifact's predictor (``SamPredictor``, or ``SAM2ImagePredictor`` for SAM 2.1) on
    ``backend`` with ``threads`` ONNX Runtime threads when set."""

    return family_predictor(open_backend(artifact_dir, backend, threads=threads))


def _coco_record(record: dict[str, Any]) -> dict[str, Any]:
    """One ``AutomaticMaskGenerator`` record (``coco_rle`` mode) as a ``masks`` list item."""
    return {
        "segmentation": {"size": list(record["segmentation"]["size"]), "counts": record["segmentation"]["counts"]},
        "area": record["area"],
        "bbox": record["bbox"],
        "predicted_iou": record["predicted_iou"],
        "stability_score": record["stability_score"],
        "point_coords": record["point_coords"][0],
        "crop_box": record["crop_box"],
    }


def _file_status(key: str) -> os.stat_result | None:
    try:
        return os.stat(key)
    except (OSError, ValueError):
        return None


def image_row(
    schema, key: str, data: bytes | None = None, *, artifact_sha256: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """A row of ``schema`` with the image's key, the artifact and the file's hash, size and time
    filled in, and the image (HxWx3 uint8 RGB); or the error row and ``None`` when the image
    cannot be used. ``data``: the file's bytes when already read (Ray), else read here."""
    row: dict[str, Any] = dict.fromkeys(schema.names)
    row["path"] = display_path(key)
    row["path_bytes"] = None if is_utf8(key) else os.fsencode(key)
    row["artifact_sha256"] = artifact_sha256
    status = None
    try:
        if data is None:
            data, status = read_file(key, max_file_bytes)
        else:
            status = _file_status(key)
            if status is not None and status.st_size != len(data):
                status = None  # changed since it was read: record no size and time, so a resume redoes it
        row["file_sha256"] = hashlib.sha256(data).hexdigest()
        image = decode_image(data)
    except ImageError as exc:
        row["error"] = str(exc)
        image = None
    status = status or _file_status(key)
    if status is not None:
        row["file_size"], row["file_mtime_ns"] = status.st_size, status.st_mtime_ns
    if image is None:
        return row, None
    row["height"], row["width"] = image.shape[:2]
    return row, image


class ImageWorker:
    """Processes images for one job with the artifact opened once.

    Only errors about an image itself (unreadable, empty, undecodable, wrong mode, no pixels)
    become error rows; anything else (a broken artifact, out of memory) propagates and stops
    the job, which a rerun resumes.
    """

    def __init__(self, spec: JobSpec) -> None:
        found = sha256_file(Path(spec.artifact_dir) / C.MANIFEST)
        if found != spec.manifest_sha256:
            raise SamExportError(
                f"{spec.artifact_dir}/{C.MANIFEST} on this worker differs from the one the job was "
                "started with: every worker must see the same artifact"
            )
        self.spec = spec
        self.predictor = open_predictor(spec.artifact_dir, spec.backend, spec.threads)
        if contract_of(self.predictor).name != spec.contract:
            raise SamExportError(
                f"{spec.artifact_dir} on this worker holds a {contract_of(self.predictor).name} model, and the job "
                f"was started for {spec.contract}: every worker must see the same artifact"
            )
        self.generator = None
        if spec.job == "segment_all":
            family = generator_class(contract_of(self.predictor))
            self.generator = family(self.predictor, **spec.generator_options, output_mode="coco_rle")
        self.schema = arrow_schema(spec.job, spec.contract)

    def row(self, key: str, data: bytes | None = None) -> dict[str, Any]:
        """The output row of one image; ``data`` is the file's bytes (read here when ``None``)."""
        row, image = image_row(self.schema, key, data, artifact_sha256=self.spec.manifest_sha256,
                               max_file_bytes=self.spec.max_file_bytes)
        if image is None:
            return row
        if self.spec.job == "embed" and self.spec.contract == C.SAM2_GRAPHS.name:
            self.predictor.set_image(image)
            little = np.dtype(EMBEDDING_DTYPE).newbyteorder("<")
            for (column, spec), feature in zip(SAM2_FEATURE_COLUMNS.items(), self.predictor.image_features, strict=True):
                if feature.shape != spec.shape:
                    raise SamExportError(f"the encoder returned {column} of shape {feature.shape}, expected {spec.shape}")
                row[column] = np.ascontiguousarray(feature, dtype=little).tobytes()
            self.predictor.reset_image()
        elif self.spec.job == "embed":
            self.predictor.set_image(image)
            embedding = self.predictor.embedding
            if embedding.shape != EMBEDDING_SHAPE:
                raise SamExportError(f"the encoder returned shape {embedding.shape}, expected {EMBEDDING_SHAPE}")
            row["input_height"], row["input_width"] = self.predictor.input_size
            row["embedding"] = np.ascontiguousarray(embedding, dtype=np.dtype(EMBEDDING_DTYPE).newbyteorder("<")).tobytes()
            self.predictor.reset_image()
        else:
            row["masks"] = [_coco_record(r) for r in self.generator.generate(image)]
        return row

    def write_batch(
        self, folder: Path | str, keys: list[str], datas: list[bytes | None] | None = None, *,
        check: Callable[[], None] | None = None,
    ) -> tuple[str, list[str | None]]:
        """Process a batch and stage it as one part file (:func:`~samexport.datasets.store.stage_part`),
        which the job's driver commits; returns the staged file's path and each image's error (or
        None). ``check`` is called before each image and before writing (it may stop the process,
        e.g. when the driver is gone)."""
        import pyarrow as pa

        rows = []
        for key, data in zip(keys, datas or [None] * len(keys)):
            if check is not None:
                check()
            rows.append(self.row(key, data))
        if check is not None:
            check()
        temp = stage_part(folder, pa.Table.from_pylist(rows, schema=self.schema))
        return str(temp), [row["error"] for row in rows]
