"""Third-party clients of ``segment_anything``, retold: segment-geospatial's ``SamGeo``,
Grounded-SAM's demo and the Label Studio SAM backend. Each function makes the client's calls in
the client's order (in our own words); only the package and the checkpoint argument differ
between the samexport run and the official one, and the outputs must agree."""

from __future__ import annotations

import numpy as np
import pytest
import segment_anything
import torch
from support.official import EagerSession

import samexport
from samexport.testing import make_image, mask_iou

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def builds(tiny_artifact, tiny_checkpoint):
    """(package, checkpoint argument) per side; the official side loads the same random weights."""
    def official(checkpoint):  # segment_anything's registry has no 'tiny' entry: build it the same way
        from samexport.testing import official_sam

        return official_sam("tiny", torch.load(checkpoint, weights_only=True))

    return {
        "samexport": (samexport, samexport.sam_model_registry["tiny"], str(tiny_artifact)),
        "official": (segment_anything, official, str(tiny_checkpoint)),
    }


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return make_image(400, 600, seed=17)


def samgeo(package, registry_entry, checkpoint, image) -> dict:
    """SamGeo: build and move the model, then predict() with points, a single box (NumPy path)
    and several boxes (predict_torch path, then masks[:, 1] and .squeeze(1) as SamGeo does)."""
    sam = registry_entry(checkpoint=checkpoint)
    sam.to(device="cpu")
    predictor = package.SamPredictor(sam)  # SamGeo forwards its sam_kwargs
    predictor.set_image(image, image_format="RGB")
    out = {}
    out["points"] = predictor.predict(np.array([[300, 200], [100, 50]]), np.array([1, 0]), None, None, True, False)
    out["one box"] = predictor.predict(None, None, np.array([[50, 40, 400, 300]]), None, True, False)
    boxes = [[50, 40, 400, 300], [200, 100, 580, 390], [10, 10, 100, 120]]
    input_boxes = predictor.transform.apply_boxes_torch(torch.tensor(boxes, device="cpu"), image.shape[:2])
    point_coords = None
    with torch.no_grad():
        masks, scores, _logits = predictor.predict_torch(
            point_coords=point_coords, point_labels=point_coords, boxes=input_boxes, multimask_output=True
        )
    masks = masks[:, 1, :, :].squeeze(1)  # torch: squeezing a non-1 axis does nothing
    overlay = np.zeros(image.shape[:2], np.uint8)
    for i, (box, mask) in enumerate(zip(boxes, masks)):
        if isinstance(mask, torch.Tensor):
            mask = mask.cpu().numpy().astype(np.uint8)
        overlay += ((mask > 0) * (i + 1)).astype(np.uint8)
    out["overlay"] = overlay
    out["scores"] = scores.cpu().numpy()
    # automatic mode
    generator = package.SamAutomaticMaskGenerator(
        sam, points_per_side=4, pred_iou_thresh=0.02, stability_score_thresh=0.09,
        stability_score_offset=0.05, box_nms_thresh=1.0,
    )
    objects = np.zeros(image.shape[:2])
    records = sorted(generator.generate(image), key=lambda x: x["area"], reverse=True)
    for index, ann in enumerate(records):
        objects[ann["segmentation"]] = len(records) - index
    out["objects"] = objects
    return out


@pytest.mark.slow  # ~12 s of CPU
def test_samgeo(builds, scene):
    with torch.no_grad():
        official = samgeo(*builds["official"], scene)
    mine = samgeo(*builds["samexport"], scene)
    for key in ("points", "one box"):
        (m, s, _), (om, os_, _) = mine[key], official[key]
        assert m.shape == om.shape and min(mask_iou(a, b) for a, b in zip(m, om)) >= 0.999
        np.testing.assert_allclose(s, os_, atol=1e-5)
    assert np.mean(mine["overlay"] != official["overlay"]) < 1e-3
    np.testing.assert_allclose(mine["scores"], official["scores"], atol=1e-5)
    assert np.mean(mine["objects"] != official["objects"]) < 5e-3


