"""SAM 2.1's image path -> ``encoder.onnx`` and ``decoder.onnx`` (torch's dynamo exporter).

- Encoder: ``image`` 1x3x1024x1024 (whole image resized, ImageNet-normalised:
  :func:`samexport.sam2_transforms.preprocess_sam2`) -> ``image_embeddings`` 1x256x64x64
  (``no_mem_embed`` added), ``high_res_feats_0`` 1x32x256x256 and ``high_res_feats_1``
  1x64x128x128 (after the decoder's ``conv_s0`` / ``conv_s1``: computed once per image).
- Decoder: those three, plus SAM's prompt inputs with dynamic prompt batch B and points N (N >= 1:
  a prompt with points or a box ends with its padding point) -> ``low_res_masks`` Bx4x256x256,
  ``iou_predictions`` Bx4, ``object_score_logits`` Bx1. Like SAM's graph, all four mask tokens
  come out; the runtime makes the official choice (:func:`samexport.models.sam2_decoder.select_masks`).
  The image-side inputs have batch 1 and broadcast over the prompts; ``mask_input`` and
  ``has_mask_input`` have B entries.

Names and shapes: ``samexport.constants.SAM2_ENCODER_*`` / ``SAM2_DECODER_*``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from samexport import constants as C
from samexport.export.to_onnx import DEFAULT_OPSET, EXAMPLE_POINTS, EXAMPLE_PROMPTS, _export, _prompt_axes
from samexport.models.sam2 import Sam2Image


class Sam2EncoderGraph(nn.Module):
    """``Sam2Image.encode`` as a graph: image -> (embedding, stride-4 map, stride-8 map)."""

    def __init__(self, model: Sam2Image) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode(image)


class Sam2DecoderGraph(nn.Module):
    """``Sam2Image.decode`` as a graph, the dense positional encoding stored as a constant."""

    def __init__(self, model: Sam2Image) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        image_embeddings: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode(
            image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input, has_mask_input
        )


def export_sam2_encoder(model: Sam2Image, path: Path | str, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export :class:`Sam2EncoderGraph` of ``model`` (in eval mode) to ``path``."""
    return _export(
        Sam2EncoderGraph(model), (torch.zeros(C.IMAGE.shape),), Path(path),
        C.SAM2_ENCODER_INPUTS, C.SAM2_ENCODER_OUTPUTS, None, opset,
    )


def export_sam2_decoder(model: Sam2Image, path: Path | str, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export :class:`Sam2DecoderGraph` of ``model`` with dynamic B and N to ``path``."""
    batch, points = _prompt_axes()
    size = C.LOW_RES_MASK_SIZE
    example = (
        torch.randn(C.IMAGE_EMBEDDINGS.shape),
        torch.randn(C.HIGH_RES_FEATS_0.shape),
        torch.randn(C.HIGH_RES_FEATS_1.shape),
        torch.rand(EXAMPLE_PROMPTS, EXAMPLE_POINTS, 2) * C.IMAGE_SIZE,
        torch.ones(EXAMPLE_PROMPTS, EXAMPLE_POINTS),
        torch.zeros(EXAMPLE_PROMPTS, 1, size, size),
        torch.zeros(EXAMPLE_PROMPTS),
    )
    dynamic_shapes = (None, None, None, {0: batch, 1: points}, {0: batch, 1: points}, {0: batch}, {0: batch})
    return _export(
        Sam2DecoderGraph(model), example, Path(path), C.SAM2_DECODER_INPUTS, C.SAM2_DECODER_OUTPUTS,
        dynamic_shapes, opset,
    )
