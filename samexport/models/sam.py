"""The whole SAM model: image encoder, prompt encoder and mask decoder under official names."""

from __future__ import annotations

from torch import nn

from samexport.models.image_encoder import ImageEncoderViT
from samexport.models.mask_decoder import MaskDecoder
from samexport.models.prompt_encoder import PromptEncoder
from samexport.variants import Variant


class Sam(nn.Module):
    """Container whose ``state_dict`` keys equal those of the official checkpoints."""

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        self.image_encoder = ImageEncoderViT(
            embed_dim=variant.embed_dim,
            depth=variant.depth,
            num_heads=variant.num_heads,
            global_attn_indexes=variant.global_attn_indexes,
        )
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
