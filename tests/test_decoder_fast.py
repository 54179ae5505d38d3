"""The exported decoder's fast formulation against the official-layout modules it re-arranges.

``DecoderGraph`` re-associates the cross-attentions and writes the upscaling as matrix products
(see its docstring); these tests pin it to ``prompt_encoder`` + ``mask_decoder`` computed the way
the official model computes them, with the tolerances of ``test_models.py`` (ours vs official).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from samexport.export.wrappers import DecoderGraph
from samexport.runtime.predictor import SamPredictor

MASK_TOL = 1e-5  # logits, as tests/test_models.py allows between our modules and the official ones
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
    masks, flags = predictor._no_mask_input(3)
    assert masks.shape == (3, 1, 256, 256) and flags.shape == (3,)
    assert not masks.any() and not flags.any()
    np.testing.assert_allclose(low1[0], low3[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(iou1[0], iou3[1], rtol=0, atol=1e-6)
