"""``samexport predict``, ``segment-all`` (one image and the dataset job), ``embed`` and ``parity`` on a
SAM 2.1 artifact, against the official ``sam2`` package on the same random weights (``embed``:
against samexport's ``SAM2ImagePredictor.set_image``).

The artifact is ``sam2_tiny_artifact`` (``samexport build --variant sam2.1_hiera_tiny`` of a random
checkpoint, every parameter perturbed, official format). ``predict`` writes the best of the
multimask outputs: the official ``SAM2ImagePredictor``'s, to 1e-4 of the pixels. ``segment-all``
with NMS off (random weights decode noise: see tests/amg/test_sam2_generator.py) gives the
official ``SAM2AutomaticMaskGenerator``'s masks (same count, IoU >= 0.99, same scores).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support import SAM2_OFFICIAL_MISSING
from support.official import assert_same_masks
from typer.testing import CliRunner

from samexport import constants as C
from samexport.amg import ops
from samexport.cli import app
from samexport.datasets.worker import generator_defaults
from samexport.errors import SamExportError
from samexport.testing import make_image
from samexport.variants import get_sam2_variant

# pycocotools' decode trips NumPy 2's __array__ copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

runner = CliRunner()
OPTIONS = {"points-per-side": 4, "pred-iou-thresh": 0.5, "stability-score-thresh": 0.3,
           "stability-score-offset": 0.05, "box-nms-thresh": 1.0}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def scene():
    return make_image(200, 300, seed=5)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, scene):
    path = tmp_path_factory.mktemp("sam2_img") / "scene.png"
    Image.fromarray(scene).save(path)
    return path


@pytest.fixture(scope="module")
def official_model(sam2_tiny_checkpoint):
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2

    return build_sam2(get_sam2_variant("sam2.1_hiera_tiny").official_config, str(sam2_tiny_checkpoint), device="cpu")


def test_segment_all_defaults_are_the_familys():
    """A segment_all job on SAM 2.1 takes the official SAM 2.1 generator's options and defaults."""
    sam, sam2 = generator_defaults(C.SAM_GRAPHS), generator_defaults(C.SAM2_GRAPHS)
    assert (sam["pred_iou_thresh"], sam2["pred_iou_thresh"]) == (0.88, 0.8)
    assert sam2["mask_threshold"] == 0.0 and "mask_threshold" not in sam


@pytest.mark.slow
def test_predict_equals_official(sam2_tiny_artifact, official_model, image_file, scene, tmp_path):
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    official = SAM2ImagePredictor(official_model)
    with torch.no_grad():
        official.set_image(scene)
        masks, scores, _ = official.predict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]))
    best = int(np.argmax(scores))
    out = tmp_path / "mask.png"
    result = invoke("predict", sam2_tiny_artifact, image_file, "--point", "120,90", "--output", out,
                    "--backend", "onnxruntime-cpu")
    assert result.exit_code == 0, result.output
    assert f"score {scores[best]:.3f}" in result.output
    written = np.asarray(Image.open(out)) == 255
    assert 0.01 < written.mean() < 0.99
    assert (written != masks[best].astype(bool)).mean() <= 1e-4


