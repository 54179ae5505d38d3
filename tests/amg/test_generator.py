"""Automatic mask generation: parity with the official ``SamAutomaticMaskGenerator``, output
modes, the ``segment-all`` command and bad input.

Randomly initialised SAM weights decode noise (logits of +-0.4 everywhere, every box the whole
image), so after NMS a random model keeps about one mask per crop. The parity tests therefore run
both generators twice:

- on a *synthetic* SAM that segments by colour (below), shared by both sides: masks follow the
  shapes in the test image, so filtering, NMS and crops all have real work to do (tens of masks);
- on the tiny random weights, ours on ONNX Runtime against the official model in torch, with NMS
  off (``box_nms_thresh=1``) so that every mask passing the filters is compared.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from support.official import (
    SyntheticBackend,
    assert_same_masks,
    cv2_stand_in,
    synthetic_decode,
    synthetic_embedding,
    synthetic_official,
)
from typer.testing import CliRunner

from samexport.amg import AutomaticMaskGenerator, ops
from samexport.amg.measure import MaskMeasurer
from samexport.errors import InvalidInputError, NoImageSetError
from samexport.runtime.predictor import SamPredictor
from samexport.testing import make_image
from samexport.transforms import sam_mask_upsampling

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

# pycocotools' decode trips NumPy 2's __array__ copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# -- comparing results ----------------------------------------------------------------------


def official_generate(model, image, params, monkeypatch) -> list[dict]:
    from segment_anything import SamAutomaticMaskGenerator

    if params.get("min_mask_region_area", 0) > 0:
        monkeypatch.setitem(sys.modules, "cv2", cv2_stand_in())
    with torch.no_grad():
        return SamAutomaticMaskGenerator(model, **params).generate(image)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_image(240, 360, seed=3)


@pytest.fixture(scope="module")
def synthetic_predictor() -> SamPredictor:
    return SamPredictor(SyntheticBackend())


SYNTHETIC_PARAMS = [
    pytest.param(dict(points_per_side=12, pred_iou_thresh=0.7, stability_score_thresh=0.85), id="grid"),
    pytest.param(
        dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.8, crop_n_layers=1,
             crop_n_points_downscale_factor=2, box_nms_thresh=0.6),
        id="crops",
    ),
    pytest.param(
        dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.7, stability_score_offset=0.5,
             crop_n_layers=2, crop_n_points_downscale_factor=2, crop_overlap_ratio=0.2, crop_nms_thresh=0.5,
             points_per_batch=7),
        id="two-crop-layers",
    ),
    pytest.param(
        dict(points_per_side=10, pred_iou_thresh=0.6, stability_score_thresh=0.8, min_mask_region_area=400),
        id="small-regions",
    ),
]


@pytest.mark.parametrize("params", SYNTHETIC_PARAMS)
def test_parity_synthetic_model(params, scene, synthetic_predictor, monkeypatch):
    ours = AutomaticMaskGenerator(synthetic_predictor, **params).generate(scene)
    official = official_generate(synthetic_official(), scene, params, monkeypatch)
    assert 10 <= len(official) <= 150
    assert_same_masks(ours, official)
    # Same order too: NMS visits equal scores in input order, as torchvision does up to 1000 boxes.
    assert [r["bbox"] for r in ours] == [r["bbox"] for r in official]


REAL_PARAMS = [
    pytest.param({}, id="filters"),
    pytest.param(dict(min_mask_region_area=30), id="small-regions"),
]


@pytest.mark.slow
@pytest.mark.parametrize("extra", REAL_PARAMS)
def test_parity_tiny_weights_onnxruntime(extra, scene, tiny_artifact, tiny_official, monkeypatch):
    """Random weights give noise masks; with NMS off every mask that passes the filters counts."""
    params = dict(points_per_side=4, pred_iou_thresh=0.02, stability_score_offset=0.05,
                  stability_score_thresh=0.09, box_nms_thresh=1.0, **extra)
    ours = AutomaticMaskGenerator(SamPredictor(tiny_artifact), **params).generate(scene)
    official = official_generate(tiny_official, scene, params, monkeypatch)
    assert 10 <= len(official) <= 48
    assert_same_masks(ours, official)


# -- building blocks against the official helpers -------------------------------------------


@pytest.mark.parametrize(("input_size", "original_size"), [((683, 1024), (240, 360)), ((1024, 1024), (97, 97)),
                                                           ((1024, 768), (2000, 1500))])
def test_measurer_equals_full_upsampling(input_size, original_size):
    from samexport.transforms import postprocess_masks, preprocess

    points = torch.tensor([[100.0, 80.0], [900.0, 600.0], [500.0, 300.0], [20.0, 1000.0]])
    embedding = synthetic_embedding(torch.from_numpy(preprocess(make_image(300, 450))))
    logits = synthetic_decode(embedding, points)[0].reshape(-1, 256, 256).numpy()
    logits = np.concatenate([logits, np.full((1, 256, 256), -5.0, np.float32), -logits[:2]])
    measured = MaskMeasurer(sam_mask_upsampling(input_size, original_size), 1.0).measure(logits)
    full = postprocess_masks(logits, input_size, original_size)
    np.testing.assert_array_equal(measured.high_counts, (full > 1).sum(axis=(1, 2)))
    np.testing.assert_array_equal(measured.low_counts, (full > -1).sum(axis=(1, 2)))
    for i, mask in enumerate(full > 0):
        np.testing.assert_array_equal(measured.patches[i].paste(original_size), mask)
        np.testing.assert_array_equal(measured.boxes[i], ops.mask_to_box(mask))


def test_nms_matches_torchvision():
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(0)
    for count in (0, 1, 7, 300, 1000):
        x0, y0 = rng.integers(0, 300, (2, count))
        width, height = rng.integers(0, 120, (2, count))
        boxes = np.stack([x0, y0, x0 + width, y0 + height], axis=1)
        scores = rng.integers(0, 6, count).astype(np.float32)  # many ties
        for threshold in (0.0, 0.3, 0.7, 1.0):
            expected = batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores),
                                   torch.zeros(count), threshold).numpy()
            np.testing.assert_array_equal(ops.nms(boxes, scores, threshold), expected)


def test_grids_and_crop_boxes_match_official():
    from segment_anything.utils import amg

    for n, layers, scale in ((32, 0, 1), (5, 2, 2), (16, 1, 1)):
        for ours, theirs in zip(ops.build_layer_point_grids(n, layers, scale),
                                amg.build_all_layer_point_grids(n, layers, scale), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    for size in ((240, 360), (1500, 2250), (333, 77)):
        for layers in (0, 1, 3):
            assert ops.generate_crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(size, layers, 512 / 1500)


def test_rle_round_trips():
    from pycocotools import mask as mask_utils
    from segment_anything.utils import amg

    rng = np.random.default_rng(1)
    masks = [rng.random((37, 53)) > 0.6, np.zeros((5, 4), bool), np.ones((5, 4), bool), make_image(40, 30)[..., 0] > 90]
    for mask in masks:
        rle = ops.mask_to_rle(mask)
        assert rle == amg.mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]
        np.testing.assert_array_equal(ops.rle_to_mask(rle), mask)
        coco = ops.coco_encode_mask(mask)
        assert coco == amg.coco_encode_rle(rle)
        json.dumps(coco)
        decoded = mask_utils.decode({"size": coco["size"], "counts": coco["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_remove_small_regions():
    mask = np.zeros((12, 12), bool)
    mask[1:8, 1:8] = True
    mask[4, 4] = False  # a one-pixel hole
    mask[10, 10] = True  # a one-pixel island
    mask[9, 11] = True  # touching it diagonally: one 8-connected island of 2
    filled, changed = ops.remove_small_regions(mask, 3, "holes")
    assert changed and filled[4, 4] and filled[10, 10] and filled.sum() == mask.sum() + 1
    cleaned, changed = ops.remove_small_regions(filled, 3, "islands")
    assert changed and not cleaned[10, 10] and not cleaned[9, 11] and cleaned.sum() == 49
    assert ops.remove_small_regions(cleaned, 3, "islands") == (cleaned, False)
    # Every island small: the largest is kept.
    kept, changed = ops.remove_small_regions(mask & ~np.pad(np.ones((7, 7), bool), ((1, 4), (1, 4))), 5, "islands")
    assert changed and kept.sum() == 2


# -- output modes ---------------------------------------------------------------------------


def test_output_modes_agree(scene, synthetic_predictor):
    params = dict(points_per_side=6, pred_iou_thresh=0.6, stability_score_thresh=0.8)
    binary = AutomaticMaskGenerator(synthetic_predictor, **params).generate(scene)
    uncompressed = AutomaticMaskGenerator(synthetic_predictor, output_mode="uncompressed_rle", **params).generate(scene)
    coco = AutomaticMaskGenerator(synthetic_predictor, output_mode="coco_rle", **params).generate(scene)
    assert len(binary) == len(uncompressed) == len(coco) > 3
    from pycocotools import mask as mask_utils

    for b, u, c in zip(binary, uncompressed, coco):
        mask = b["segmentation"]
        assert mask.dtype == bool and mask.shape == scene.shape[:2]
        assert set(b) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
        assert b["area"] == mask.sum() == u["area"] == c["area"]
        x, y, w, h = b["bbox"]
        assert mask[y : y + h + 1, x : x + w + 1].sum() == mask.sum()
        np.testing.assert_array_equal(ops.rle_to_mask(u["segmentation"]), mask)
        rle = {"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        json.dumps({k: v for k, v in c.items()})


def test_generate_embedded_equals_generate(scene):
    """From an embedding already set (as a serving cache restores it): the records of
    ``generate``, with no encoder run, and the predictor keeps its image."""
    params = dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.8, min_mask_region_area=50)
    backend = SyntheticBackend()
    want = AutomaticMaskGenerator(SamPredictor(backend), **params).generate(scene)
    source = SamPredictor(backend)
    source.set_image(scene)
    predictor = SamPredictor(backend)
    predictor.set_embedding(source.image_state.embedding, scene.shape[:2])
    encodes = []
    backend.encode = lambda *args: encodes.append(args)  # any encoder run from here is recorded
    got = AutomaticMaskGenerator(predictor, **params).generate_embedded()
    assert len(got) == len(want) > 3 and not encodes and predictor.is_image_set
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.pop("segmentation"), w.pop("segmentation"))
        assert g == w
    with pytest.raises(InvalidInputError, match="crop_n_layers=0"):
        AutomaticMaskGenerator(predictor, crop_n_layers=1).generate_embedded()
    with pytest.raises(NoImageSetError, match="no image is set"):
        AutomaticMaskGenerator(SamPredictor(backend)).generate_embedded()


def test_missing_optional_dependencies(monkeypatch, synthetic_predictor):
    from samexport.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(MissingExtraError, match=r"samexport\[coco\]"):
        AutomaticMaskGenerator(synthetic_predictor, output_mode="coco_rle")


def test_progress_bar(scene, synthetic_predictor, capsys):
    AutomaticMaskGenerator(synthetic_predictor, points_per_side=4, points_per_batch=5, crop_n_layers=1,
                           progress=True).generate(scene)
    assert "segment-all" in capsys.readouterr().err
    AutomaticMaskGenerator(synthetic_predictor, points_per_side=2).generate(scene)
    assert capsys.readouterr().err == ""


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10), np.uint8), "grayscale"),
        (np.zeros((10, 10, 1), np.uint8), "grayscale"),
        (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        ([[[0, 0, 0]]], "numpy.ndarray"),
    ],
)
def test_bad_images(image, message, synthetic_predictor):
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(synthetic_predictor, points_per_side=2).generate(image)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(points_per_side=0), "points_per_side"),
        (dict(points_per_side=2.5), "points_per_side must be an int"),
        (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
        (dict(point_grids=[np.zeros((4, 2))]), "exactly one"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 2.0)]), r"\[0, 1\]"),
        (dict(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1), "one grid per crop layer"),
        (dict(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4), "no points in crop layer 2"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
        (dict(pred_iou_thresh=-0.1), "pred_iou_thresh"),
        (dict(stability_score_thresh=float("nan")), "stability_score_thresh"),
        (dict(stability_score_offset=-1.0), "stability_score_offset"),
        (dict(box_nms_thresh=2), "box_nms_thresh"),
        (dict(crop_nms_thresh=-1), "crop_nms_thresh"),
        (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio"),
        (dict(crop_n_layers=-1), "crop_n_layers"),
        (dict(crop_n_layers=True), "crop_n_layers must be an int"),
        (dict(crop_n_layers=4), "crop_n_layers must be at most 3; got 4: .* 341 crops"),
        (dict(crop_n_layers=5, points_per_side=64), "at most 3; got 5: .* 1365 crops"),
        (dict(min_mask_region_area=-5), "min_mask_region_area"),
        (dict(output_mode="png"), "output_mode"),
    ],
)
def test_bad_options(options, message, synthetic_predictor):
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(synthetic_predictor, **options)


def test_crop_layers_that_leave_empty_crops_are_refused(synthetic_predictor):
    """On a tiny image deep crop layers have crops with no pixels: the error says how many layers
    fit (3 layers leave every crop of an 8x8 image a pixel or more; a 2x3 image takes 1)."""
    generator = AutomaticMaskGenerator(synthetic_predictor, points_per_side=2, crop_n_layers=3)
    with pytest.raises(InvalidInputError, match=r"crop_n_layers=3 is too many for a 2x3 image: .* <= 1"):
        generator.generate(np.zeros((2, 3, 3), np.uint8))
    generator.generate(np.zeros((8, 8, 3), np.uint8))  # 3 layers leave every crop pixels: no error


def test_explicit_point_grids(scene, synthetic_predictor):
    grid = ops.build_point_grid(5)
    by_grid = AutomaticMaskGenerator(synthetic_predictor, points_per_side=None, point_grids=[grid],
                                     pred_iou_thresh=0.6, stability_score_thresh=0.8).generate(scene)
    by_side = AutomaticMaskGenerator(synthetic_predictor, points_per_side=5, pred_iou_thresh=0.6,
                                     stability_score_thresh=0.8).generate(scene)
    assert [r["bbox"] for r in by_grid] == [r["bbox"] for r in by_side] and by_grid


# -- command line ---------------------------------------------------------------------------


def test_cli_segment_all(tiny_artifact, scene, tmp_path):
    from samexport.cli import app

    image_file, masks_json, overlay_png = tmp_path / "scene.png", tmp_path / "masks.json", tmp_path / "overlay.png"
    Image.fromarray(scene).save(image_file)
    options = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    result = CliRunner().invoke(app, ["segment-all", str(tiny_artifact), str(image_file), "--output", str(masks_json),
                                      "--overlay", str(overlay_png), "--rle", "coco", *options])
    assert result.exit_code == 0, result.output
    assert f"wrote {masks_json}" in result.output and f"wrote {overlay_png}" in result.output

    document = json.loads(masks_json.read_text())
    assert document["image"] == {"file_name": "scene.png", "height": 240, "width": 360}
    expected = AutomaticMaskGenerator(SamPredictor(tiny_artifact), points_per_side=2, pred_iou_thresh=0,
                                      stability_score_thresh=0).generate(scene)
    from pycocotools import mask as mask_utils

    assert len(document["annotations"]) == len(expected) > 0
    for i, (annotation, record) in enumerate(zip(document["annotations"], expected)):
        assert annotation["id"] == i and annotation["bbox"] == record["bbox"]
        segmentation = annotation["segmentation"]
        decoded = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), record["segmentation"])
    overlay = np.array(Image.open(overlay_png))
    assert overlay.shape == scene.shape and (overlay != scene).any(axis=-1).mean() > 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rle", "png"], "--rle must be one of"),
        (["--pred-iou-thresh", "3"], "pred_iou_thresh must be in"),
    ],
)
def test_cli_segment_all_errors(args, message, tiny_artifact, scene, tmp_path):
    from samexport.cli import app

    image_file = tmp_path / "scene.png"
    Image.fromarray(scene).save(image_file)
    result = CliRunner().invoke(app, ["segment-all", str(tiny_artifact), str(image_file), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
