"""SAM 2.1's image path in PyTorch: Hiera encoder, SAM's prompt encoder, the SAM 2.1 decoder.

State-dict keys equal the image subset of the official checkpoints (``image_encoder.*``,
``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``no_mem_embed``); the video parts a
``sam2.1_hiera_*.pt`` also holds (memory attention and encoder, object pointers) are not built.

What the official ``SAM2ImagePredictor`` does per image (``set_image``) is :meth:`Sam2Image.encode`;
per prompt batch (``_predict``), :meth:`Sam2Image.decode` then
:func:`samexport.models.sam2_decoder.select_masks`.
"""

from __future__ import annotations

import torch
from torch import nn

from samexport.models.hiera import HieraImageEncoder
from samexport.models.prompt_encoder import PromptEncoder
from samexport.models.sam2_configs import NECK_DIM, HieraConfig
from samexport.models.sam2_decoder import Sam2MaskDecoder

IMAGE_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")


class Sam2Image(nn.Module):
    """Container whose ``state_dict`` keys equal the image subset of the official checkpoints.

    Takes its parts, as the official ``SAM2Base`` does (:func:`build_sam2_image` assembles them).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        # Added to the 64x64 embedding when there is no memory: always, for a single image.
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, NECK_DIM))

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features the decoder takes, computed once per image.

        Args:
            image: Bx3x1024x1024 float, the whole image resized to 1024x1024, ImageNet-normalised
                on [0, 1] (:func:`samexport.sam2_transforms.preprocess_sam2`).

        Returns:
            (image embedding Bx256x64x64 with ``no_mem_embed`` added, stride-4 features
            Bx32x256x256 after ``conv_s0``, stride-8 features Bx64x128x128 after ``conv_s1``).
        """
        s0, s1, embedding = self.image_encoder(image)
        decoder = self.sam_mask_decoder
        embedding = embedding + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embedding, decoder.conv_s0(s0), decoder.conv_s1(s1)

    def decode(
        self,
        image_embedding: torch.Tensor,
        high_res_s0: torch.Tensor,
        high_res_s1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four mask tokens for a batch of B prompts against one image.

        Args:
            image_embedding, high_res_s0, high_res_s1: :meth:`encode`'s outputs for one image
                (batch 1, broadcast over the prompts).
            point_coords: BxNx2 (x, y) in the 1024x1024 input frame; a box is two points labelled
                2 and 3, placed before the clicks, and a prompt without a box ends with a
                padding point (label -1), as the official predictor builds them.
            point_labels: BxN; -1 padding, 0 background, 1 foreground, 2/3 box corners.
            mask_input: Bx1x256x256 mask logits, ignored where ``has_mask_input`` is 0.
            has_mask_input: B float, 1 where ``mask_input`` is a prompt.

        Returns:
            (mask logits Bx4x256x256, IoU predictions Bx4, object-score logits Bx1).
        """
        prompts = self.sam_prompt_encoder
        sparse = prompts.embed_points(point_coords, point_labels)
        dense = prompts.embed_masks(mask_input, has_mask_input)
        return self.sam_mask_decoder(image_embedding, prompts.image_pe(), sparse, dense, high_res_s0, high_res_s1)


def build_sam2_image(config: HieraConfig) -> Sam2Image:
    """``Sam2Image`` with a Hiera encoder of shape ``config``, default-initialised, in train mode.
    Modules are created encoder, prompt encoder, decoder, so a seeded build is reproducible."""
    return Sam2Image(HieraImageEncoder(config), PromptEncoder(), Sam2MaskDecoder())


def image_subset(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of an official SAM 2.1 state dict (``checkpoint["model"]``) that the image
    path uses."""
    return {k: v for k, v in state.items() if k.startswith(IMAGE_PREFIXES)}
