"""samexport.transforms against the official segment_anything preprocessing and postprocessing.

The oracle is the official package (``segment-anything==1.0``): ``ResizeLongestSide`` and the
``Sam.preprocess`` / ``Sam.postprocess_masks`` methods, called unbound on a stand-in object that
has only the attributes they read (``pixel_mean``, ``pixel_std``, ``image_encoder.img_size``), so
no model is built.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from segment_anything.modeling import Sam  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from samexport import transforms  # noqa: E402
from samexport.constants import (  # noqa: E402
    IMAGE_SIZE,
    LOW_RES_MASK_SIZE,
    MASK_THRESHOLD,
    PIXEL_MEAN,
    PIXEL_STD,
)
from samexport.transforms import (  # noqa: E402
    postprocess_masks,
    preprocess,
    preprocess_shape,
    resize_image,
    transform_boxes,
    transform_coords,
)

# (H, W) of original images: landscape, portrait, large, square, extreme strips, a single pixel.
SIZES = [(480, 640), (640, 480), (1500, 2250), (1024, 1024), (37, 1000), (2000, 30), (1, 1)]
OFFICIAL = ResizeLongestSide(IMAGE_SIZE)


def _size_id(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@pytest.fixture(scope="module")
def official_sam() -> SimpleNamespace:
    """The attributes ``Sam.preprocess`` / ``Sam.postprocess_masks`` read, built as ``Sam`` does."""
    return SimpleNamespace(
        pixel_mean=torch.Tensor(PIXEL_MEAN).view(-1, 1, 1),
        pixel_std=torch.Tensor(PIXEL_STD).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=IMAGE_SIZE),
    )


def _image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_constants_match_official_defaults() -> None:
    params = inspect.signature(Sam.__init__).parameters
    assert tuple(params["pixel_mean"].default) == PIXEL_MEAN
    assert tuple(params["pixel_std"].default) == PIXEL_STD
    assert Sam.mask_threshold == MASK_THRESHOLD


def test_module_does_not_import_torch() -> None:
    code = "import sys, samexport.transforms; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    "size",
    SIZES + [(3000, 7), (7, 3000), (683, 1024), (999, 1001), (1025, 3), (2048, 2047)],
    ids=_size_id,
)
def test_preprocess_shape_matches_official(size: tuple[int, int]) -> None:
    assert preprocess_shape(*size) == OFFICIAL.get_preprocess_shape(*size, IMAGE_SIZE)
    assert preprocess_shape(*size, long_side=512) == OFFICIAL.get_preprocess_shape(*size, 512)


def test_preprocess_shape_never_returns_zero() -> None:
    # The official rounds this short side to 0 (and then cannot resize the image).
    assert OFFICIAL.get_preprocess_shape(1, 5000, IMAGE_SIZE) == (0, 1024)
    assert preprocess_shape(1, 5000) == (1, 1024)
    assert resize_image(_image((1, 5000))).shape == (1, 1024, 3)


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_resize_image_is_byte_exact(size: tuple[int, int]) -> None:
    image = _image(size)
    ours = resize_image(image)
    official = OFFICIAL.apply_image(image)
    assert ours.dtype == np.uint8
    assert ours.shape == (*preprocess_shape(*size), 3)
    np.testing.assert_array_equal(ours, official)


def test_resize_image_accepts_non_contiguous_views() -> None:
    image = _image((300, 400))
    view = image[::-1, ::2]  # what SamPredictor's BGR->RGB flip and similar slicing produce
    np.testing.assert_array_equal(resize_image(view), OFFICIAL.apply_image(view))


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_preprocess_matches_official(size: tuple[int, int], official_sam: SimpleNamespace) -> None:
    image = _image(size, seed=1)
    ours = preprocess(image)
    # As SamPredictor.set_image: apply_image, HWC -> 1xCxHxW, then Sam.preprocess.
    resized = torch.as_tensor(OFFICIAL.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    official = Sam.preprocess(official_sam, resized).numpy()
    assert ours.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert ours.dtype == np.float32
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, official)  # same float32 operations, bit for bit
    h, w = preprocess_shape(*size)
    assert not ours[..., h:, :].any() and not ours[..., :, w:].any()  # zero padding


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_transform_coords_matches_official(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 1, size=(5, 3, 2)) * np.array([size[1], size[0]])
    before = coords.copy()
    ours = transform_coords(coords, size)
    official = OFFICIAL.apply_coords(coords, size)
    assert ours.dtype == np.float32 and ours.shape == coords.shape
    np.testing.assert_array_equal(ours, official.astype(np.float32))  # as SamPredictor casts
    np.testing.assert_array_equal(coords, before)  # input untouched


def test_transform_coords_accepts_ints_and_lists() -> None:
    size = (480, 640)
    points = [[10, 20], [639, 479]]
    expected = OFFICIAL.apply_coords(np.array(points), size).astype(np.float32)
    np.testing.assert_array_equal(transform_coords(points, size), expected)
    np.testing.assert_array_equal(transform_coords(np.array(points, np.int32), size), expected)


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_transform_boxes_matches_official(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    boxes = np.sort(rng.uniform(0, 1, size=(6, 2, 2)) * np.array([size[1], size[0]]), axis=1)
    boxes = boxes.reshape(6, 4)
    ours = transform_boxes(boxes, size)
    official = OFFICIAL.apply_boxes(boxes, size).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == (6, 4)
    np.testing.assert_array_equal(ours, official)
    # A single box keeps its shape (the official returns 1x4).
    np.testing.assert_array_equal(transform_boxes(boxes[0], size), official[0])


@pytest.mark.parametrize(("out_size", "in_size"), [(1024, 256), (1500, 683), (2250, 1024),
                                                   (480, 768), (37, 18), (30, 15), (1, 1024),
                                                   (1024, 1), (7, 3), (1024, 1024)])
def test_interpolation_taps_equal_torch(out_size: int, in_size: int) -> None:
    # Interpolating the identity along one axis yields torch's weight matrix exactly.
    eye = torch.eye(in_size, dtype=torch.float32)[None, None]
    torch_weights = torch.nn.functional.interpolate(
        eye, (in_size, out_size), mode="bilinear", align_corners=False
    )[0, 0].T.numpy()
    index0, index1, lambda0, lambda1 = transforms._linear_taps(out_size, in_size)
    assert lambda0.dtype == lambda1.dtype == np.float32
    ours = np.zeros((out_size, in_size), np.float32)
    np.add.at(ours, (np.arange(out_size), index0), lambda0)
    np.add.at(ours, (np.arange(out_size), index1), lambda1)
    np.testing.assert_array_equal(ours, torch_weights)


def test_chain_weights_equal_product_of_torch_weights() -> None:
    def torch_weights(out_size: int, in_size: int) -> np.ndarray:
        eye = torch.eye(in_size, dtype=torch.float32)[None, None]
        resized = torch.nn.functional.interpolate(
            eye, (in_size, out_size), mode="bilinear", align_corners=False
        )
        return resized[0, 0].T.double().numpy()

    for original, resized in [(1500, 683), (2250, 1024), (480, 768), (30, 15), (1, 1)]:
        expected = torch_weights(original, resized) @ torch_weights(IMAGE_SIZE, 256)[:resized]
        np.testing.assert_allclose(
            transforms.chain_weights(original, resized), expected, rtol=0, atol=1e-15
        )


def _official_postprocess(official_sam, logits: np.ndarray, input_size, original_size):
    return Sam.postprocess_masks(official_sam, torch.from_numpy(logits), input_size, original_size)


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
def test_postprocess_masks_matches_official(
    size: tuple[int, int], official_sam: SimpleNamespace
) -> None:
    rng = np.random.default_rng(4)
    # Uncorrelated logits are the hardest case for rounding; real logits are smooth.
    logits = (rng.standard_normal((1, 2, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)) * 10).astype(
        np.float32
    )
    input_size = preprocess_shape(*size)
    ours = postprocess_masks(logits, input_size, size)
    official = _official_postprocess(official_sam, logits, input_size, size).numpy()
    assert ours.dtype == np.float32 and ours.shape == (1, 2, *size)
    # Same interpolation weights; only the float32 summation order differs (measured <= 2.4e-7).
    assert np.abs(ours - official).max() <= 1e-6 * np.abs(logits).max()
    agree = ((ours > MASK_THRESHOLD) == (official > MASK_THRESHOLD)).mean()
    assert agree >= 0.9999


@pytest.mark.parametrize("leading", [(), (3,), (2, 3), (0,), (1, 0, 2)])
def test_postprocess_masks_leading_dims(leading: tuple[int, ...], official_sam) -> None:
    size, input_size = (480, 640), (768, 1024)
    logits = np.random.default_rng(6).standard_normal((*leading, 256, 256)).astype(np.float32)
    ours = postprocess_masks(logits, input_size, size)
    assert ours.shape == (*leading, *size) and ours.dtype == np.float32
    if ours.size:
        official = _official_postprocess(official_sam, logits.reshape(1, -1, 256, 256),
                                         input_size, size).numpy()
        np.testing.assert_allclose(ours.reshape(official.shape), official, rtol=0, atol=1e-5)


def test_postprocess_masks_accepts_float64_and_views(official_sam) -> None:
    size, input_size = (640, 480), (1024, 768)
    logits = np.random.default_rng(7).standard_normal((2, 4, 256, 256))
    view = logits[:, ::2]
    ours = postprocess_masks(view, input_size, size)
    official = _official_postprocess(official_sam, np.ascontiguousarray(view, np.float32),
                                     input_size, size).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10), np.uint8), "image must have shape HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "image must have shape HxWx3"),
        (np.zeros((1, 10, 10, 3), np.uint8), "image must have shape HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "image must have dtype uint8"),
        (np.zeros((0, 10, 3), np.uint8), "image must not be empty"),
        (np.zeros((10, 0, 3), np.uint8), "image must not be empty"),
        ([[[0, 0, 0]]], "image must be a numpy.ndarray"),
    ],
)
def test_bad_images_raise(image, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resize_image(image)
    with pytest.raises(ValueError, match=match):
        preprocess(image)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10), "height must be positive"),
        ((10, -1), "width must be positive"),
        ((10.0, 10), "height must be an int"),
        ((10, 10, 0), "long_side must be positive"),
        ((True, 10), "height must be an int"),
    ],
)
def test_bad_preprocess_shape_raises(args, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess_shape(*args)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: transform_coords(np.zeros((3, 3)), (10, 10)), r"coords must be a real array of shape \.\.\.x2"),
        (lambda: transform_coords(np.zeros(()), (10, 10)), r"coords must be a real array of shape \.\.\.x2"),
        (lambda: transform_coords(np.array([["a", "b"]]), (10, 10)), "coords must be a real array"),
        (lambda: transform_coords([[1, 2], [3]], (10, 10)), "coords must be a rectangular"),
        (lambda: transform_coords(np.zeros((1, 2)), (10,)), "original_size must be a pair"),
        (lambda: transform_coords(np.zeros((1, 2)), (0, 10)), r"original_size\[0\] must be pos"),
        (lambda: transform_coords(np.zeros((1, 2)), (10, 2.5)), r"original_size\[1\] must be an"),
        (lambda: transform_coords(np.zeros((1, 2)), None), "original_size must be a pair"),
        (lambda: transform_boxes(np.zeros((2, 2)), (10, 10)), r"boxes must be a real array of shape \.\.\.x4"),
        (lambda: transform_boxes(np.zeros((1, 4), bool), (10, 10)), "boxes must be a real array"),
    ],
)
def test_bad_prompts_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("logits", "input_size", "original_size", "match"),
    [
        (np.zeros((1, 4, 64, 64), np.float32), (10, 10), (10, 10), "low_res_logits must have sh"),
        (np.zeros((256,), np.float32), (10, 10), (10, 10), "low_res_logits must have shape"),
        (np.zeros((256, 256), np.int32), (10, 10), (10, 10), "low_res_logits must be a floating"),
        ([[0.0]], (10, 10), (10, 10), "low_res_logits must be a numpy"),
        (np.zeros((256, 256), np.float32), (1025, 10), (10, 10), "input_size sides must be at"),
        (np.zeros((256, 256), np.float32), (0, 10), (10, 10), r"input_size\[0\] must be positive"),
        (np.zeros((256, 256), np.float32), (10, 10), (10, -5), r"original_size\[1\] must be pos"),
    ],
)
def test_bad_masks_raise(logits, input_size, original_size, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        postprocess_masks(logits, input_size, original_size)


@pytest.mark.parametrize("size", [(1500, 2250), (480, 640), (37, 1000)])
def test_thresholded_postprocess_equals_thresholding_the_logits(size):
    """The block-wise boolean path makes exactly the decisions of thresholding the float result,
    also on a strided view like the predictor's ``logits[:, 1:]``."""
    from samexport.transforms import postprocess_masks, preprocess_shape

    logits = np.random.default_rng(0).standard_normal((2, 4, 256, 256)).astype(np.float32)[:, 1:]
    input_size = preprocess_shape(*size)
    masks = postprocess_masks(logits, input_size, size, threshold=0.0)
    assert masks.dtype == bool and masks.shape == (2, 3, *size)
    np.testing.assert_array_equal(masks, postprocess_masks(logits, input_size, size) > 0.0)
