"""The mask generator on the tiny SAM trained on procedural scenes (``weights/``): a trained model
keeps many masks, so filtering, NMS and crops all decide something, and samexport's generator on
ONNX Runtime must equal the official ``SamAutomaticMaskGenerator`` on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from support.official import assert_same_masks

from samexport.amg import AutomaticMaskGenerator
from samexport.runtime.predictor import SamPredictor
from samexport.testing import mask_iou
from samexport.testing_scenes import HELD_OUT_SEED, make_scene

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

# pycocotools' decode trips NumPy 2's __array__ copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# The committed weights (step 6000) still under-predict their IoU, so the default thresholds
# (0.88, 0.95) keep one mask and (0.7, 0.85) 17; at 0.4 and 0.7 the official generator keeps 61
# masks of the 7-shape scene on the grid and 42 with crops, with 7 and 6 of the shapes among them
# (step 4550, the weights before: 0, 7, 48 and 26).
THRESHOLDS = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.7}
PARAMS = [
    pytest.param(dict(points_per_side=16, **THRESHOLDS), id="grid-16x16"),
    pytest.param(dict(points_per_side=8, crop_n_layers=1, crop_n_points_downscale_factor=2, **THRESHOLDS), id="crops"),
]
MIN_KEPT = 20  # the official generator kept 61 masks on the grid, 42 with crops
MIN_FOUND = 5  # shapes matched by a kept mask with IoU >= 0.7 (7 on the grid, 6 with crops, of 7)


@pytest.mark.slow
@pytest.mark.parametrize("params", PARAMS)
def test_trained_generator_equals_official(params, trained_artifact, trained_official):
    scene = make_scene(HELD_OUT_SEED + 107)  # 7 shapes
    ours = AutomaticMaskGenerator(SamPredictor(trained_artifact, backend="onnxruntime"), **params).generate(scene.image)
    with torch.no_grad():
        official = segment_anything.SamAutomaticMaskGenerator(trained_official, **params).generate(scene.image)
    assert len(official) >= MIN_KEPT, f"the official generator kept {len(official)} masks"
    assert_same_masks(ours, official)
    # The kept masks include the scene's shapes, not only noise.
    found = [max(mask_iou(r["segmentation"], truth) for r in ours) for truth in scene.masks]
    assert sum(iou >= 0.7 for iou in found) >= MIN_FOUND, np.round(found, 2)
