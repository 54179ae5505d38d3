"""The compatibility layer piece by piece against ``segment_anything`` (issue 11): transform,
construction, the model view, torch methods, prompts the official accepts, and life without torch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as OfficialPredictor
from segment_anything.utils.transforms import ResizeLongestSide as OfficialTransform
from support.official import assert_outputs_match, predictor_pair

import samexport
from samexport.errors import MissingExtraError, SamExportError
from samexport.resize import ResizeLongestSide
from samexport.testing import make_image

SIZES = [(480, 713), (1500, 2250), (640, 480), (37, 1000), (900, 30), (1, 1)]


@pytest.fixture(scope="module")
def sam(tiny_artifact):
    return samexport.sam_model_registry["tiny"](checkpoint=tiny_artifact)


@pytest.fixture(scope="module")
def pair(sam, tiny_official):
    return predictor_pair(sam, tiny_official)


# -- transform ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_transform_matches_official(size):
    ours, theirs = ResizeLongestSide(1024), OfficialTransform(1024)
    rng = np.random.default_rng(size[0])
    coords = rng.uniform(0, max(size), (3, 5, 2))
    boxes = rng.uniform(0, max(size), (4, 4)).astype(np.float32)
    assert ours.get_preprocess_shape(*size, 1024) == theirs.get_preprocess_shape(*size, 1024)
    for a, b in ((ours.apply_coords(coords, size), theirs.apply_coords(coords, size)),
                 (ours.apply_boxes(boxes, size), theirs.apply_boxes(boxes, size)),
                 (ours.apply_boxes(boxes[0], size), theirs.apply_boxes(boxes[0], size))):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    for a, b in ((ours.apply_coords_torch(torch.from_numpy(coords), size),
                  theirs.apply_coords_torch(torch.from_numpy(coords), size)),
                 (ours.apply_boxes_torch(torch.from_numpy(boxes), size),
                  theirs.apply_boxes_torch(torch.from_numpy(boxes), size))):
        assert a.dtype == b.dtype and torch.equal(a, b)
    if min(size) > 1:
        image = make_image(*size, seed=1)
        np.testing.assert_array_equal(ours.apply_image(image), theirs.apply_image(image))
    # inputs are never modified
    before = coords.copy()
    ours.apply_coords(coords, size)
    np.testing.assert_array_equal(coords, before)


# -- construction ---------------------------------------------------------------------------


def test_registry_and_load(tiny_artifact, sam):
    from samexport import SamAutomaticMaskGenerator, sam_model_registry  # the official names

    assert {"default", "vit_b", "vit_l", "vit_h", "tiny"} <= set(sam_model_registry)
    assert SamAutomaticMaskGenerator is samexport.AutomaticMaskGenerator
    assert sam.variant == "tiny" and sam.artifact_dir == tiny_artifact
    assert sam_model_registry["default"](checkpoint=str(tiny_artifact)).variant == "tiny"
    assert sam_model_registry["tiny"](artifact=tiny_artifact).variant == "tiny"
    assert samexport.load(tiny_artifact).variant == "tiny"
    with pytest.raises(SamExportError, match="built for variant 'tiny', not 'vit_b'"):
        sam_model_registry["vit_b"](checkpoint=tiny_artifact)
    with pytest.raises(KeyError, match="valid keys are default"):
        sam_model_registry["vit_x"]
    with pytest.raises(SamExportError, match="one artifact directory"):
        sam_model_registry["vit_b"]()


def test_checkpoint_files_and_torch_models_are_refused_clearly(tiny_checkpoint, tiny_official, tmp_path):
    with pytest.raises(SamExportError, match=r"samexport build --variant vit_b --checkpoint .*sam_tiny_random\.pth"):
        samexport.sam_model_registry["vit_b"](checkpoint=tiny_checkpoint)
    with pytest.raises(SamExportError, match="not a samexport build"):
        samexport.load(tmp_path)
    for make in (samexport.SamPredictor, samexport.SamAutomaticMaskGenerator, samexport.load):
        with pytest.raises(SamExportError, match="got a torch Sam model.*samexport build"):
            make(tiny_official)
    with pytest.raises(SamExportError, match="SamPredictor takes an artifact directory"):
        samexport.SamPredictor(42)


def test_model_view(sam, pair):
    ours, theirs = pair
    assert sam.to(device="cpu") is sam and sam.to("cuda") is sam and sam.eval() is sam
    assert ours.model is sam
    assert ours.model.mask_threshold == theirs.model.mask_threshold == 0.0
    assert ours.model.image_encoder.img_size == theirs.model.image_encoder.img_size == 1024
    assert ours.model.image_format == theirs.model.image_format
    assert ours.device == theirs.device == torch.device("cpu")
    with pytest.raises(AttributeError, match="exported ONNX/TensorRT graphs"):
        _ = sam.prompt_encoder


def test_generator_accepts_the_official_first_argument(sam, tiny_artifact):
    from samexport import SamAutomaticMaskGenerator

    for generator in (SamAutomaticMaskGenerator(sam), SamAutomaticMaskGenerator(model=sam, points_per_side=4),
                      SamAutomaticMaskGenerator(samexport.SamPredictor(sam)),
                      SamAutomaticMaskGenerator(tiny_artifact), SamAutomaticMaskGenerator(predictor=sam)):
        assert generator.predictor.model.backend is not None
    with pytest.raises(ValueError, match="once"):
        SamAutomaticMaskGenerator()


# -- torch methods and what the official accepts -------------------------------------------


def test_embedding_names(pair):
    ours, theirs = pair
    embedding = ours.get_image_embedding()
    assert isinstance(embedding, torch.Tensor) and embedding.dtype == theirs.get_image_embedding().dtype
    assert isinstance(ours.features, torch.Tensor) and isinstance(ours.embedding, np.ndarray)
    np.testing.assert_array_equal(embedding.cpu().numpy(), ours.embedding)
    np.testing.assert_allclose(ours.embedding, theirs.get_image_embedding().numpy(), rtol=0,
                               atol=2e-5 * float(theirs.features.abs().max()))


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param({}, id="no-prompt"),
        pytest.param(dict(multimask_output=False, return_logits=True), id="no-prompt-logits"),
        pytest.param(dict(mask_input="random"), id="mask-only"),
        pytest.param(dict(mask_input="random", multimask_output=False), id="mask-only-single"),
        pytest.param(dict(box=np.array([[40, 30, 300, 250]]), mask_input="random"), id="box-and-mask"),
        pytest.param(dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1.0], np.float32)),
                     id="float-labels"),
    ],
)
def test_predict_accepts_what_the_official_accepts(pair, prompt):
    ours, theirs = pair
    if prompt.get("mask_input") == "random":
        prompt = {**prompt, "mask_input": (np.random.default_rng(3).standard_normal((1, 256, 256)) * 3).astype(np.float32)}
    assert_outputs_match(ours.predict(**prompt), theirs.predict(**prompt), prompt.get("return_logits", False))


def test_predict_torch_matches_official(pair):
    ours, theirs = pair
    rng = np.random.default_rng(5)
    coords = torch.from_numpy(rng.uniform(0, 1024, (6, 3, 2)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 2, (6, 3))).to(torch.int)
    boxes = torch.tensor(np.sort(rng.uniform(0, 680, (6, 2, 2)), axis=1).reshape(6, 4), dtype=torch.float)
    masks_in = torch.from_numpy((rng.standard_normal((6, 1, 256, 256)) * 3).astype(np.float32))
    calls = [
        dict(point_coords=coords, point_labels=labels),
        dict(point_coords=None, point_labels=None, boxes=boxes, multimask_output=False),
        dict(point_coords=coords, point_labels=labels, boxes=boxes, mask_input=masks_in, return_logits=True),
        dict(point_coords=None, point_labels=None, mask_input=masks_in),
    ]
    for call in calls:
        mine = ours.predict_torch(**call)
        with torch.no_grad():
            official = theirs.predict_torch(**call)
        assert all(isinstance(t, torch.Tensor) and t.device == official[0].device for t in mine)
        assert_outputs_match(mine, official, call.get("return_logits", False))
    # torch semantics downstream: squeeze of a non-1 axis is a no-op, .cpu().numpy() works
    masks = ours.predict_torch(coords, labels)[0]
    assert masks[:, 1].squeeze(1).shape == masks[:, 1].shape and masks.cpu().numpy().dtype == bool


def test_set_torch_image_and_float_images(sam, tiny_official):
    ours, theirs = samexport.SamPredictor(sam), OfficialPredictor(tiny_official)
    image = make_image(333, 500, seed=11)
    resized = torch.as_tensor(theirs.transform.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    ours.set_torch_image(resized, image.shape[:2])
    with torch.no_grad():
        theirs.set_torch_image(resized, image.shape[:2])
    assert ours.input_size == theirs.input_size and ours.original_size == theirs.original_size
    np.testing.assert_allclose(ours.embedding, theirs.features.numpy(), rtol=0, atol=2e-5 * float(theirs.features.abs().max()))
    with pytest.raises(ValueError, match="long side 1024"):
        ours.set_torch_image(resized[..., :500], image.shape[:2])

    floats = image.astype(np.float32) / 255  # as the official: x * 255 truncated to uint8
    ours.set_image(floats)
    theirs.set_image(floats)
    np.testing.assert_allclose(ours.embedding, theirs.features.numpy(), rtol=0, atol=2e-5 * float(theirs.features.abs().max()))
    again = samexport.SamPredictor(sam)
    again.set_image((floats * 255).astype(np.uint8))
    np.testing.assert_array_equal(again.embedding, ours.embedding)


def test_cached_embedding_can_be_assigned(pair, sam):
    """Client code caches ``features`` (torch) and assigns it back to another predictor."""
    ours, _ = pair
    other = samexport.SamPredictor(sam)
    other.set_image(make_image(120, 90))
    other.features = ours.get_image_embedding().clone()
    other.original_size, other.input_size = ours.original_size, ours.input_size
    box = np.array([20, 30, 200, 220])
    for a, b in zip(other.predict(box=box), ours.predict(box=box)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="features must be a real array of shape 1x256x64x64"):
        other.features = torch.zeros(1, 256, 32, 32)


def test_sam_forward_matches_official(sam, tiny_official):
    images = [make_image(240, 360, seed=1), make_image(500, 200, seed=2)]
    boxes = [torch.tensor([[10, 20, 200, 200], [50, 10, 120, 90]], dtype=torch.float), torch.tensor([[5, 5, 150, 400]], dtype=torch.float)]

    def batched(model, transform):
        return [
            {"image": torch.as_tensor(transform.apply_image(im)).permute(2, 0, 1).contiguous(),
             "boxes": transform.apply_boxes_torch(b, im.shape[:2]), "original_size": im.shape[:2]}
            for im, b in zip(images, boxes)
        ]

    mine = sam(batched(sam, ResizeLongestSide(sam.image_encoder.img_size)), multimask_output=False)
    with torch.no_grad():
        official = tiny_official(batched(tiny_official, OfficialTransform(1024)), multimask_output=False)
    for a, b in zip(mine, official):
        assert a.keys() == b.keys()
        assert_outputs_match((a["masks"], a["iou_predictions"], a["low_res_logits"]),
                              (b["masks"], b["iou_predictions"], b["low_res_logits"]))


# -- without torch ------------------------------------------------------------------------


def test_without_torch_numpy_works_and_torch_names_say_what_to_install(tiny_artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    predictor = samexport.SamPredictor(samexport.sam_model_registry["tiny"](checkpoint=tiny_artifact))
    image = make_image(200, 300)
    predictor.set_image(image)
    masks, _scores, _ = predictor.predict(point_coords=np.array([[50, 60]]), point_labels=np.array([1]))
    assert masks.shape == (3, 200, 300) and predictor.embedding.shape == (1, 256, 64, 64)
    assert predictor.transform.apply_boxes(np.array([0, 0, 300, 200]), (200, 300)).tolist() == [[0, 0, 1024, 683]]
    for call in (predictor.get_image_embedding, lambda: predictor.features, lambda: predictor.device,
                 lambda: predictor.predict_torch(None, None),
                 lambda: predictor.transform.apply_boxes_torch(np.zeros(4), (10, 10))):
        with pytest.raises(MissingExtraError, match=r"pip install 'samexport\[torch\]'"):
            call()
    with pytest.raises(MissingExtraError, match="use SamPredictor.embedding for NumPy"):
        predictor.get_image_embedding()
