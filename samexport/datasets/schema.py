"""The columns of a dataset job's Parquet rows (one row per image), for each job.

Both jobs share the ``COMMON_COLUMNS``; a row whose ``error`` is not null holds nothing about the
image itself (it could not be used), only what identifies the file and the artifact.
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


def arrow_schema(job: Job):
    """The ``pyarrow.Schema`` of ``job``'s rows (needs the ``datasets`` extra)."""
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
    if job == "embed":
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
