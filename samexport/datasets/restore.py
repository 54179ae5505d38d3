"""Restore a ``SamPredictor`` from a stored embedding row, without running the image encoder."""

from __future__ import annotations

from typing import Any

import numpy as np

from samexport.datasets.schema import EMBEDDING_DTYPE, EMBEDDING_SHAPE
from samexport.errors import SamExportError


def embedding_from_row(row: dict[str, Any]) -> np.ndarray:
    """The ``embedding`` column of an ``embed`` row as a 1x256x64x64 float16 array (read-only view).

    Args:
        row: one row of :func:`samexport.datasets.read_rows`, e.g. ``table.slice(i, 1).to_pylist()[0]``.

    Raises:
        SamExportError: the row is an error row or its embedding has the wrong size.
    """
    if row.get("error"):
        raise SamExportError(f"{row.get('path')} has no embedding: {row['error']}")
    data = row.get("embedding")
    if data is None:
        raise SamExportError(f"{row.get('path')} has no embedding column: is it an `embed` row?")
    dtype = np.dtype(EMBEDDING_DTYPE).newbyteorder("<")
    expected = int(np.prod(EMBEDDING_SHAPE)) * dtype.itemsize
    if len(data) != expected:
        raise SamExportError(f"{row.get('path')}: embedding has {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(EMBEDDING_SHAPE)


def predictor_from_embedding(predictor, row: dict[str, Any]):
    """Set ``predictor``'s image from one ``embed`` row and return the predictor.

    Example::

        table = read_rows("embeddings/")
        row = table.filter(pc.equal(table["path"], "/data/photo.jpg")).to_pylist()[0]
        predictor = predictor_from_embedding(SamPredictor("engines/vit_b-fp32"), row)
        masks, scores, _ = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    """
    predictor.set_embedding(
        embedding_from_row(row), (row["height"], row["width"]), (row["input_height"], row["input_width"])
    )
    return predictor
