"""The columns of a dataset job's Parquet rows (one row per image), for each job and model family.

Both jobs share the ``COMMON_COLUMNS``; a row whose ``error`` is not null holds nothing about the
image itself (it could not be used), only what identifies the file and the artifact.

An ``embed`` row holds the encoder's features of the artifact's graph contract, float16: SAM and
MobileSAM the image embedding (and the size of the image in the 1024 frame); SAM 2.1 the image
embedding (``no_mem_embed`` added) and the two high-resolution maps its decoder takes
(:data:`SAM2_FEATURE_COLUMNS`). The dataset's manifest records the layout of each feature column
(``embedding`` for SAM, ``features`` and ``contract`` for SAM 2.1: :func:`manifest_extra`), and
the Parquet schema's metadata the same (:func:`arrow_schema`); SAM's rows, schema and manifest are
those samexport wrote before SAM 2.1, so older datasets resume and read as they did.
"""

from __future__ import annotations

import json
from typing import Literal

from samexport import constants as C
from samexport.errors import InvalidInputError, require

Job = Literal["embed", "segment_all"]
JOBS: tuple[Job, ...] = ("embed", "segment_all")

EMBEDDING_DTYPE = "float16"
EMBEDDING_SHAPE = (1, C.EMBED_DIM, C.EMBED_SIZE, C.EMBED_SIZE)
EMBEDDING_LAYOUT = {"dtype": EMBEDDING_DTYPE, "shape": list(EMBEDDING_SHAPE), "byte_order": "little", "order": "C"}

# SAM 2.1's embed rows: column -> the encoder output it stores (the contract's order).
SAM2_FEATURE_COLUMNS = {
    "embedding": C.IMAGE_EMBEDDINGS,
    "high_res_feats_0": C.HIGH_RES_FEATS_0,
    "high_res_feats_1": C.HIGH_RES_FEATS_1,
}
if tuple(SAM2_FEATURE_COLUMNS.values()) != C.SAM2_GRAPHS.encoder_outputs:  # pragma: no cover - a bug
    raise AssertionError("SAM2_FEATURE_COLUMNS must follow SAM2_GRAPHS.encoder_outputs")


def feature_columns(contract: C.GraphContract | str = C.SAM_GRAPHS) -> dict[str, dict]:
    """An ``embed`` row's feature columns for ``contract`` (or its name), in the contract's
    order: column -> layout (dtype, shape, byte order, order)."""
    name = contract if isinstance(contract, str) else contract.name
    if name == C.SAM_GRAPHS.name:
        return {"embedding": EMBEDDING_LAYOUT}
    if name == C.SAM2_GRAPHS.name:
        return {
            column: {"dtype": EMBEDDING_DTYPE, "shape": list(spec.shape), "byte_order": "little", "order": "C"}
            for column, spec in SAM2_FEATURE_COLUMNS.items()
        }
    raise InvalidInputError(f"unknown graph contract {name!r}; valid: {', '.join(C.GRAPH_CONTRACTS)}")


COMMON_COLUMNS = {
    "path": "absolute path of the image file (the row's key); bytes of a name that is not UTF-8 are written \\xNN",
    "path_bytes": "the path's exact bytes (os.fsencode) when the name is not UTF-8, else null",
    "error": "why the image could not be used, or null",
    "artifact_sha256": "sha256 of the manifest.json of the artifact that made the row",
    "file_sha256": "sha256 of the file's bytes (null when unreadable)",
    "file_size": "the file's size in bytes when it was read (null when it could not be examined)",
    "file_mtime_ns": "the file's modification time (ns since the epoch) when it was read, or null",
    "height": "original image height H, pixels",
    "width": "original image width W, pixels",
}
COLUMNS: dict[Job, dict[str, str]] = {
    "embed": {
        **COMMON_COLUMNS,
        "input_height": "height h of the image resized so its long side is 1024 (the 1024 frame)",
        "input_width": "width w of the resized image",
        "embedding": "image embedding 1x256x64x64 float16, little-endian C-order bytes (2 MiB)",
    },
    "segment_all": {
        **COMMON_COLUMNS,
        "masks": "list of masks: segmentation (COCO RLE: size [H, W], counts str), area (pixels), "
        "bbox [X, Y, W, H], predicted_iou, stability_score, point_coords [X, Y] (the prompt), "
        "crop_box [X, Y, W, H]",
    },
}
SAM2_EMBED_COLUMNS = {
    **COMMON_COLUMNS,
    "embedding": "image embedding 1x256x64x64 float16 (SAM 2.1: no_mem_embed added, as SAM2ImagePredictor "
    "keeps it), little-endian C-order bytes (2 MiB)",
    "high_res_feats_0": "the decoder's first high-resolution map 1x32x256x256 float16 (conv_s0 applied), "
    "little-endian C-order bytes (4 MiB)",
    "high_res_feats_1": "the decoder's second high-resolution map 1x64x128x128 float16 (conv_s1 applied), "
    "little-endian C-order bytes (2 MiB)",
}


