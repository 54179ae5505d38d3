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


@pytest.fixture(scope="module")
def sam2_small_checkpoint(tmp_path_factory):
    from samexport.testing import save_random_checkpoint

    name = "sam2.1_hiera_small"
    return save_random_checkpoint(name, tmp_path_factory.mktemp("sam2_small") / f"{name}.pt")


@pytest.mark.slow
def test_small_predict_equals_official(sam2_small_checkpoint, tmp_path):
    """sam2.1_hiera_small: its artifact on ONNX Runtime CPU against the official predictor."""
    from samexport import SAM2ImagePredictor
    from samexport.pipeline import build

    name = "sam2.1_hiera_small"
    artifact = build(name, checkpoint=sam2_small_checkpoint, output=tmp_path / "small", parity=False, references=False).artifact_dir
    _check_predict(_official(name, sam2_small_checkpoint), SAM2ImagePredictor(artifact, backend="onnxruntime-cpu"), SHAPES[1])


def _official(name: str, checkpoint):
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    return Official(build_sam2(get_sam2_variant(name).official_config, str(checkpoint), device="cpu"))


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
    from samexport.runtime.sam2_torch import Sam2TorchBackend
    from samexport.runtime.torch_backend import TorchBackend

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


# -- fp16 and int8 against the official predictor ---------------------------------------------------

# (variant, precision, --int8-for, backend): each int8 recipe on the runtime it is placed for; the
# TensorRT recipe's graph (INT8 Q/DQ on FP16) on ONNX Runtime CPU, as the build's own check runs it
# (its engines' figures need a GPU: tests/engines/test_sam2_engines.py).
REDUCED = [
    ("sam2.1_hiera_tiny", "int8", "tensorrt", "onnxruntime-cpu"),
    ("sam2.1_hiera_tiny", "int8", "onnxruntime", "onnxruntime-cpu"),
    ("sam2.1_hiera_tiny", "int8", "openvino", "openvino:precision=f32"),
    ("sam2.1_hiera_small", "fp16", None, "onnxruntime-cpu"),
    ("sam2.1_hiera_small", "int8", "onnxruntime", "onnxruntime-cpu"),
    ("sam2.1_hiera_small", "int8", "openvino", "openvino:precision=f32"),
]
REDUCED_SHAPES = [(300, 450), (560, 360), (64, 640)]  # landscape, portrait, a strip


@pytest.fixture(scope="module")
def official_outputs(sam2_tiny_checkpoint, sam2_small_checkpoint):
    """``get(variant, shape)``: the official predictor's features and multimask outputs on the test
    image of that shape for :func:`_prompts` (and a point with the mask of a previous call), each
    computed once for every candidate that is compared with it."""
    checkpoints = {"sam2.1_hiera_tiny": sam2_tiny_checkpoint, "sam2.1_hiera_small": sam2_small_checkpoint}
    found: dict = {}

    def get(name: str, shape):
        if (name, shape) not in found:
            official = _official(name, checkpoints[name])
            official.set_image(make_image(*shape, seed=7))
            features = (official._features["image_embed"], *official._features["high_res_feats"])
            suite = _prompts(*shape)
            _, _, previous = official.predict(**suite["point"], multimask_output=False)
            suite["point+mask"] = {**suite["point"], "mask_input": previous}
            found[(name, shape)] = (
                tuple(f.numpy() for f in features), suite,
                {label: official.predict(**prompt, multimask_output=True) for label, prompt in suite.items()},
            )
        return found[(name, shape)]

    return get


