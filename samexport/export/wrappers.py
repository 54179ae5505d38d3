"""The two exported graphs as small modules with no data-dependent control flow.

``EncoderGraph``: normalised, zero-padded image 1x3x1024x1024 -> image embedding 1x256x64x64.
Normalisation, resizing and padding stay outside the graph (see ``samexport.transforms``): padding
happens *after* normalisation, so an in-graph normalisation could not tell padding from black
pixels.

``DecoderGraph``: one image embedding and a batch of B prompts of N points each -> all four mask
logits Bx4x256x256 and IoU predictions Bx4. Upsampling to the original image size is left to the
runtime (a float ``orig_im_size`` input does not parse in TensorRT, and upsampling only the masks
that are returned is cheaper).
"""

from __future__ import annotations

import torch
from torch import nn

from samexport.models import Sam


class EncoderGraph(nn.Module):
    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderGraph(nn.Module):
    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        # Constant for a given model: computed once, stored in the graph as an initializer.
        self.register_buffer("image_pe", sam.prompt_encoder.image_pe(), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See ``samexport.constants.DECODER_INPUTS`` for shapes; returns (iou Bx4, masks Bx4x256x256)."""
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self.prompt_encoder.embed_masks(mask_input, has_mask_input)
        masks, iou = self.mask_decoder(image_embeddings, self.image_pe, sparse, dense)
        return iou, masks
