"""Full-size vit_b: the exported graphs on ONNX Runtime against the official torch predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samexport.runtime.predictor import SamPredictor
from samexport.testing import mask_iou, official_sam

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official(vit_b_checkpoint):
    from segment_anything import SamPredictor as OfficialPredictor

    return OfficialPredictor(official_sam("vit_b", torch.load(vit_b_checkpoint, weights_only=True)))


def test_vit_b_onnxruntime_matches_official(vit_b_artifact, official):
    from skimage import data

    image = data.astronaut()  # 512x512 RGB
    image = np.ascontiguousarray(np.concatenate([image, image[:200]], axis=0))  # 712x512: not square
    predictor = SamPredictor(vit_b_artifact, backend="onnxruntime-cpu")
    predictor.set_image(image)
    official.set_image(image)

    emb, emb_ref = predictor.embedding, official.get_image_embedding().numpy()
    scale = np.abs(emb_ref).max()
    assert np.abs(emb - emb_ref).max() <= 1e-4 * scale, (np.abs(emb - emb_ref).max(), scale)

    prompts = [
        dict(point_coords=np.array([[250, 200]]), point_labels=np.array([1])),
        dict(point_coords=np.array([[250, 200], [100, 600], [400, 50]]), point_labels=np.array([1, 0, 1]),
             multimask_output=False),
        dict(box=np.array([150, 60, 380, 500])),
        dict(box=np.array([150, 60, 380, 500]), point_coords=np.array([[250, 200]]), point_labels=np.array([1])),
    ]
    for prompt in prompts:
        masks, scores, low_res = predictor.predict(**prompt)
        masks_ref, scores_ref, low_res_ref = official.predict(**prompt)
        assert np.abs(scores - scores_ref).max() <= 1e-4
        assert np.abs(low_res - low_res_ref).max() <= 1e-3 * max(1.0, np.abs(low_res_ref).max())
        assert min(mask_iou(a, b) for a, b in zip(masks, masks_ref)) >= 0.99

    # mask refinement with the previous low-res logits, as in the official notebook
    refine = dict(point_coords=np.array([[250, 200]]), point_labels=np.array([1]),
                  mask_input=low_res_ref[np.argmax(scores_ref)][None], multimask_output=False)
    masks, scores, _ = predictor.predict(**refine)
    masks_ref, scores_ref, _ = official.predict(**refine)
    assert np.abs(scores - scores_ref).max() <= 1e-4 and mask_iou(masks[0], masks_ref[0]) >= 0.99
