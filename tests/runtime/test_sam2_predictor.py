"""``samexport.SAM2ImagePredictor`` against the official ``sam2.sam2_image_predictor.SAM2ImagePredictor``.

One random checkpoint (every parameter perturbed, official format) is loaded by the official
``build_sam2`` and by samexport: on ONNX Runtime through the artifact ``samexport build`` makes
(``sam2_tiny_artifact``), on OpenVINO (f32) from the same artifact, and on the PyTorch reference
backend. Both predictors get the same calls,
through the official API, on several aspect ratios: points, boxes, box+point, several points, a
prompt batch, a mask prompt from a previous call, each with multimask on and off, logits and
thresholded masks, ``normalize_coords=False``, and ``set_image_batch`` + ``predict_batch``.
Figures: masks may differ in at most 1e-4 of the pixels, low-res logits (clamped to +-32 as the
official returns them) within 1e-4 x their scale, scores within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import SAM2_OFFICIAL_MISSING

from samexport.errors import InvalidInputError, SamExportError
from samexport.testing import make_image
from samexport.variants import get_sam2_variant

SHAPES = [(600, 900), (1100, 700), (480, 480)]


def _prompts(height: int, width: int) -> dict[str, dict]:
    """The prompt suite in pixels of the original image."""
    point = np.array([[0.4 * width, 0.55 * height]], np.float32)
    box = np.array([0.2 * width, 0.25 * height, 0.7 * width, 0.8 * height], np.float32)
    several = np.array([[0.3 * width, 0.3 * height], [0.6 * width, 0.5 * height], [0.5 * width, 0.8 * height]], np.float32)
    boxes = np.array([[0.1 * width, 0.1 * height, 0.5 * width, 0.6 * height], [0.4 * width, 0.3 * height, 0.9 * width, 0.9 * height]], np.float32)
    return {
        "point": {"point_coords": point, "point_labels": np.array([1])},
        "box": {"box": box},
        "box+point": {"box": box, "point_coords": point, "point_labels": np.array([0])},
        "points": {"point_coords": several, "point_labels": np.array([1, 0, 1])},
        "batch of boxes": {"box": boxes},
        "batch of points": {"point_coords": several[:2, None], "point_labels": np.array([[1], [1]])},
    }


def _close(ours: np.ndarray, theirs: np.ndarray, *, relative: float, what: str) -> None:
    scale = max(1.0, float(np.abs(theirs).max()))
    error = float(np.abs(ours - theirs).max())
    assert error <= relative * scale, f"{what}: max abs error {error:.3g} (reference scale {scale:.3g})"


def _same_outputs(ours, theirs, label: str, *, logits: bool = False) -> None:
    masks, scores, low_res = ours
    masks_o, scores_o, low_res_o = theirs
    assert masks.shape == masks_o.shape and scores.shape == scores_o.shape and low_res.shape == low_res_o.shape, label
    assert masks.dtype == masks_o.dtype == np.float32, label
    if logits:
        _close(masks, masks_o, relative=1e-4, what=f"{label} full-size logits")
    else:
        assert (masks != masks_o).mean() <= 1e-4, f"{label}: masks differ in {(masks != masks_o).sum()} pixels"
    _close(low_res, low_res_o, relative=1e-4, what=f"{label} low-res logits")
    _close(scores, scores_o, relative=1e-5, what=f"{label} scores")
    foreground = (low_res_o > 0).mean(axis=(-2, -1))
    assert ((foreground > 0.01) & (foreground < 0.99)).any(), f"{label}: trivial masks {foreground}"


@pytest.fixture(scope="module")
def official(sam2_tiny_checkpoint):
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    config = get_sam2_variant("sam2.1_hiera_tiny").official_config
    return SAM2ImagePredictor(build_sam2(config, str(sam2_tiny_checkpoint), device="cpu"))


@pytest.fixture(scope="module", params=["onnxruntime-cpu", "openvino:precision=f32", "torch"])
def ours(request, sam2_tiny_checkpoint):
    """samexport's predictor on the built artifact (ONNX Runtime CPU; OpenVINO CPU in f32, the
    same graphs through the same backend seam), or on the PyTorch reference."""
    from samexport import SAM2ImagePredictor

    if request.param.startswith("openvino"):
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samexport[openvino]')")
    if request.param == "torch":
        from samexport.runtime.sam2_torch import Sam2TorchBackend
        from samexport.sam2_checkpoint import load_sam2

        return SAM2ImagePredictor(Sam2TorchBackend(load_sam2(sam2_tiny_checkpoint)))
    return SAM2ImagePredictor(request.getfixturevalue("sam2_tiny_artifact"), backend=request.param)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_predict_equals_official(official, ours, shape):
    _check_predict(official, ours, shape)


@pytest.mark.slow
def test_small_predict_equals_official(tmp_path):
    """sam2.1_hiera_small: its artifact on ONNX Runtime CPU against the official predictor."""
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    from samexport import SAM2ImagePredictor
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    name = "sam2.1_hiera_small"
    checkpoint = save_random_checkpoint(name, tmp_path / f"{name}.pt")
    artifact = build(name, checkpoint=checkpoint, output=tmp_path / "small", parity=False, references=False).artifact_dir
    official = Official(build_sam2(get_sam2_variant(name).official_config, str(checkpoint), device="cpu"))
    _check_predict(official, SAM2ImagePredictor(artifact, backend="onnxruntime-cpu"), SHAPES[1])


def _check_predict(official, ours, shape) -> None:
    height, width = shape
    image = make_image(height, width, seed=5)
    official.set_image(image)
    ours.set_image(image)
    np.testing.assert_allclose(
        ours.get_image_embedding(), official.get_image_embedding().numpy(), rtol=0,
        atol=1e-5 * max(1.0, float(official.get_image_embedding().abs().max())),
    )
    suite = _prompts(height, width)
    _, _, previous = official.predict(**suite["point"], multimask_output=False)
    suite["point+mask"] = {**suite["point"], "mask_input": previous}
    for label, prompt in suite.items():
        for multimask in (True, False):
            theirs = official.predict(**prompt, multimask_output=multimask)
            _same_outputs(ours.predict(**prompt, multimask_output=multimask), theirs, f"{label} multimask={multimask}")
    prompt = suite["box+point"]
    _same_outputs(ours.predict(**prompt, return_logits=True), official.predict(**prompt, return_logits=True), "logits", logits=True)
    unit = {"point_coords": suite["points"]["point_coords"] / [width, height], "point_labels": suite["points"]["point_labels"]}
    _same_outputs(
        ours.predict(**unit, normalize_coords=False), official.predict(**unit, normalize_coords=False), "normalize_coords=False"
    )


@pytest.mark.slow
def test_predict_batch_equals_official(official, ours):
    images = [make_image(*shape, seed=i) for i, shape in enumerate(SHAPES[:2])]
    official.set_image_batch(images)
    ours.set_image_batch(images)
    prompts = [_prompts(*shape) for shape in SHAPES[:2]]
    kwargs = {
        "point_coords_batch": [p["points"]["point_coords"] for p in prompts],
        "point_labels_batch": [p["points"]["point_labels"] for p in prompts],
        "box_batch": [p["box"]["box"] for p in prompts],
    }
    theirs, mine = official.predict_batch(**kwargs, multimask_output=False), ours.predict_batch(**kwargs, multimask_output=False)
    for index in range(len(images)):
        _same_outputs(tuple(m[index] for m in mine), tuple(t[index] for t in theirs), f"image {index}")
    np.testing.assert_allclose(
        ours.get_image_embedding(), official.get_image_embedding().numpy(), rtol=0,
        atol=1e-5 * max(1.0, float(official.get_image_embedding().abs().max())),
    )


def test_refusals_are_clear(sam2_tiny_checkpoint):
    """What the predictor does not do is refused with the reason, before anything runs."""
    from samexport import SAM2ImagePredictor, SamPredictor
    from samexport.runtime.torch_backend import TorchBackend
    from samexport.runtime.sam2_torch import Sam2TorchBackend

    with pytest.raises(SamExportError, match="max_hole_area / max_sprinkle_area .* not implemented"):
        SAM2ImagePredictor(object(), max_hole_area=10)

    class SamGraphs:  # a SAM (v1) backend: its contract is SAM's
        contract = TorchBackend.contract

    with pytest.raises(SamExportError, match="holds a sam model: use samexport.SamPredictor"):
        SAM2ImagePredictor(SamGraphs())

    class Sam2Graphs:
        name, contract = "stub", Sam2TorchBackend.contract

        def encode(self, image):  # SamPredictor's protocol, to reach its check
            raise AssertionError

        decode = encode

    with pytest.raises(SamExportError, match="holds SAM 2.1: use samexport.SAM2ImagePredictor"):
        SamPredictor(Sam2Graphs())
    predictor = SAM2ImagePredictor(Sam2Graphs())
    with pytest.raises(RuntimeError, match="An image must be set"):
        predictor.predict(point_coords=[[1, 2]], point_labels=[1])
    predictor._image_features, predictor._orig_hw, predictor._is_image_set = [()], [(10, 10)], True
    with pytest.raises(SamExportError, match="needs a point or a box: a mask_input alone"):
        predictor.predict(mask_input=np.zeros((1, 256, 256), np.float32))
    with pytest.raises(InvalidInputError, match="mask_input must be"):
        predictor.predict(point_coords=[[1, 2]], point_labels=[1], mask_input=np.zeros((1, 64, 64)))
    with pytest.raises(RuntimeError, match="predict_batch needs images set with .set_image_batch"):
        predictor.predict_batch([np.zeros((1, 2))], [np.ones(1)])
