"""Whole datasets: embed or segment every image of folders, locally or on Ray Data.

    from samexport.datasets import embed, read_rows, predictor_from_embedding

    result = embed("engines/vit_b-fp32", ["photos/"], "embeddings/")        # resumable
    table = read_rows("embeddings/")                                       # pyarrow.Table, by path
    predictor = predictor_from_embedding(SamPredictor("engines/vit_b-fp32"), table.to_pylist()[0])
    # SAM 2.1: the rows hold the embedding and both high-resolution maps
    predictor = predictor_from_embedding(SAM2ImagePredictor("engines/sam2.1_hiera_tiny-fp32"), row)

Output: Parquet part files (one row per image, columns in ``schema.COLUMNS``) and a manifest
``samexport-dataset.json`` in the output folder. Needs the ``datasets`` extra (pyarrow); the Ray
executor the ``ray`` extra; ``segment_all`` the ``coco`` extra.
"""

from samexport.datasets.images import list_images, scan_images
from samexport.datasets.jobs import EXECUTORS, JobResult, embed, segment_all
from samexport.datasets.restore import (
    embedding_from_row,
    features_from_row,
    predictor_from_embedding,
)
from samexport.datasets.schema import COLUMNS, arrow_schema
from samexport.datasets.store import MANIFEST_NAME, read_rows

__all__ = [
    "COLUMNS",
    "EXECUTORS",
    "MANIFEST_NAME",
    "JobResult",
    "arrow_schema",
    "embed",
    "embedding_from_row",
    "features_from_row",
    "list_images",
    "predictor_from_embedding",
    "read_rows",
    "scan_images",
    "segment_all",
]