def grounded_sam(package, registry_entry, checkpoint, image) -> np.ndarray:
    """Grounded-SAM demo: boxes from a detector (normalised cx, cy, w, h) scaled and turned into
    corners in torch, transformed, decoded with predict_torch, drawn into one label image."""
    device = "cpu"
    predictor = package.SamPredictor(registry_entry(checkpoint=checkpoint).to(device))
    predictor.set_image(image)
    boxes_filt = torch.tensor([[0.4, 0.5, 0.5, 0.6], [0.7, 0.3, 0.3, 0.4], [0.2, 0.8, 0.2, 0.2]])
    H, W = image.shape[:2]
    for i in range(boxes_filt.size(0)):
        boxes_filt[i] = boxes_filt[i] * torch.Tensor([W, H, W, H])
        boxes_filt[i][:2] -= boxes_filt[i][2:] / 2
        boxes_filt[i][2:] += boxes_filt[i][:2]
    boxes_filt = boxes_filt.cpu()
    transformed_boxes = predictor.transform.apply_boxes_torch(boxes_filt, image.shape[:2]).to(device)
    with torch.no_grad():
        masks, _, _ = predictor.predict_torch(
            point_coords=None, point_labels=None, boxes=transformed_boxes.to(device), multimask_output=False
        )
    drawn = [mask.cpu().numpy() for mask in masks]  # show_mask
    assert all(m.shape == (1, H, W) for m in drawn)
    mask_img = torch.zeros(masks.shape[-2:])
    for idx, mask in enumerate(masks):  # save_mask_data
        mask_img[mask.cpu().numpy()[0] == True] = 1 + idx  # noqa: E712 - the client's spelling
    return mask_img.numpy()


def test_grounded_sam(builds, scene):
    with torch.no_grad():
        official = grounded_sam(*builds["official"], scene)
    mine = grounded_sam(*builds["samexport"], scene)
    assert mine.shape == official.shape and np.mean(mine != official) < 1e-3


def label_studio(package, registry_entry, checkpoint, image, ort_session) -> dict:
    """Label Studio SAM backend: SAM mode (predict with float32 prompts, one mask) and ONNX mode
    (embedding cached as NumPy, prompts built in the official ONNX interface)."""
    sam = registry_entry(checkpoint=checkpoint)
    sam.to(device="cpu")
    predictor = package.SamPredictor(sam)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    predictor.set_image(image)
    payload = {"image_shape": image.shape[:2], "image_embedding": predictor.get_image_embedding().cpu().numpy()}
    out = {}
    point_coords, point_labels, input_box = [[300, 200]], [1], [100, 80, 450, 350]
    masks, probs, _ = predictor.predict(
        point_coords=np.array(point_coords, dtype=np.float32), point_labels=np.array(point_labels, dtype=np.float32),
        box=np.array(input_box, dtype=np.float32), multimask_output=False,
    )
    out["sam"] = (masks[0, :, :].astype(np.uint8), float(probs[0]))
    onnx_point_coords = np.array(point_coords, dtype=np.float32)
    onnx_box_coords = np.array(input_box, dtype=np.float32).reshape(2, 2)
    for name, coords, labels in (
        ("onnx points", np.concatenate([onnx_point_coords, np.array([[0.0, 0.0]])], axis=0)[None, :, :],
         np.concatenate([np.array(point_labels, dtype=np.float32), np.array([-1])], axis=0)[None, :]),
        ("onnx points+box", np.concatenate([onnx_point_coords, onnx_box_coords], axis=0)[None, :, :],
         np.concatenate([np.array(point_labels, dtype=np.float32), np.array([2, 3])], axis=0)[None, :]),
    ):
        coords = predictor.transform.apply_coords(coords, payload["image_shape"]).astype(np.float32)
        ort_inputs = {
            "image_embeddings": payload["image_embedding"], "point_coords": coords,
            "point_labels": labels.astype(np.float32), "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
            "orig_im_size": np.array(payload["image_shape"], dtype=np.float32),
        }
        masks, prob, _ = ort_session.run(None, ort_inputs)
        masks = masks > predictor.model.mask_threshold
        out[name] = (masks[0, 0, :, :].astype(np.uint8), float(prob[0][0]))
    return out


def test_label_studio(builds, scene, tiny_artifact, tiny_official, tmp_path):
    import onnxruntime

    from samexport.export.official_onnx import export_official_decoder

    ours_session = onnxruntime.InferenceSession(
        str(export_official_decoder(tiny_artifact, tmp_path / "sam_onnx.onnx", return_single_mask=True))
    )
    with torch.no_grad():
        official = label_studio(*builds["official"], scene, EagerSession(tiny_official, return_single_mask=True))
    mine = label_studio(*builds["samexport"], scene, ours_session)
    for key in official:
        (mask, prob), (ref_mask, ref_prob) = mine[key], official[key]
        assert mask.dtype == ref_mask.dtype and mask_iou(mask > 0, ref_mask > 0) >= 0.999, key
        assert prob == pytest.approx(ref_prob, abs=1e-5), key
