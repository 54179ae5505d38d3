"""Shapes of SAM's image encoders, one frozen dataclass per encoder family (imports no torch).

:mod:`samexport.models.families` builds, identifies and counts encoders from these;
:mod:`samexport.variants` names one per variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samexport.constants import IMAGE_SIZE


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a SAM ViT image encoder (16x16 patches, 14x14 windows).

    Attributes:
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        global_attn_indexes: blocks that attend globally over the 64x64 grid.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class TinyViTConfig:
    """Shape of a TinyViT image encoder (MobileSAM), four stages on a 1024x1024 input.

    Attributes:
        embed_dims: channels per stage; stage 0 is convolutional (MBConv blocks).
        depths: blocks per stage.
        num_heads: attention heads of each attention stage (stages 1, 2, 3).
        window_sizes: attention window side of each attention stage.
        merge_strides: stride of the patch merging after stages 0, 1, 2. MobileSAM keeps the
            64x64 grid for the last stage (stride 1 into it), so the embedding is 64x64.
        mlp_ratio: MLP hidden width over the stage width.
        mbconv_expand_ratio: MBConv hidden width over its input width.
        local_conv_size: kernel of the depthwise convolution between attention and MLP.
    """

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    merge_strides: tuple[int, ...]
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3

    def resolutions(self, img_size: int = IMAGE_SIZE) -> tuple[int, ...]:
        """Grid side of each stage: the stem divides by 4, each merge by its stride."""
        sides = [img_size // 4]
        for stride in self.merge_strides:
            sides.append(math.ceil(sides[-1] / stride))
        return tuple(sides)


# MobileSAM's TinyViT-5M: the one shape the official ``mobile_sam`` package builds.
MOBILE_SAM_TINY_VIT = TinyViTConfig(
    embed_dims=(64, 128, 160, 320),
    depths=(2, 2, 6, 2),
    num_heads=(4, 5, 10),
    window_sizes=(7, 14, 7),
    merge_strides=(2, 2, 1),
)
