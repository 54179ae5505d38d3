"""Exported ONNX graphs against the torch reference (tiny variant; full vit_b in tests/models/test_vit_b.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from samexport import constants as C
from samexport.export.wrappers import DecoderGraph, EncoderGraph
from samexport.runtime.backends import OnnxRuntimeBackend
from samexport.runtime.torch_backend import TorchBackend
from samexport.testing import mask_iou

# ONNX Runtime CPU reproduces torch to float32 rounding: ~5e-6 on an embedding of absmax ~5 and
# ~1e-5 on decoder logits (measured); tolerances leave a few times that.
EMBED_TOL = 2e-5  # relative to the embedding's absmax
LOGIT_TOL = 5e-5  # absolute, decoder logits
IOU_SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def backends(tiny_sam, tiny_onnx):
    return TorchBackend(tiny_sam), OnnxRuntimeBackend(*tiny_onnx)


@pytest.fixture(scope="module")
def embedding(backends):
    reference, _ = backends
    image = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    return image, reference.encode(image)


def test_graph_interface(tiny_onnx):
    """Names, dtypes and axes match samexport.constants; opset >= 17; B and N dynamic."""
    for path, inputs, outputs in (
        (tiny_onnx[0], C.ENCODER_INPUTS, C.ENCODER_OUTPUTS),
        (tiny_onnx[1], C.DECODER_INPUTS, C.DECODER_OUTPUTS),
    ):
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for values, specs in ((model.graph.input, inputs), (model.graph.output, outputs)):
            assert [v.name for v in values] == [s.name for s in specs]
            for value, spec in zip(values, specs):
                dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
                assert dims == list(spec.shape), value.name
                assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"Loop", "If", "Scan"}, "data-dependent control flow in the graph"


def test_encoder_matches_torch(backends, embedding):
    _, onnxrt = backends
    image, reference = embedding
    got = onnxrt.encode(image)
    assert got.shape == (1, 256, 64, 64)
    assert np.abs(got - reference).max() <= EMBED_TOL * np.abs(reference).max()


def _prompt(kind: str, batch: int, rng: np.random.Generator):
    """Point coordinates/labels in the 1024 frame as the predictor builds them."""
    points = {"1 point": 1, "3 points": 3, "10 points": 10, "box": 0, "box+points": 2}[kind]
    coords = rng.uniform(0, 1024, (batch, points, 2))
    labels = rng.integers(0, 2, (batch, points)).astype(np.float32)
    if kind.startswith("box"):
        corners = np.sort(rng.uniform(0, 1024, (batch, 2, 2)), axis=1)
        coords = np.concatenate([coords, corners], axis=1)
        labels = np.concatenate([labels, np.tile([[2.0, 3.0]], (batch, 1))], axis=1)
    else:
        coords = np.concatenate([coords, np.zeros((batch, 1, 2))], axis=1)
        labels = np.concatenate([labels, -np.ones((batch, 1))], axis=1)
    return coords.astype(np.float32), labels.astype(np.float32)


@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("kind", ["1 point", "3 points", "10 points", "box", "box+points"])
def test_decoder_matches_torch(backends, embedding, kind, with_mask):
    reference, onnxrt = backends
    rng = np.random.default_rng(len(kind) + with_mask)
    coords, labels = _prompt(kind, 3, rng)
    mask = (rng.standard_normal((3, 1, 256, 256)) * 4).astype(np.float32)
    has_mask = np.full(3, float(with_mask), np.float32)
    args = (embedding[1], coords, labels, mask, has_mask)
    masks_ref, iou_ref = reference.decode(*args)
    masks, iou = onnxrt.decode(*args)
    assert masks.shape == (3, 4, 256, 256) and iou.shape == (3, 4)
    assert np.abs(masks - masks_ref).max() <= LOGIT_TOL
    assert np.abs(iou - iou_ref).max() <= IOU_SCORE_TOL
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(masks.reshape(-1, 256, 256), masks_ref.reshape(-1, 256, 256))]
    assert min(ious) >= 0.999


def test_mask_input_changes_the_output(backends, embedding):
    """has_mask_input really switches the dense prompt (guards against a flag that does nothing)."""
    _, onnxrt = backends
    coords, labels = _prompt("1 point", 1, np.random.default_rng(0))
    mask = np.full((1, 1, 256, 256), 5.0, np.float32)
    without, _ = onnxrt.decode(embedding[1], coords, labels, mask, np.zeros(1, np.float32))
    with_, _ = onnxrt.decode(embedding[1], coords, labels, mask, np.ones(1, np.float32))
    assert np.abs(without - with_).max() > 1e-3


def test_batch_of_16_boxes_equals_16_single_calls(backends, embedding):
    _, onnxrt = backends
    coords, labels = _prompt("box", 16, np.random.default_rng(16))
    no_mask = np.zeros((16, 1, 256, 256), np.float32), np.zeros(16, np.float32)
    masks, iou = onnxrt.decode(embedding[1], coords, labels, *no_mask)
    for i in range(16):
        masks_i, iou_i = onnxrt.decode(embedding[1], coords[i : i + 1], labels[i : i + 1], no_mask[0][:1], no_mask[1][:1])
        np.testing.assert_allclose(masks[i], masks_i[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(iou[i], iou_i[0], rtol=0, atol=1e-6)


def test_mixed_mask_flags_in_one_batch(backends, embedding):
    """has_mask_input is per prompt: a batch mixing both equals the two separate calls."""
    reference, onnxrt = backends
    coords, labels = _prompt("3 points", 2, np.random.default_rng(5))
    mask = np.random.default_rng(6).standard_normal((2, 1, 256, 256)).astype(np.float32)
    flags = np.array([1.0, 0.0], np.float32)
    mixed, _ = onnxrt.decode(embedding[1], coords, labels, mask, flags)
    first, _ = reference.decode(embedding[1], coords[:1], labels[:1], mask[:1], flags[:1])
    second, _ = reference.decode(embedding[1], coords[1:], labels[1:], mask[1:], flags[1:])
    np.testing.assert_allclose(mixed, np.concatenate([first, second]), rtol=0, atol=LOGIT_TOL)


def test_decoder_uses_expand_not_repeat(tiny_onnx):
    """The embedding must broadcast over B (Expand / broadcasting Add), never be tiled: Tile and
    repeat_interleave-style gathers break TensorRT shape inference."""
    ops = [n.op_type for n in onnx.load(str(tiny_onnx[1])).graph.node]
    assert "Tile" not in ops


def test_wrappers_are_the_exported_modules(tiny_sam):
    """The torch reference backend runs the exact modules that were exported."""
    backend = TorchBackend(tiny_sam)
    assert isinstance(backend.encoder, EncoderGraph) and isinstance(backend.decoder, DecoderGraph)
    assert backend.encoder.image_encoder is tiny_sam.image_encoder
    with torch.no_grad():
        assert torch.equal(backend.decoder.image_pe, tiny_sam.prompt_encoder.image_pe())