@pytest.fixture(scope="module")
def reduced_artifact(sam2_tiny_checkpoint, sam2_small_checkpoint, tmp_path_factory):
    """``get(variant, precision, target)``: ``samexport build`` of that precision (calibrated on two
    sample photos, none of them the test images), built once; the tiny int8 ones for ONNX Runtime
    and TensorRT with the build's own parity check (recorded in the manifest)."""
    from support import write_calibration_folder

    from samexport.pipeline import build

    checkpoints = {"sam2.1_hiera_tiny": sam2_tiny_checkpoint, "sam2.1_hiera_small": sam2_small_checkpoint}
    root = tmp_path_factory.mktemp("sam2_reduced")
    calib = write_calibration_folder(root / "calib", ("chelsea", "rocket"))
    found: dict = {}

    def get(name: str, precision: str, target: str | None):
        if (name, precision, target) not in found:
            extra = {"calib_dir": calib, "int8_target": target} if precision == "int8" else {}
            quick = (name, precision) == ("sam2.1_hiera_tiny", "int8") and target in ("onnxruntime", "tensorrt")
            found[(name, precision, target)] = build(
                name, checkpoint=checkpoints[name], output=root / f"{name}-{precision}-{target}", precision=precision,
                parity=quick, references=False, **extra,
            )
        return found[(name, precision, target)]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision", "target", "backend"), REDUCED, ids=lambda v: str(v).split(":")[0])
def test_reduced_precision_matches_official(name, precision, target, backend, reduced_artifact, official_outputs):
    """fp16 and int8 artifacts against the official predictor at ``samexport.parity``'s tolerances for
    their precision (the ones SAM's fp16 / int8 builds are held to): the embedding and both
    high-resolution maps (max error over scale, cosine), and for every prompt with multimask on the
    low-res logits (max error over scale), the scores, and the IoU of each full-size mask."""
    from samexport import SAM2ImagePredictor
    from samexport.parity.metrics import ArrayErrors, get_tolerances, mask_ious

    if backend.startswith("openvino"):
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samexport[openvino]')")
    result = reduced_artifact(name, precision, target)
    graphs = result.manifest.graphs
    if precision == "int8":
        encoder = "int8 (Q/DQ) on fp16" if target == "tensorrt" else "int8 (Q/DQ)"  # TensorRT's recipe: Q/DQ on FP16
        assert (graphs.encoder, graphs.decoder, graphs.int8_target, graphs.fp16_encoder) == (
            encoder, "fp16", target, target == "tensorrt"
        )
    if result.manifest.parity is not None:  # the build's own check, against PyTorch
        assert result.manifest.parity.passed and result.manifest.parity.precision == precision, result.manifest.parity
    limits = get_tolerances(precision)
    ours = SAM2ImagePredictor(result.artifact_dir, backend=backend)
    features, logits, scores, ious = [], [], [], []
    for shape in REDUCED_SHAPES:
        official_features, suite, theirs = official_outputs(name, shape)
        ours.set_image(make_image(*shape, seed=7))
        features += [ArrayErrors.between(r, c) for r, c in zip(official_features, ours._image_features[0])]
        for label, prompt in suite.items():
            masks, score, low_res = ours.predict(**prompt, multimask_output=True)
            masks_o, score_o, low_res_o = theirs[label]
            logits.append(ArrayErrors.between(low_res_o, low_res).rel_max_abs)
            scores.append(float(np.abs(score - score_o).max()))
            ious.extend(np.ravel(mask_ious(masks_o > 0, masks > 0)))
    figures = {
        "features_rel_max_abs": max(f.rel_max_abs for f in features), "features_cosine": min(f.cosine for f in features),
        "logits_rel_max_abs": max(logits), "score_max_abs": max(scores),
        "mask_iou_min": float(min(ious)), "mask_iou_mean": float(np.mean(ious)),
    }
    print(f"{name} {precision} {target} on {backend}: {figures}")
    assert figures["features_rel_max_abs"] <= limits.embedding_rel_max_abs, figures
    assert figures["features_cosine"] >= limits.embedding_cosine, figures
    assert figures["logits_rel_max_abs"] <= limits.logits_rel_max_abs, figures
    assert figures["score_max_abs"] <= limits.iou_score_max_abs, figures
    assert figures["mask_iou_min"] >= limits.mask_iou_min and figures["mask_iou_mean"] >= limits.mask_iou_mean, figures