def _family(contract: C.GraphContract | str | None) -> str:
    name = C.SAM_GRAPHS.name if contract is None else contract if isinstance(contract, str) else contract.name
    if name not in C.GRAPH_CONTRACTS:
        raise InvalidInputError(f"unknown graph contract {name!r}; valid: {', '.join(C.GRAPH_CONTRACTS)}")
    return name


def columns(job: Job, contract: C.GraphContract | str | None = None) -> dict[str, str]:
    """Column -> description of ``job``'s rows for an artifact of ``contract`` (default SAM's)."""
    if job == "embed" and _family(contract) == C.SAM2_GRAPHS.name:
        return SAM2_EMBED_COLUMNS
    return COLUMNS[job]


def manifest_extra(job: Job, contract: C.GraphContract | str | None = None) -> dict:
    """What the dataset's manifest records about ``job``'s rows beyond the job itself: the
    columns; for ``embed`` the feature layouts (SAM: ``embedding``, as before SAM 2.1; SAM 2.1:
    ``contract`` and ``features``, column -> layout)."""
    extra: dict = {"columns": columns(job, contract)}
    if job == "embed":
        family = _family(contract)
        if family == C.SAM_GRAPHS.name:
            extra["embedding"] = EMBEDDING_LAYOUT
        else:
            extra["contract"] = family
            extra["features"] = feature_columns(family)
    return extra


def dataset_schema(manifest: dict):
    """The ``pyarrow.Schema`` of the rows of a dataset whose manifest is ``manifest`` (one
    without ``contract`` was made with SAM's)."""
    return arrow_schema(manifest["job"], manifest.get("contract"))


def arrow_schema(job: Job, contract: C.GraphContract | str | None = None):
    """The ``pyarrow.Schema`` of ``job``'s rows for an artifact of ``contract`` (default SAM's;
    needs the ``datasets`` extra)."""
    pa = require("pyarrow", "datasets")
    common = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("path_bytes", pa.binary()),
        pa.field("error", pa.string()),
        pa.field("artifact_sha256", pa.string()),
        pa.field("file_sha256", pa.string()),
        pa.field("file_size", pa.int64()),
        pa.field("file_mtime_ns", pa.int64()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
    ]
    if job == "embed" and _family(contract) == C.SAM2_GRAPHS.name:
        fields = common + [pa.field(column, pa.binary()) for column in SAM2_FEATURE_COLUMNS]
        metadata = {
            "samexport.job": job, "samexport.contract": C.SAM2_GRAPHS.name,
            "samexport.features": json.dumps(feature_columns(C.SAM2_GRAPHS)),
        }
    elif job == "embed":
        fields = common + [
            pa.field("input_height", pa.int32()),
            pa.field("input_width", pa.int32()),
            pa.field("embedding", pa.binary()),
        ]
        metadata = {"samexport.job": job, "samexport.embedding": json.dumps(EMBEDDING_LAYOUT)}
    elif job == "segment_all":
        rle = pa.struct([pa.field("size", pa.list_(pa.int32())), pa.field("counts", pa.string())])
        mask = pa.struct([
            pa.field("segmentation", rle),
            pa.field("area", pa.int64()),
            pa.field("bbox", pa.list_(pa.int32())),
            pa.field("predicted_iou", pa.float32()),
            pa.field("stability_score", pa.float32()),
            pa.field("point_coords", pa.list_(pa.float64())),
            pa.field("crop_box", pa.list_(pa.int32())),
        ])
        fields = common + [pa.field("masks", pa.list_(mask))]
        metadata = {"samexport.job": job}
    else:
        raise InvalidInputError(f"unknown job {job!r}; valid: {', '.join(JOBS)}")
    return pa.schema(fields, metadata=metadata)