@pytest.mark.slow
def test_segment_all_equals_official(sam2_tiny_artifact, official_model, image_file, scene, tmp_path):
    """One image (JSON) and the dataset job (a folder: Parquet rows) give the official masks."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    params = {name.replace("-", "_"): value for name, value in OPTIONS.items()}
    with torch.no_grad():
        official = SAM2AutomaticMaskGenerator(official_model, **params).generate(scene)
    assert 5 <= len(official) < 3 * 16
    options = [item for name, value in OPTIONS.items() for item in (f"--{name}", value)]

    out = tmp_path / "masks.json"
    result = invoke("segment-all", sam2_tiny_artifact, image_file, "--output", out, "--backend", "onnxruntime-cpu",
                    "--no-progress", *options)
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())["annotations"]
    for record in ours:
        record["segmentation"] = ops.rle_to_mask(record["segmentation"])
    assert_same_masks(ours, official)

    pytest.importorskip("pycocotools")
    from pycocotools import mask as coco

    from samexport.datasets import read_rows

    folder = tmp_path / "dataset"
    result = invoke("segment-all", sam2_tiny_artifact, image_file.parent, "--output", folder,
                    "--backend", "onnxruntime-cpu", "--no-progress", *options)
    assert result.exit_code == 0, result.output
    (row,) = read_rows(folder).to_pylist()
    rows = [{**m, "segmentation": coco.decode({**m["segmentation"], "counts": m["segmentation"]["counts"].encode()}).astype(bool),
             "point_coords": [m["point_coords"]]} for m in row["masks"]]
    assert_same_masks(rows, official)


@pytest.mark.slow
def test_embed_rows_restore_the_masks_of_set_image(sam2_tiny_artifact, image_file, scene, tmp_path):
    """``samexport embed`` on SAM 2.1: one row with the embedding and both high-resolution maps
    (the float16 rounding of ``set_image``'s features, exactly), their layouts in the dataset's
    manifest and the Parquet schema; the row restores a ``SAM2ImagePredictor`` whose masks are
    those of ``set_image`` on the same (rounded) features, and within float16 of the unrounded."""
    from samexport import SAM2ImagePredictor
    from samexport.datasets import (
        MANIFEST_NAME,
        features_from_row,
        predictor_from_embedding,
        read_rows,
    )
    from samexport.testing import mask_iou

    out = tmp_path / "emb"
    result = invoke("embed", sam2_tiny_artifact, image_file, "--output", out, "--no-progress", "--backend", "onnxruntime-cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    layout = {"dtype": "float16", "byte_order": "little", "order": "C"}
    assert manifest["contract"] == "sam2" and "embedding" not in manifest
    assert manifest["features"] == {
        "embedding": {**layout, "shape": [1, 256, 64, 64]},
        "high_res_feats_0": {**layout, "shape": [1, 32, 256, 256]},
        "high_res_feats_1": {**layout, "shape": [1, 64, 128, 128]},
    }
    table = read_rows(out)
    assert table.column_names[-3:] == ["embedding", "high_res_feats_0", "high_res_feats_1"]
    assert list(manifest["columns"]) == table.column_names and "input_height" not in table.column_names
    metadata = table.schema.metadata
    assert metadata[b"samexport.contract"] == b"sam2" and json.loads(metadata[b"samexport.features"]) == manifest["features"]
    (row,) = table.to_pylist()
    height, width = scene.shape[:2]
    assert row["error"] is None and (row["height"], row["width"]) == (height, width)

    direct = SAM2ImagePredictor(sam2_tiny_artifact, backend="onnxruntime-cpu")
    direct.set_image(scene)
    stored = features_from_row(row)
    for got, want in zip(stored, direct.image_features, strict=True):
        assert got.dtype == np.float16 and np.abs(want).max() > 0
        np.testing.assert_array_equal(got, want.astype(np.float16))

    restored = predictor_from_embedding(SAM2ImagePredictor(sam2_tiny_artifact, backend="onnxruntime-cpu"), row)
    assert restored.original_size == (height, width)
    prompts = {"point_coords": np.array([[width * 0.3, height * 0.6], [width * 0.7, height * 0.2]]),
               "point_labels": np.array([1, 0]), "box": np.array([2, 3, width - 5, height - 2])}
    unrounded = direct.predict(**prompts)
    direct.set_image_features([f.astype(np.float16) for f in direct.image_features], (height, width))
    for got, want in zip(restored.predict(**prompts), direct.predict(**prompts), strict=True):
        np.testing.assert_array_equal(got, want)
    masks, scores, _ = restored.predict(**prompts)
    assert min(mask_iou(a, b) for a, b in zip(masks, unrounded[0])) > 0.99
    np.testing.assert_allclose(scores, unrounded[1], atol=2e-3)

    with pytest.raises(SamExportError, match="has no high_res_feats_0 column"):
        predictor_from_embedding(restored, {k: v for k, v in row.items() if k != "high_res_feats_0"})
    again = invoke("embed", sam2_tiny_artifact, image_file, "--output", out, "--no-progress", "--backend", "onnxruntime-cpu")
    assert again.exit_code == 0 and read_rows(out).equals(table)  # resumed: nothing redone


@pytest.mark.slow
def test_parity_against_the_checkpoint_and_not_another(sam2_tiny_artifact, sam2_tiny_checkpoint, image_dir_sam2, tmp_path):
    """``samexport parity`` runs SAM 2.1's loop against its PyTorch weights: the fp32 graphs pass
    at fp32's tolerances, and the same artifact against weights with one parameter changed fails."""
    torch = pytest.importorskip("torch")
    report = tmp_path / "parity.json"
    result = invoke("parity", sam2_tiny_artifact, "--checkpoint", sam2_tiny_checkpoint,
                    "--images", image_dir_sam2, "--quick", "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["precision"] == "fp32"
    assert {c["metric"] for c in data["checks"]} >= {"embedding_rel_max_abs", "mask_iou_min"}

    state = torch.load(sam2_tiny_checkpoint, weights_only=True)
    name = "sam_mask_decoder.iou_prediction_head.layers.2.bias"
    state["model"][name] = state["model"][name] + 0.05
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    result = invoke("parity", sam2_tiny_artifact, "--checkpoint", changed, "--images", image_dir_sam2, "--quick")
    assert result.exit_code == 1 and "parity failed:" in result.output, result.output
    assert "iou_score_max_abs" in result.output.split("parity failed:")[1], result.output


@pytest.fixture(scope="module")
def image_dir_sam2(tmp_path_factory, scene):
    folder = tmp_path_factory.mktemp("sam2_parity_images")
    Image.fromarray(scene).save(folder / "scene.png")
    return folder
