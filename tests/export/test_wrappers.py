"""The exported decoder's fast formulation against the official-layout modules it re-arranges.

``DecoderGraph`` re-associates the cross-attentions and writes the upscaling as matrix products
(see its docstring); these tests pin it to ``prompt_encoder`` + ``mask_decoder`` computed the way
the official model computes them, with the tolerances of ``tests/models/test_models.py`` (ours vs official).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from samexport import constants as C
from samexport.export.wrappers import DecoderGraph
from samexport.runtime.predictor import SamPredictor

MASK_TOL = 1e-5  # logits, as tests/models/test_models.py allows between our modules and the official ones
IOU_TOL = 1e-6


def _reference(sam, embedding, coords, labels, mask, has_mask):
    """The official data flow: embed prompts, then ``MaskDecoder.forward`` (channel-first image)."""
    sparse = sam.prompt_encoder.embed_points(coords, labels)
    dense = sam.prompt_encoder.embed_masks(mask, has_mask)
    masks, iou = sam.mask_decoder(embedding, sam.prompt_encoder.image_pe(), sparse, dense)
    return masks, iou


@pytest.mark.parametrize("points", [1, 3, 10])
@pytest.mark.parametrize("has_mask", [(0.0, 0.0, 0.0), (1.0, 0.0, 1.0)], ids=["no-mask", "mixed-mask"])
def test_decoder_graph_equals_official_data_flow(tiny_sam, points, has_mask):
    g = torch.Generator().manual_seed(points)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    coords = torch.rand(3, points + 2, 2, generator=g) * 1024
    labels = torch.randint(-1, 4, (3, points + 2), generator=g).float()
    mask = torch.randn(3, 1, 256, 256, generator=g) * 4
    args = (embedding, coords, labels, mask, torch.tensor(has_mask))
    with torch.no_grad():
        masks_ref, iou_ref = _reference(tiny_sam, *args)
        masks, iou = DecoderGraph(tiny_sam).eval()(*args)
    assert masks.shape == (3, 4, 256, 256) and iou.shape == (3, 4)
    torch.testing.assert_close(masks, masks_ref, rtol=0, atol=MASK_TOL)
    torch.testing.assert_close(iou, iou_ref, rtol=0, atol=IOU_TOL)
    assert ((masks > 0) == (masks_ref > 0)).float().mean() > 0.9999


@pytest.mark.parametrize("layer", ["cross_attn_token_to_image", "cross_attn_image_to_token"])
def test_reassociated_attention_equals_forward(tiny_sam, layer):
    attention = getattr(tiny_sam.mask_decoder.transformer.layers[1], layer)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 7, 256, generator=g)
    image = torch.randn(2, 4096, 256, generator=g)
    with torch.no_grad():
        if layer == "cross_attn_token_to_image":
            expected = attention(tokens, image, image * 0.5)
            got = attention.tokens_to_image(tokens, image, image * 0.5)
        else:
            expected = attention(image, tokens, tokens * 0.5)
            got = attention.image_to_tokens(image, tokens, tokens * 0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_decoder_graph_ops_stay_tensorrt_friendly(tiny_onnx):
    """The upscaling is matrix products now: no ConvTranspose, no Tile, ranks within TensorRT's 8."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_onnx[1])))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"ConvTranspose", "Tile", "Loop", "If", "Scan"}
    ranks = [len(v.type.tensor_type.shape.dim) for v in model.graph.value_info if v.type.tensor_type.HasField("shape")]
    assert max(ranks) <= 8


