"""The decoder in two halves (``decoder_scores.onnx`` then ``decoder_masks.onnx``), and the mask
generator's IoU prefilter that runs the second half only for prompts that can pass
``pred_iou_thresh``.

The halves are checked against ``decoder.onnx`` and against the torch modules they are exported
from; the prefilter against the same generator with every mask computed (and, through
``tests/amg/test_generator.py::test_parity_tiny_weights_onnxruntime``, against the official generator).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from samexport import constants as C
from samexport.amg import AutomaticMaskGenerator
from samexport.errors import InvalidInputError
from samexport.runtime.backends import OnnxRuntimeBackend
from samexport.runtime.decode_budget import budget_for_prompts
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.torch_backend import TorchBackend
from samexport.testing import make_image

pytest.importorskip("torch")


def decoder_inputs(batch: int, *, shared: bool, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Decoder inputs for ``batch`` two-point prompts: one zero mask input for all of them
    (``shared``, M = 1), or one per prompt with a mask prompt on every other one (M = B)."""
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords = (rng.random((batch, 2, 2)) * C.IMAGE_SIZE).astype(np.float32)
    labels = np.tile(np.array([1, 0], np.float32), (batch, 1))
    masks = 1 if shared else batch
    mask_input = np.zeros((masks, 1, 256, 256), np.float32)
    has_mask = np.zeros(masks, np.float32)
    if not shared:
        mask_input[::2] = rng.standard_normal((len(mask_input[::2]), 1, 256, 256))
        has_mask[::2] = 1
    return embedding, coords, labels, mask_input, has_mask


@pytest.fixture(scope="module")
def onnx_backend(tiny_artifact, tiny_onnx) -> OnnxRuntimeBackend:
    """The tiny graphs with the decoder's halves the build exported beside them
    (``export_decoders`` from the same checkpoint, at the default opset)."""
    halves = (tiny_artifact / C.DECODER_SCORES_ONNX, tiny_artifact / C.DECODER_MASKS_ONNX)
    return OnnxRuntimeBackend(*tiny_onnx, device="cpu", decoder_halves=halves)


