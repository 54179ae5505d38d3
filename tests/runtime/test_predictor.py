"""SamPredictor on ONNX Runtime against the official ``segment_anything.SamPredictor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as OfficialPredictor
from support import prompt_suite

from samexport.errors import InvalidInputError, SamExportError
from samexport.runtime.predictor import SamPredictor
from samexport.testing import make_image, mask_iou

# (height, width): landscape, portrait, square, extreme strips, and a large photo-sized image.
SIZES = [(480, 713), (1500, 2250), (640, 480), (1024, 1024), (37, 1000), (900, 30)]


@pytest.fixture(scope="module")
def predictor(tiny_artifact):
    return SamPredictor(tiny_artifact)


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_matches_official_predictor(predictor, tiny_official, size):
    image = make_image(*size, seed=size[0])
    official = OfficialPredictor(tiny_official)
    official.set_image(image)
    predictor.set_image(image)

    emb, emb_ref = predictor.embedding, official.get_image_embedding().numpy()
    assert np.abs(emb - emb_ref).max() <= 2e-5 * np.abs(emb_ref).max()
    assert predictor.original_size == official.original_size
    assert predictor.input_size == official.input_size

    for prompt in prompt_suite(*size, np.random.default_rng(size[1])):
        masks, scores, low_res = predictor.predict(**prompt)
        masks_ref, scores_ref, low_res_ref = official.predict(**prompt)
        assert masks.shape == masks_ref.shape and masks.dtype == masks_ref.dtype
        assert np.abs(scores - scores_ref).max() <= 1e-5
        assert np.abs(low_res - low_res_ref).max() <= 5e-5
        if prompt.get("return_logits"):
            assert np.abs(masks - masks_ref).max() <= 5e-5
        else:
            assert min(mask_iou(a, b) for a, b in zip(masks, masks_ref)) >= 0.999


def test_predict_batch_matches_official_predict_torch(predictor, tiny_official):
    image = make_image(600, 800, seed=3)
    official = OfficialPredictor(tiny_official)
    official.set_image(image)
    predictor.set_image(image)
    rng = np.random.default_rng(4)
    boxes = np.sort(rng.uniform(0, 600, (16, 2, 2)), axis=1).reshape(16, 4).astype(np.float32)
    coords = rng.uniform(0, 600, (16, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (16, 2)).astype(np.float32)

    masks, scores, low_res = predictor.predict_batch(coords, labels, boxes, multimask_output=True)
    t = official.transform
    with torch.no_grad():
        masks_ref, scores_ref, low_res_ref = official.predict_torch(
            torch.from_numpy(t.apply_coords(coords, official.original_size)),
            torch.from_numpy(labels),
            torch.from_numpy(t.apply_boxes(boxes, official.original_size)),
            multimask_output=True,
        )
    assert masks.shape == (16, 3, 600, 800) and scores.shape == (16, 3) and low_res.shape == (16, 3, 256, 256)
    assert np.abs(scores - scores_ref.numpy()).max() <= 1e-5
    assert np.abs(low_res - low_res_ref.numpy()).max() <= 5e-5
    ious = [mask_iou(a, b) for a, b in zip(masks.reshape(-1, 600, 800), masks_ref.numpy().reshape(-1, 600, 800))]
    assert min(ious) >= 0.999

    # and one call per box gives the same answer as the batch
    for i in (0, 7, 15):
        single = predictor.predict(coords[i], labels[i], boxes[i])
        np.testing.assert_allclose(single[1], scores[i], rtol=0, atol=1e-6)
        assert mask_iou(single[0], masks[i]) >= 0.9999


def test_bgr_input_equals_rgb(predictor):
    image = make_image(300, 400, seed=9)
    predictor.set_image(image)
    rgb = predictor.embedding.copy()
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(predictor.embedding, rgb)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(point_coords=np.array([[1.0, 2.0]])), ValueError, "point_labels must be given"),
        (dict(point_labels=np.array([1])), ValueError, "point_coords and point_labels"),
        (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), ValueError, "point_coords must be"),
        (dict(point_coords=np.zeros((2, 2)), point_labels=np.array([1])), ValueError, "point_labels shape"),
        (dict(box=np.array([1.0, 2.0, 3.0])), ValueError, "box must be"),
        (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), ValueError, "point_coords contains NaN"),
        (dict(point_coords=np.array([["a", "b"]]), point_labels=np.array([1])), ValueError, "point_coords must be a real array"),
        (dict(box=np.array([1, 2, 3, 4]), mask_input=np.zeros((256, 256))), ValueError, "mask_input must be"),
    ],
)
def test_bad_prompts(predictor, kwargs, error, match):
    predictor.set_image(make_image(100, 100))
    with pytest.raises(error, match=match):
        predictor.predict(**kwargs)


@pytest.mark.parametrize("bad", [7, 0.5, -2, 4])
def test_point_labels_outside_the_official_set_are_refused(predictor, bad):
    """segment_anything's decoder gives meaning to labels -1 (padding) and 0..3 only; any other
    value would silently lose its label embedding."""
    predictor.set_image(make_image(100, 100))
    match = f"point_labels must be 1 .*; got {bad:g}"
    with pytest.raises(InvalidInputError, match=match):
        predictor.predict(np.array([[10.0, 20.0], [30, 40]]), np.array([1, bad]))
    with pytest.raises(ValueError, match=match):
        predictor.predict_batch(np.zeros((2, 1, 2)), np.array([[1], [bad]]), np.zeros((2, 4)))
    with pytest.raises(SamExportError, match=match):
        predictor.predict_torch(torch.zeros(1, 1, 2), torch.tensor([[float(bad)]]))


def test_official_labels_mean_what_they_mean_upstream(predictor, tiny_official):
    """-1 (padding) as segment_anything's SamPredictor reads it; 2 / 3 (box corners given as
    points) as its ONNX decoder (``SamOnnxModel``) reads them."""
    from segment_anything.utils.onnx import SamOnnxModel
    from segment_anything.utils.transforms import ResizeLongestSide

    image = make_image(100, 120, seed=4)
    predictor.set_image(image)
    official = OfficialPredictor(tiny_official)
    official.set_image(image)
    coords, labels = np.array([[40.0, 50.0], [70, 20]]), np.array([1, -1])
    ours, ref = predictor.predict(coords, labels), official.predict(coords, labels)
    assert np.abs(ours[1] - ref[1]).max() <= 1e-5 and np.abs(ours[2] - ref[2]).max() <= 5e-5

    corners = np.array([[10.0, 20.0], [80, 90]])
    low_res, iou = predictor.decode_low_res(corners[None], np.array([[2, 3]]))
    onnx_model = SamOnnxModel(tiny_official, return_single_mask=False)
    frame = ResizeLongestSide(1024).apply_coords(np.concatenate([corners, [[0, 0]]]), (100, 120))
    frame[2] = 0  # the padding point the predictor appends, at (0, 0) in the 1024 frame
    _, iou_ref, low_res_ref = onnx_model(
        torch.from_numpy(predictor.embedding), torch.tensor(frame[None], dtype=torch.float32),
        torch.tensor([[2.0, 3.0, -1.0]]), torch.zeros(1, 1, 256, 256), torch.zeros(1),
        torch.tensor([100.0, 120.0]),
    )
    assert np.abs(iou - iou_ref.numpy()).max() <= 1e-5
    assert np.abs(low_res - low_res_ref.numpy()).max() <= 5e-5


def test_a_prompt_is_checked_once(predictor, monkeypatch):
    """``predict`` checks each prompt array once, at the door; what it hands down (the batch of
    one, the mapping into the 1024 frame) is not checked again. Counted as calls of the one array
    check, wherever it is called from; the masks are those of the same prompt given as a batch."""
    import samexport.runtime.prompts
    import samexport.transforms
    import samexport.validate

    predictor.set_image(make_image(120, 160, seed=3))
    box, coords = np.array([10.0, 20.0, 90.0, 100.0]), np.array([[40.0, 50.0]])
    expected = predictor.predict_batch(coords[None], np.ones((1, 1)), box[None])
    checked: list[str] = []
    real = samexport.validate.real_array

    def counting(name, value, shape, **kwargs):
        checked.append(name)
        return real(name, value, shape, **kwargs)

    for module in (samexport.runtime.prompts, samexport.transforms):
        monkeypatch.setattr(module, "real_array", counting)
    masks, scores, _low_res = predictor.predict(coords, np.ones(1), box)
    assert sorted(checked) == ["box", "point_coords", "point_labels"]
    checked.clear()
    predictor.predict_batch(coords[None], np.ones((1, 1)), box[None])
    assert sorted(checked) == ["boxes", "point_coords", "point_labels"]
    np.testing.assert_array_equal(masks, expected[0][0])
    np.testing.assert_array_equal(scores, expected[1][0])


def test_bad_batches(predictor):
    predictor.set_image(make_image(100, 100))
    with pytest.raises(ValueError, match="point_coords has 2 prompts but boxes has 3"):
        predictor.predict_batch(np.zeros((2, 1, 2)), np.ones((2, 1)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mask_input has 1 prompts but the points/boxes have 3"):
        predictor.predict_batch(boxes=np.zeros((3, 4)), mask_input=np.zeros((1, 1, 256, 256)))
    with pytest.raises(ValueError, match="prompt batch is empty"):
        predictor.predict_batch(boxes=np.zeros((0, 4)))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
        (np.full((10, 10, 3), 2.0, np.float32), r"float image must hold values in \[0, 1\]"),
        (np.zeros((10, 10, 3), np.int32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty|positive"),
    ],
)
def test_bad_images(predictor, image, match):
    with pytest.raises(ValueError, match=match):
        predictor.set_image(image)


def test_predict_before_set_image(predictor):
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=np.array([0, 0, 5, 5]))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()


def test_bad_format_and_missing_artifact(predictor, tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(make_image(10, 10), image_format="RGBA")
    with pytest.raises(SamExportError, match="not found"):
        SamPredictor(tmp_path / "nothing")
    with pytest.raises(SamExportError, match="no manifest.json"):
        SamPredictor(tmp_path)
