"""Meta's notebooks and ``scripts/amg.py``, retold: the same calls on samexport and on
``segment_anything`` with the same random weights, and equal outputs.

Each test follows one client's sequence of calls (written here in our own words); the only line
that differs between the two sides is the construction of the model, as in the README's
migration section. Grid sizes are smaller than the notebooks' 32x32 so the official torch model
runs in seconds on CPU; every other argument is the client's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import segment_anything
import torch
from support.official import (
    EagerSession,
    SyntheticBackend,
    assert_outputs_match,
    assert_same_masks,
    synthetic_official,
)

import samexport
from samexport.testing import make_image, mask_iou

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def both(tiny_artifact, tiny_official):
    """(samexport module, its model), (segment_anything module, its model): the changed line."""
    ours = samexport.sam_model_registry["tiny"](checkpoint=str(tiny_artifact))
    ours.to(device="cpu")
    tiny_official.to(device="cpu")
    return (samexport, ours), (segment_anything, tiny_official)


@pytest.fixture(scope="module")
def truck() -> np.ndarray:
    return make_image(600, 900, seed=21)


def predictor_notebook(package, sam, image) -> dict:
    """predictor_example.ipynb: points, refinement with the best logits, a box, box + point,
    batched boxes through predict_torch, and the end-to-end batched model call."""
    out = {}
    predictor = package.SamPredictor(sam)
    predictor.set_image(image)
    input_point, input_label = np.array([[500, 375]]), np.array([1])
    out["point"] = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
    masks, scores, logits = out["point"]
    mask_input = logits[np.argmax(scores), :, :]
    out["refined"] = predictor.predict(
        point_coords=np.array([[500, 375], [700, 200]]), point_labels=np.array([1, 1]),
        mask_input=mask_input[None, :, :], multimask_output=False,
    )
    input_box = np.array([425, 300, 700, 575])
    out["box"] = predictor.predict(point_coords=None, point_labels=None, box=input_box[None, :], multimask_output=False)
    out["box+point"] = predictor.predict(
        point_coords=np.array([[575, 450]]), point_labels=np.array([0]), box=input_box, multimask_output=False
    )
    input_boxes = torch.tensor([[75, 275, 700, 550], [425, 300, 700, 575], [500, 200, 600, 500], [10, 10, 300, 300]],
                               device=predictor.device)
    transformed = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
    with torch.no_grad():
        masks, scores, logits = predictor.predict_torch(
            point_coords=None, point_labels=None, boxes=transformed, multimask_output=False
        )
    assert masks.shape == (4, 1, *image.shape[:2])
    out["batched"] = (np.stack([m.cpu().numpy() for m in masks]), scores, logits)

    # end to end: images resized by the caller, then the model itself
    transform_module = (samexport.compat if package is samexport
                        else segment_anything.utils.transforms)
    resize = transform_module.ResizeLongestSide(sam.image_encoder.img_size)

    def prepare_image(picture, transform, device):
        picture = transform.apply_image(picture)
        return torch.as_tensor(picture, device=device.device).permute(2, 0, 1).contiguous()

    second = image[100:500, 50:350]
    batched_input = [
        {"image": prepare_image(image, resize, sam), "boxes": resize.apply_boxes_torch(input_boxes, image.shape[:2]),
         "original_size": image.shape[:2]},
        {"image": prepare_image(second, resize, sam),
         "boxes": resize.apply_boxes_torch(torch.tensor([[20, 30, 250, 380]], device=sam.device), second.shape[:2]),
         "original_size": second.shape[:2]},
    ]
    with torch.no_grad():
        batched_output = sam(batched_input, multimask_output=False)
    out["sam()"] = [(o["masks"], o["iou_predictions"], o["low_res_logits"]) for o in batched_output]
    return out


@pytest.mark.slow  # ~11 s of CPU
def test_predictor_notebook(both, truck):
    (ours_pkg, ours), (theirs_pkg, theirs) = both
    mine, official = predictor_notebook(ours_pkg, ours, truck), predictor_notebook(theirs_pkg, theirs, truck)
    assert mine.keys() == official.keys()
    for step in mine:
        pairs = zip(mine[step], official[step]) if step == "sam()" else [(mine[step], official[step])]
        for a, b in pairs:
            assert_outputs_match(a, b)


def generator_notebook(package, sam, image, grid: int) -> tuple[list[dict], list[dict]]:
    """automatic_mask_generator_example.ipynb: defaults, then the tuned second generator."""
    mask_generator = package.SamAutomaticMaskGenerator(sam, points_per_side=grid)
    masks = mask_generator.generate(image)
    mask_generator_2 = package.SamAutomaticMaskGenerator(
        model=sam, points_per_side=grid, pred_iou_thresh=0.86, stability_score_thresh=0.92,
        crop_n_layers=1, crop_n_points_downscale_factor=2, min_mask_region_area=100,
    )
    return masks, mask_generator_2.generate(image)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-random", "synthetic"])
def test_generator_notebook(model, both, monkeypatch):
    """On the random weights (which pass the notebook's filters rarely) and on the colour-keyed
    synthetic SAM of test_amg (which gives tens of masks), construction spelled the official way."""
    from support.official import cv2_stand_in

    monkeypatch.setitem(__import__("sys").modules, "cv2", cv2_stand_in())  # official min_mask_region_area
    image = make_image(240, 360, seed=3)
    if model == "synthetic":
        ours, theirs, grid = samexport.SamModel(SyntheticBackend()), synthetic_official(), 12
    else:
        ((_, ours), (_, theirs)), grid = both, 8
    mine = generator_notebook(samexport, ours, image, grid)
    if model == "tiny-random":
        # No mask passes the second generator's filters; the official then fails inside
        # torchvision (box_area of an empty crop-NMS batch), ours returns no masks.
        assert mine[1] == []
        with torch.no_grad(), pytest.raises(IndexError):
            generator_notebook(segment_anything, theirs, image, grid)
        with torch.no_grad():
            official = (segment_anything.SamAutomaticMaskGenerator(theirs, points_per_side=grid).generate(image), [])
    else:
        with torch.no_grad():
            official = generator_notebook(segment_anything, theirs, image, grid)
    for a, b in zip(mine, official):
        assert_same_masks(a, b)
        assert all(r.keys() == o.keys() for r, o in zip(a, b))
    if model == "synthetic":
        assert min(len(official[0]), len(official[1])) >= 5


def amg_script(package, sam, image, output_mode: str, amg_kwargs: dict) -> list[dict]:
    """scripts/amg.py: build, move to the device, generate, and write what write_masks_to_folder
    or the RLE json holds (metadata rows and the segmentations)."""
    _ = sam.to(device="cpu")
    generator = package.SamAutomaticMaskGenerator(sam, output_mode=output_mode, **amg_kwargs)
    masks = generator.generate(image)
    rows = []
    for i, mask_data in enumerate(masks):
        row = [str(i), str(mask_data["area"]), *[str(x) for x in mask_data["bbox"]],
               *[str(x) for x in mask_data["point_coords"][0]], str(mask_data["predicted_iou"]),
               str(mask_data["stability_score"]), *[str(x) for x in mask_data["crop_box"]]]
        rows.append({"row": row, "segmentation": mask_data["segmentation"]})
    return rows


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle"])
def test_amg_script(output_mode, both):
    (_, ours), (_, theirs) = both
    image = make_image(240, 360, seed=3)
    # the script passes only the options given on its command line
    amg_kwargs = {"points_per_side": 4, "pred_iou_thresh": 0.02, "stability_score_thresh": 0.09,
                  "stability_score_offset": 0.05, "box_nms_thresh": 1.0}
    with torch.no_grad():
        official = amg_script(segment_anything, theirs, image, output_mode, amg_kwargs)
    mine = amg_script(samexport, ours, image, output_mode, amg_kwargs)
    assert 10 <= len(official) == len(mine)
    if output_mode == "coco_rle":
        from pycocotools import mask as mask_utils

        json.dumps([r["segmentation"] for r in mine])  # what the script writes
        decode = mask_utils.decode
    else:
        decode = np.asarray
    for a, b in zip(mine, official):  # same order
        assert mask_iou(decode(a["segmentation"]).astype(bool), decode(b["segmentation"]).astype(bool)) >= 0.99
        assert a["row"][2:6] == b["row"][2:6] or np.allclose(
            [float(v) for v in a["row"][2:6]], [float(v) for v in b["row"][2:6]], atol=2
        )
        np.testing.assert_allclose([float(v) for v in a["row"][8:10]], [float(v) for v in b["row"][8:10]], atol=2e-2)


def onnx_notebook(package, sam, session, image) -> list:
    """onnx_model_example.ipynb after the export cell: embedding from the predictor, prompts
    made by hand in the official ONNX interface."""
    predictor = package.SamPredictor(sam)
    predictor.set_image(image)
    image_embedding = predictor.get_image_embedding().cpu().numpy()
    results = []
    input_point, input_label = np.array([[500, 375]]), np.array([1])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs = {
        "image_embeddings": image_embedding, "point_coords": onnx_coord, "point_labels": onnx_label,
        "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32), "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array(image.shape[:2], dtype=np.float32),
    }
    masks, _, low_res_logits = session.run(None, ort_inputs)
    results.append(masks > predictor.model.mask_threshold)
    # refine with the previous low-res logits and a second point
    input_point, input_label = np.array([[500, 375], [700, 200]]), np.array([1, 1])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs.update(point_coords=onnx_coord, point_labels=onnx_label, mask_input=low_res_logits,
                      has_mask_input=np.ones(1, dtype=np.float32))
    masks, _, _ = session.run(None, ort_inputs)
    results.append(masks > predictor.model.mask_threshold)
    # a box and a point
    input_box, input_point, input_label = np.array([425, 300, 700, 575]), np.array([[575, 450]]), np.array([0])
    onnx_coord = np.concatenate([input_point, input_box.reshape(2, 2)], axis=0)[None, :, :]
    onnx_label = np.concatenate([input_label, np.array([2, 3])], axis=0)[None, :].astype(np.float32)
    onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
    ort_inputs.update(point_coords=onnx_coord, point_labels=onnx_label,
                      mask_input=np.zeros((1, 1, 256, 256), dtype=np.float32), has_mask_input=np.zeros(1, dtype=np.float32))
    masks, scores, low_res = session.run(None, ort_inputs)
    results.append(masks > predictor.model.mask_threshold)
    results.append((scores, low_res))
    return results


@pytest.mark.parametrize("size", [(600, 900), (900, 450)], ids=["landscape", "portrait"])
def test_onnx_notebook(size, both, tiny_artifact, tmp_path):
    import onnxruntime

    from samexport.export.official_onnx import export_official_decoder

    (_, ours), (_, theirs) = both
    image = make_image(*size, seed=size[0])
    path = export_official_decoder(tiny_artifact, tmp_path / "sam_onnx_example.onnx", return_single_mask=True)
    session = onnxruntime.InferenceSession(str(path))
    mine = onnx_notebook(samexport, ours, session, image)
    official = onnx_notebook(segment_anything, theirs, EagerSession(theirs, return_single_mask=True), image)
    for a, b in zip(mine[:3], official[:3]):
        assert a.shape == b.shape == (1, 1, *size)
        assert mask_iou(a, b) >= 0.999
    np.testing.assert_allclose(mine[3][0], official[3][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mine[3][1], official[3][1], rtol=0, atol=5e-5)
