"""Restore a predictor from a stored ``embed`` row, without running the image encoder: a
``SamPredictor`` from SAM's embedding, a ``SAM2ImagePredictor`` from SAM 2.1's three features."""

from __future__ import annotations

from typing import Any

import numpy as np

from samexport import constants as C
from samexport.datasets.schema import (
    EMBEDDING_DTYPE,
    EMBEDDING_SHAPE,
    SAM2_FEATURE_COLUMNS,
)
from samexport.errors import SamExportError
from samexport.runtime.predictors import contract_of


def _feature(row: dict[str, Any], column: str, shape: tuple[int, ...]) -> np.ndarray:
    if row.get("error"):
        raise SamExportError(f"{row.get('path')} has no embedding: {row['error']}")
    data = row.get(column)
    if data is None:
        raise SamExportError(f"{row.get('path')} has no {column} column: is it an `embed` row of this model family?")
    dtype = np.dtype(EMBEDDING_DTYPE).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise SamExportError(f"{row.get('path')}: {column} has {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def embedding_from_row(row: dict[str, Any]) -> np.ndarray:
    """The ``embedding`` column of an ``embed`` row as a 1x256x64x64 float16 array (read-only view).

    Args:
        row: one row of :func:`samexport.datasets.read_rows`, e.g. ``table.slice(i, 1).to_pylist()[0]``.

    Raises:
        SamExportError: the row is an error row or its embedding has the wrong size.
    """
    return _feature(row, "embedding", EMBEDDING_SHAPE)


def features_from_row(row: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """The features of a SAM 2.1 ``embed`` row (embedding 1x256x64x64, high-resolution maps
    1x32x256x256 and 1x64x128x128), float16 read-only views, in the order
    ``SAM2ImagePredictor.set_image_features`` takes.

    Raises:
        SamExportError: an error row, a row of SAM's rows (no high-resolution maps), or a column of
            the wrong size.
    """
    return tuple(_feature(row, column, spec.shape) for column, spec in SAM2_FEATURE_COLUMNS.items())


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
        predictor: a ``SamPredictor`` (SAM, MobileSAM) or ``SAM2ImagePredictor`` (SAM 2.1)
            opened from the artifact directory the row was made with.
        row: one row of :func:`samexport.datasets.read_rows`.
        check_artifact: refuse a row made with another artifact (:func:`check_row_artifact`).

    Example::

        table = read_rows("embeddings/")
        row = table.filter(pc.equal(table["path"], "/data/photo.jpg")).to_pylist()[0]
        predictor = predictor_from_embedding(SamPredictor("engines/vit_b-fp32"), row)
        masks, scores, _ = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    """
    if contract_of(predictor) is C.SAM2_GRAPHS:
        features = features_from_row(row)
        if check_artifact:
            check_row_artifact(predictor, row)
        predictor.set_image_features(features, (row["height"], row["width"]))
        return predictor
    embedding = embedding_from_row(row)
    if check_artifact:
        check_row_artifact(predictor, row)
    predictor.set_embedding(embedding, (row["height"], row["width"]), (row["input_height"], row["input_width"]))
    return predictor
