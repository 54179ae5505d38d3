"""``samexport.SAM2AutomaticMaskGenerator`` against the official
``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` on the same random weights.

One random sam2.1_hiera_tiny checkpoint (every parameter perturbed, official format) is loaded by
the official ``build_sam2`` and by samexport (the PyTorch reference backend, and the ONNX Runtime
artifact ``samexport build`` makes). Random weights decode noise: every mask covers about half the
image and its box is the whole image, so, as in SAM's random-weight test, NMS is off
(``box_nms_thresh=1``) and every mask that passes the filters is compared; the thresholds are set
inside the random model's score ranges (predicted IoU 0.48-0.56, stability at offset 0.05
0.18-0.50) so that both filters drop masks. Same count; each official mask matched to one of
ours with IoU >= 0.99, predicted IoU within 1e-4, stability within 1e-2, same box, point and crop.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import SAM2_OFFICIAL_MISSING
from support.official import SyntheticBackend, assert_same_masks

from samexport import constants as C
from samexport.amg import SAM2AutomaticMaskGenerator
from samexport.amg.measure import MaskMeasurer
from samexport.errors import SamExportError
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.sam2_predictor import SAM2ImagePredictor
from samexport.sam2_transforms import postprocess_sam2_masks, sam2_mask_upsampling
from samexport.testing import make_image
from samexport.variants import get_sam2_variant

PARAMS = {"points_per_side": 6, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.3,
          "stability_score_offset": 0.05, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_image(240, 360, seed=3)


@pytest.fixture(scope="module")
def official_records(sam2_tiny_checkpoint, scene) -> list[dict]:
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official
    from sam2.build_sam import build_sam2

    model = build_sam2(get_sam2_variant("sam2.1_hiera_tiny").official_config, str(sam2_tiny_checkpoint), device="cpu")
    with torch.no_grad():
        return Official(model, **PARAMS).generate(scene)


def _check(ours: list[dict], official: list[dict], points: int) -> None:
    # Both filters had work to do: some of the 3 masks per point were dropped, many were kept.
    assert 10 <= len(official) < 3 * points
    assert_same_masks(ours, official)


@pytest.mark.slow
def test_generator_equals_official_on_torch(sam2_tiny_checkpoint, scene, official_records):
    from samexport.runtime.sam2_torch import Sam2TorchBackend
    from samexport.sam2_checkpoint import load_sam2

    predictor = SAM2ImagePredictor(Sam2TorchBackend(load_sam2(sam2_tiny_checkpoint)))
    _check(SAM2AutomaticMaskGenerator(predictor, **PARAMS).generate(scene), official_records, 36)


@pytest.mark.slow
def test_generator_equals_official_on_artifact(sam2_tiny_artifact, scene, official_records):
    """The artifact directory itself (ONNX Runtime CPU), with prompts split over decoder calls
    (``points_per_batch=7``, a budget of 5 prompts a call): the same masks."""
    from samexport.runtime.decode_budget import budget_for_prompts

    predictor = SAM2ImagePredictor(sam2_tiny_artifact, backend="onnxruntime-cpu", decode_budget_bytes=budget_for_prompts(5))
    assert predictor.max_prompts_per_call == 5
    records = SAM2AutomaticMaskGenerator(predictor, **{**PARAMS, "points_per_batch": 7}).generate(scene)
    _check(records, official_records, 36)


@pytest.mark.parametrize("original_size", [(240, 360), (97, 97), (1500, 700)])
def test_measurer_equals_sam2_upsampling(original_size):
    """The windowed measurement on SAM 2.1's upsampling gives the counts, boxes and masks of the
    whole upsampled logits (``postprocess_sam2_masks``), at another mask threshold too."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    blobs = [4.0 - np.hypot(yy - cy, xx - cx) / r for cy, cx, r in ((60, 80, 6), (200, 30, 20), (128, 128, 60))]
    logits = np.stack([*blobs, rng.normal(0, 2, (256, 256)), np.full((256, 256), -5.0)]).astype(np.float32)
    for threshold in (0.0, 0.5):
        measured = MaskMeasurer(sam2_mask_upsampling(original_size), 1.0, threshold).measure(logits)
        full = postprocess_sam2_masks(logits, original_size)
        np.testing.assert_array_equal(measured.high_counts, (full > threshold + 1).sum(axis=(1, 2)))
        np.testing.assert_array_equal(measured.low_counts, (full > threshold - 1).sum(axis=(1, 2)))
        for i, mask in enumerate(full > threshold):
            np.testing.assert_array_equal(measured.patches[i].paste(original_size), mask)


class _Sam2Runner:
    """A SAM 2.1 backend that is never run: lets the generator's checks be reached."""

    name = "none"
    contract = C.SAM2_GRAPHS


def test_refusals_are_clear():
    predictor = SAM2ImagePredictor(_Sam2Runner())
    with pytest.raises(SamExportError, match="use_m2m=True and multimask_output=False are not implemented"):
        SAM2AutomaticMaskGenerator(predictor, use_m2m=True)
    with pytest.raises(SamExportError, match="use_m2m=True and multimask_output=False are not implemented"):
        SAM2AutomaticMaskGenerator(predictor, multimask_output=False)
    with pytest.raises(SamExportError, match="min_mask_region_area > 0 is not implemented for SAM 2.1"):
        SAM2AutomaticMaskGenerator(predictor, min_mask_region_area=10)
    with pytest.raises(SamExportError, match="use samexport.SamAutomaticMaskGenerator"):
        SAM2AutomaticMaskGenerator(SamPredictor(SyntheticBackend()))


def test_official_defaults():
    """The official SAM 2.1 generator's defaults (not SAM's), SAM 2.1's upsampling."""
    generator = SAM2AutomaticMaskGenerator(_Sam2Runner())
    assert isinstance(generator.predictor, SAM2ImagePredictor)
    assert (generator.pred_iou_thresh, generator.stability_score_thresh, generator.mask_threshold) == (0.8, 0.95, 0.0)
    assert len(generator.point_grids[0]) == 32 * 32