def test_halves_have_the_documented_inputs_and_outputs(onnx_backend):
    scores_path, masks_path = onnx_backend._halves_paths

    def axes(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    scores, masks = (onnx.load(str(path)).graph for path in (scores_path, masks_path))
    assert [v.name for v in scores.input] == [s.name for s in C.SCORES_INPUTS]
    assert [v.name for v in scores.output] == [s.name for s in C.SCORES_OUTPUTS]
    assert [v.name for v in masks.input] == [s.name for s in C.MASKS_INPUTS]
    assert [v.name for v in masks.output] == [s.name for s in C.MASKS_OUTPUTS]
    assert axes(scores.input)[C.MASK_INPUT.name][0] == C.NUM_MASKS  # one shared mask input works too
    assert axes(scores.output)[C.IMAGE_TOKENS.name] == list(C.IMAGE_TOKENS.shape)
    assert axes(masks.input)[C.MASK_TOKENS.name] == list(C.MASK_TOKENS.shape)


@pytest.mark.parametrize("shared", [True, False], ids=["one-mask-input", "mask-input-per-prompt"])
def test_halves_compute_what_the_decoder_does(shared, onnx_backend, tiny_sam):
    inputs = decoder_inputs(5, shared=shared)
    masks, iou = onnx_backend.decode(*inputs)
    half_iou, mask_tokens, image_tokens = onnx_backend.decode_scores(*inputs)
    np.testing.assert_allclose(half_iou, iou, rtol=0, atol=1e-6)
    np.testing.assert_allclose(onnx_backend.decode_masks(mask_tokens, image_tokens), masks, rtol=0, atol=1e-5)
    rows = [3, 0]  # any rows, in any order, give those prompts' masks
    np.testing.assert_allclose(
        onnx_backend.decode_masks(mask_tokens[rows], image_tokens[rows]), masks[rows], rtol=0, atol=1e-5
    )

    # The torch modules they were exported from, and the whole torch decoder.
    torch_backend = TorchBackend(tiny_sam)
    torch_masks, torch_iou = torch_backend.decode(*inputs)
    torch_half_iou, torch_mask_tokens, torch_image_tokens = torch_backend.decode_scores(*inputs)
    np.testing.assert_array_equal(torch_half_iou, torch_iou)
    np.testing.assert_array_equal(torch_backend.decode_masks(torch_mask_tokens, torch_image_tokens), torch_masks)
    np.testing.assert_allclose(image_tokens, torch_image_tokens, rtol=0, atol=1e-4)
    np.testing.assert_allclose(half_iou, torch_iou, rtol=0, atol=1e-5)


class _Spy:
    """A backend's methods, counting the prompts each decoder call gets; ``halves=False`` hides
    the decoder halves (as a TensorRT backend or an older artifact has none)."""

    def __init__(self, backend, *, halves: bool = True) -> None:
        self._backend = backend
        self.name = backend.name
        self.shares_mask_input = backend.shares_mask_input
        self.has_decoder_halves = halves
        self.calls: dict[str, list[int]] = {"decode": [], "decode_scores": [], "decode_masks": []}

    def encode(self, image):
        return self._backend.encode(image)

    def decode(self, embedding, coords, *rest):
        self.calls["decode"].append(len(coords))
        return self._backend.decode(embedding, coords, *rest)

    def decode_scores(self, embedding, coords, *rest):
        self.calls["decode_scores"].append(len(coords))
        return self._backend.decode_scores(embedding, coords, *rest)

    def decode_masks(self, mask_tokens, image_tokens):
        self.calls["decode_masks"].append(len(mask_tokens))
        return self._backend.decode_masks(mask_tokens, image_tokens)


@pytest.fixture(scope="module")
def artifact_backend(tiny_artifact):
    predictor = SamPredictor(tiny_artifact, backend="onnxruntime-cpu")
    assert predictor.backend.has_decoder_halves, "a build writes the decoder halves and the manifest names them"
    return predictor.backend


def first_of_each_chunk(scores: np.ndarray) -> np.ndarray:
    return np.arange(len(scores)) == 0


def test_decode_low_res_where_makes_masks_only_for_the_needed_prompts(artifact_backend):
    image = make_image(200, 300, seed=5)
    points = np.random.default_rng(1).random((7, 1, 2)) * [300, 200]
    labels = np.ones((7, 1))
    spy = _Spy(artifact_backend)
    predictor = SamPredictor(spy, decode_budget_bytes=budget_for_prompts(3))  # chunks of 3, 2, 2
    predictor.set_image(image)
    logits, iou = predictor.decode_low_res(points, labels)

    spy.calls = {name: [] for name in spy.calls}
    index, kept_logits, all_iou = predictor.decode_low_res_where(first_of_each_chunk, points, labels)
    np.testing.assert_array_equal(index, [0, 3, 5])
    np.testing.assert_allclose(all_iou, iou, rtol=0, atol=1e-6)
    np.testing.assert_allclose(kept_logits, logits[[0, 3, 5]], rtol=0, atol=1e-5)
    assert spy.calls == {"decode": [], "decode_scores": [3, 2, 2], "decode_masks": [1, 1, 1]}

    # Without the halves: every prompt is decoded whole, and the same ones are returned.
    plain = SamPredictor(_Spy(artifact_backend, halves=False), decode_budget_bytes=budget_for_prompts(3))
    plain.set_image(image)
    plain_index, plain_logits, plain_iou = plain.decode_low_res_where(first_of_each_chunk, points, labels)
    np.testing.assert_array_equal(plain_index, [0, 3, 5])
    np.testing.assert_allclose(plain_logits, kept_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(plain_iou, all_iou, rtol=0, atol=1e-6)

    # Every prompt needed: after the first chunk the decoder runs whole (one call is cheaper then).
    spy.calls = {name: [] for name in spy.calls}
    index, kept_logits, all_iou = predictor.decode_low_res_where(lambda s: np.ones(len(s), bool), points, labels)
    assert spy.calls == {"decode": [2, 2], "decode_scores": [3], "decode_masks": [3]}
    np.testing.assert_array_equal(index, np.arange(7))
    np.testing.assert_allclose(kept_logits, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(all_iou, iou, rtol=0, atol=1e-6)

    # None needed: no masks at all (the halves are back after the first chunk).
    spy.calls = {name: [] for name in spy.calls}
    index, kept_logits, _ = predictor.decode_low_res_where(lambda s: np.zeros(len(s), bool), points, labels)
    assert index.shape == (0,) and kept_logits.shape == (0, 4, 256, 256)
    assert spy.calls == {"decode": [3], "decode_scores": [2, 2], "decode_masks": []}

    with pytest.raises(InvalidInputError, match="one bool per prompt"):
        predictor.decode_low_res_where(lambda s: s[:, 0], points, labels)  # floats, not bools


def test_mask_generator_prefilter_keeps_every_mask_of_the_full_decoder(artifact_backend):
    """Same records with the prefilter as with every mask computed; masks made only for the
    prompts whose best multimask IoU passes the threshold."""
    scene = make_image(240, 360, seed=3)
    spy = _Spy(artifact_backend)
    predictor = SamPredictor(spy)
    predictor.set_image(scene)
    grid = AutomaticMaskGenerator(predictor, points_per_side=6).point_grids[0] * [360, 240]
    _, iou = predictor.decode_low_res(grid[:, None, :], np.ones((len(grid), 1)))
    best = iou[:, 1:].max(axis=1)
    threshold = float(np.quantile(best, 0.5))  # half of the prompts can pass
    # Random weights' masks with high predicted IoUs are unstable ones: the stability filter
    # stays off so that masks are left to compare.
    params = dict(points_per_side=6, pred_iou_thresh=threshold, stability_score_thresh=0.0, box_nms_thresh=1.0)

    spy.calls = {name: [] for name in spy.calls}
    ours = AutomaticMaskGenerator(predictor, **params).generate(scene)
    everything = AutomaticMaskGenerator(SamPredictor(_Spy(artifact_backend, halves=False)), **params).generate(scene)
    assert sum(spy.calls["decode_scores"]) == len(grid)
    assert sum(spy.calls["decode_masks"]) == np.count_nonzero(best > threshold) < len(grid)
    assert len(ours) == len(everything) > 0
    for mine, theirs in zip(ours, everything):
        np.testing.assert_array_equal(mine["segmentation"], theirs["segmentation"])
        assert mine["bbox"] == theirs["bbox"] and mine["point_coords"] == theirs["point_coords"]
        assert mine["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-6)
        assert mine["stability_score"] == pytest.approx(theirs["stability_score"], abs=1e-6)