def test_no_mask_buffers_are_reused_and_stay_zero(tiny_artifact):
    """The predictor's cached zero mask input serves every batch size and is never written."""
    predictor = SamPredictor(tiny_artifact)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    boxes = np.array([[10, 10, 80, 60], [40, 30, 150, 110], [0, 0, 160, 120]], np.float32)
    low3, iou3 = predictor.decode_low_res(boxes=boxes)
    low1, iou1 = predictor.decode_low_res(boxes=boxes[1:2])
    assert predictor.backend.shares_mask_input  # one zero mask input serves the whole batch
    masks, flags = predictor._no_mask_input(3)
    assert masks.shape == (1, 1, 256, 256) and flags.shape == (1,)
    assert not masks.any() and not flags.any()
    np.testing.assert_allclose(low1[0], low3[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(iou1[0], iou3[1], rtol=0, atol=1e-6)


def _decoder_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _box_prompts(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(0, 1024, (count, 2, 2)), axis=1).astype(np.float32)
    return corners, np.tile(np.float32([2, 3]), (count, 1))


def test_exported_decoder_shares_one_mask_input_across_the_batch(tiny_sam, tiny_onnx):
    """The mask inputs have their own axis M: one zero mask input (M = 1) for B prompts gives
    the outputs of B zero mask inputs, and both equal the official data flow."""
    model = onnx.load(str(tiny_onnx[1]))
    axes = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input}
    assert axes[C.MASK_INPUT.name] == axes[C.HAS_MASK_INPUT.name] == C.NUM_MASKS
    assert axes[C.POINT_COORDS.name] == C.PROMPT_BATCH
    session = _decoder_session(tiny_onnx[1])
    embedding = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords, labels = _box_prompts(5)

    def run(masks: int):
        zeros = np.zeros((masks, 1, 256, 256), np.float32), np.zeros(masks, np.float32)
        return session.run(None, dict(zip((s.name for s in C.DECODER_INPUTS), (embedding, coords, labels, *zeros))))

    shared, per_prompt = run(1), run(5)
    for a, b in zip(shared, per_prompt):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    args = [torch.from_numpy(a) for a in (embedding, coords, labels, np.zeros((5, 1, 256, 256), np.float32), np.zeros(5, np.float32))]
    with torch.no_grad():
        masks_ref, iou_ref = _reference(tiny_sam, *args)
    np.testing.assert_allclose(shared[0], masks_ref.numpy(), rtol=0, atol=MASK_TOL)
    np.testing.assert_allclose(shared[1], iou_ref.numpy(), rtol=0, atol=IOU_TOL)


class _Recording:
    """A backend wrapper that records the mask-input count of every decode call and says
    whether it shares one mask input (``shares``)."""

    def __init__(self, backend, shares: bool) -> None:
        self.backend, self.shares_mask_input, self.name = backend, shares, backend.name
        self.mask_counts: list[tuple[int, int]] = []

    def encode(self, image):
        return self.backend.encode(image)

    def decode(self, embedding, coords, labels, mask_input, has_mask_input):
        self.mask_counts.append((len(coords), len(mask_input)))
        return self.backend.decode(embedding, coords, labels, mask_input, has_mask_input)


def test_predictor_passes_one_mask_input_per_chunk_with_the_results_of_one_per_prompt(tiny_artifact):
    """Batches in chunks (budget: 2 prompts per call) with one shared zero mask input give the
    results of one zero mask input per prompt; a given mask input is still one per prompt."""
    from samexport.runtime.backends import open_backend
    from samexport.runtime.decode_budget import budget_for_prompts

    backend = open_backend(tiny_artifact, "onnxruntime")
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 80, 60], [40, 30, 150, 110], [0, 0, 160, 120], [5, 50, 90, 119], [70, 2, 159, 64]], np.float32)
    outputs, recorders = {}, {}
    for shares in (True, False):
        recorders[shares] = _Recording(backend, shares)
        predictor = SamPredictor(recorders[shares], decode_budget_bytes=budget_for_prompts(2))
        predictor.set_image(image)
        outputs[shares] = predictor.predict_batch(boxes=boxes, multimask_output=True)
        masks_in = outputs[shares][2][:, :1] * 0.5  # one mask prompt per box
        outputs[shares, "masks"] = predictor.predict_batch(boxes=boxes, mask_input=masks_in, multimask_output=False)
    one_per_prompt = [(2, 2), (2, 2), (1, 1)]  # (prompts, mask inputs) per decoder call
    assert recorders[True].mask_counts == [(2, 1), (2, 1), (1, 1)] + one_per_prompt
    assert recorders[False].mask_counts == one_per_prompt + one_per_prompt
    for key in (True, (True, "masks")):
        other = False if key is True else (False, "masks")
        masks, scores, low_res = outputs[key]
        assert np.array_equal(masks, outputs[other][0])
        np.testing.assert_allclose(scores, outputs[other][1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(low_res, outputs[other][2], rtol=0, atol=1e-5)


def test_decoders_without_the_mask_axis_still_run_with_one_mask_input_per_prompt(tiny_onnx, tmp_path):
    """A decoder exported before the mask axis (mask inputs on B's axis) is run with M = B."""
    from samexport.runtime.backends import OnnxRuntimeBackend

    model = onnx.load(str(tiny_onnx[1]))
    for value in model.graph.input:
        if value.name in (C.MASK_INPUT.name, C.HAS_MASK_INPUT.name):
            value.type.tensor_type.shape.dim[0].dim_param = C.PROMPT_BATCH
    old = tmp_path / "decoder.onnx"
    onnx.save(model, str(old))
    image = np.random.default_rng(2).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 60, 40], [20, 10, 120, 80]], np.float32)
    results = {}
    for path in (old, tiny_onnx[1]):
        backend = OnnxRuntimeBackend(tiny_onnx[0], path, device="cpu")
        assert backend.shares_mask_input == (path != old)
        predictor = SamPredictor(backend)
        predictor.set_image(image)
        masks, flags = predictor._no_mask_input(4)
        assert masks.shape == (4 if path == old else 1, 1, 256, 256) and flags.shape == masks.shape[:1]
        results[path] = predictor.decode_low_res(boxes=boxes)
    for a, b in zip(results[old], results[tiny_onnx[1]]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
