"""The ``embed`` rows per model family (fast: no artifact): SAM's schema and dataset manifest are
the ones samexport wrote before SAM 2.1; SAM 2.1's hold the three features with their layouts;
``SAM2ImagePredictor.set_image_features`` and ``features_from_row`` check what they are given.
(The SAM 2.1 job itself, on an artifact: tests/cli/test_sam2_commands.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from samexport import constants as C
from samexport.datasets.restore import features_from_row
from samexport.datasets.schema import (
    COLUMNS,
    EMBEDDING_LAYOUT,
    arrow_schema,
    columns,
    dataset_schema,
    feature_columns,
    manifest_extra,
)
from samexport.errors import InvalidInputError, SamExportError

pytest.importorskip("pyarrow", reason="needs the datasets extra: pip install 'samexport[datasets]'")

COMMON = ["path", "path_bytes", "error", "artifact_sha256", "file_sha256", "file_size", "file_mtime_ns", "height", "width"]


def test_sam_embed_rows_are_unchanged():
    """The schema, metadata and manifest entries of SAM's embed rows, as written before SAM 2.1;
    a dataset manifest without ``contract`` (every older one) reads with them."""
    schema = arrow_schema("embed")
    assert schema.names == [*COMMON, "input_height", "input_width", "embedding"]
    assert schema.metadata == {b"samexport.job": b"embed", b"samexport.embedding": json.dumps(EMBEDDING_LAYOUT).encode()}
    assert arrow_schema("embed", C.SAM_GRAPHS) == schema and dataset_schema({"job": "embed"}) == schema
    assert manifest_extra("embed") == {"columns": COLUMNS["embed"], "embedding": EMBEDDING_LAYOUT}
    assert manifest_extra("segment_all", C.SAM2_GRAPHS) == {"columns": COLUMNS["segment_all"]}
    assert arrow_schema("segment_all", "sam2") == arrow_schema("segment_all")


def test_sam2_embed_rows_hold_the_three_features():
    schema = arrow_schema("embed", C.SAM2_GRAPHS)
    assert schema.names == [*COMMON, "embedding", "high_res_feats_0", "high_res_feats_1"] == list(columns("embed", "sam2"))
    layouts = feature_columns(C.SAM2_GRAPHS)
    assert [v["shape"] for v in layouts.values()] == [[1, 256, 64, 64], [1, 32, 256, 256], [1, 64, 128, 128]]
    assert {v["dtype"] for v in layouts.values()} == {"float16"}
    assert json.loads(schema.metadata[b"samexport.features"]) == layouts and schema.metadata[b"samexport.contract"] == b"sam2"
    extra = manifest_extra("embed", C.SAM2_GRAPHS)
    assert extra["contract"] == "sam2" and extra["features"] == layouts and "embedding" not in extra
    assert dataset_schema({"job": "embed", **extra}) == schema
    with pytest.raises(InvalidInputError, match="unknown graph contract 'sam3'"):
        arrow_schema("embed", "sam3")


class _Sam2Stub:
    """A backend that says it runs SAM 2.1's graphs and must not be called."""

    contract = C.SAM2_GRAPHS
    name = "stub"
    thread_safe = True

    def run_encoder(self, image):
        raise AssertionError("set_image_features must not run the encoder")


def test_set_image_features_checks_its_input():
    from samexport import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(_Sam2Stub())
    rng = np.random.default_rng(0)
    features = [rng.standard_normal(s.shape[1:]).astype(np.float16) for s in C.SAM2_GRAPHS.encoder_outputs]
    predictor.set_image_features(features, (300, 200))  # without the leading axis: taken
    assert predictor.original_size == (300, 200) and predictor.is_image_set
    for got, given in zip(predictor.image_features, features, strict=True):
        assert got.dtype == np.float32 and got.shape == (1, *given.shape)
        np.testing.assert_array_equal(got[0], given.astype(np.float32))
    with pytest.raises(InvalidInputError, match="features must be 3 arrays"):
        predictor.set_image_features(features[:2], (300, 200))
    with pytest.raises(InvalidInputError, match="features must be 3 arrays .* got one array"):
        predictor.set_image_features(features[0], (300, 200))
    with pytest.raises(InvalidInputError, match="high_res_feats_0 must be a float array of shape 1x32x256x256"):
        predictor.set_image_features([features[0], features[2], features[2]], (300, 200))
    bad = features[2].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="high_res_feats_1 holds non-finite values"):
        predictor.set_image_features([features[0], features[1], bad], (300, 200))
    with pytest.raises(InvalidInputError, match="original_size"):
        predictor.set_image_features(features, (0, 200))


def test_features_from_row_checks_the_row():
    arrays = [np.full(s.shape, k + 1, np.float16) for k, s in enumerate(C.SAM2_GRAPHS.encoder_outputs)]
    row = {"path": "/x.png", "error": None, **{c: a.tobytes() for c, a in zip(feature_columns("sam2"), arrays, strict=True)}}
    for got, want in zip(features_from_row(row), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(SamExportError, match="/x.png has no embedding: cannot decode"):
        features_from_row({**row, "error": "cannot decode"})
    with pytest.raises(SamExportError, match="has no high_res_feats_1 column"):
        features_from_row({k: v for k, v in row.items() if k != "high_res_feats_1"})
    with pytest.raises(SamExportError, match="high_res_feats_0 has 8 bytes, expected 4194304"):
        features_from_row({**row, "high_res_feats_0": b"12345678"})
