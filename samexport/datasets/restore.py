"""Restore a ``SamPredictor`` from a stored embedding row, without running the image encoder."""

from __future__ import annotations

from typing import Any

import numpy as np

from samexport.datasets.schema import EMBEDDING_DTYPE, EMBEDDING_SHAPE
from samexport.errors import InvalidInputError, SamExportError


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


def set_embedding(
    predictor,
    embedding: np.ndarray,
    original_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
) -> None:
    """Make ``predictor``'s current image the one ``embedding`` was computed from: the same as
    ``predictor.set_embedding(...)`` (see :meth:`samexport.SamPredictor.set_embedding`)."""
    predictor.set_embedding(embedding, original_size, input_size)


def checked_embedding(
    embedding: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """``(features 1x256x64x64 float32, (H, W), (h, w))`` for a stored embedding and its sizes.

    Raises:
        ValueError: a wrong shape, non-finite values, or sizes that do not fit together.
    """
    from samexport import transforms

    array = np.asarray(embedding)
    if array.shape == EMBEDDING_SHAPE[1:]:
        array = array[None]
    if array.shape != EMBEDDING_SHAPE or array.dtype.kind != "f":
        raise InvalidInputError(
            f"embedding must be a float array of shape {'x'.join(map(str, EMBEDDING_SHAPE))}; "
            f"got {array.dtype} {array.shape}"
        )
    features = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(features).all():
        raise InvalidInputError("embedding contains NaN or infinite values")
    height, width = (int(v) for v in original_size)
    expected = transforms.preprocess_shape(height, width)
    if input_size is not None and tuple(int(v) for v in input_size) != expected:
        raise InvalidInputError(
            f"input_size {tuple(input_size)} does not fit original_size {(height, width)}: "
            f"resizing to 1024 gives {expected}"
        )
    return features, (height, width), tuple(expected)


def check_row_artifact(predictor, row: dict[str, Any]) -> None:
    """Refuse a row made with another artifact than ``predictor``'s: its embedding would give
    other masks without any error.

    Raises:
        SamExportError: the row's ``artifact_sha256`` differs from the sha256 of the predictor's
            artifact ``manifest.json``, the row records no artifact (an older samexport), or the
            predictor was not opened from an artifact directory (so it cannot be checked).
    """
    row_artifact = row.get("artifact_sha256")
    found = getattr(getattr(predictor, "backend", None), "artifact_manifest_sha256", None)
    if row_artifact is None:
        raise SamExportError(
            f"{row.get('path')}: the row does not record the artifact that made it (an older samexport); "
            "pass check_artifact=False if you know it is this predictor's"
        )
    if found is None:
        raise SamExportError(
            "the predictor was not opened from an artifact directory, so the row's artifact cannot be "
            "checked; open SamPredictor(ARTIFACT_DIR), or pass check_artifact=False"
        )
    if found != row_artifact:
        raise SamExportError(
            f"{row.get('path')}: the row was made with another artifact (manifest sha256 "
            f"{row_artifact[:12]}..., this predictor's {found[:12]}...): its embedding would give wrong "
            "masks; restore it into a predictor of the artifact that made it (see the dataset's "
            "samexport-dataset.json)"
        )


def predictor_from_embedding(predictor, row: dict[str, Any], *, check_artifact: bool = True):
    """Set ``predictor``'s image from one ``embed`` row and return the predictor.

    Args:
        predictor: a ``SamPredictor`` opened from the artifact directory the row was made with.
        row: one row of :func:`samexport.datasets.read_rows`.
        check_artifact: refuse a row made with another artifact (:func:`check_row_artifact`).

    Example::

        table = read_rows("embeddings/")
        row = table.filter(pc.equal(table["path"], "/data/photo.jpg")).to_pylist()[0]
        predictor = predictor_from_embedding(SamPredictor("engines/vit_b-fp32"), row)
        masks, scores, _ = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    """
    embedding = embedding_from_row(row)
    if check_artifact:
        check_row_artifact(predictor, row)
    set_embedding(predictor, embedding, (row["height"], row["width"]), (row["input_height"], row["input_width"]))
    return predictor
