"""Shapes of SAM 2.1's Hiera image encoders, and what a checkpoint's tensors say about them
(imports no torch).

Facts from the official configs (``sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` of
``sam2==1.1.0``) and the defaults of ``sam2.modeling.backbones.hieradet.Hiera``: a 7x7 stride-4
patch embedding, four stages whose first blocks pool the queries 2x2 and double the width and the
heads, windowed attention except a few global blocks, a background position embedding
interpolated to the 256x256 token grid plus a tiled per-window embedding; an FPN neck to 256
channels whose two coarsest levels (strides 32 and 16) are summed top-down (nearest upsampling),
the stride-32 level then dropped (``scalp: 1``).

A checkpoint shows the width, the blocks per stage and both position-embedding sizes; the heads,
the global blocks and the later window sizes leave no trace in the weights, so a checkpoint is
identified by the readable fields and the rest is taken from the official shape they match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from samexport.constants import IMAGE_SIZE
from samexport.errors import SamExportError

TRUNK_PREFIX = "image_encoder.trunk."
NECK_PREFIX = "image_encoder.neck."
PATCH_STRIDE = 4  # the 7x7 stride-4 patch embedding: 1024x1024 pixels -> 256x256 tokens
NECK_DIM = 256
# The decoder's high-resolution skips: conv_s0 (stride 4, 256x256) to NECK_DIM // 8 channels,
# conv_s1 (stride 8, 128x128) to NECK_DIM // 4.
HIGH_RES_DIMS = (NECK_DIM // 8, NECK_DIM // 4)


@dataclass(frozen=True)
class HieraConfig:
    """Shape of a SAM 2.1 Hiera trunk (its FPN neck follows from it).

    Attributes:
        embed_dim: token width of stage 1 (doubled at each later stage).
        num_heads: attention heads of stage 1 (doubled at each later stage).
        stages: blocks per stage, four stages.
        global_att_blocks: indexes of the blocks that attend over the whole grid.
        window_spec: window side per stage for the windowed blocks (the first block of a stage
            windows with the previous stage's side, before its query pooling halves it).
        pos_embed_size: side of the background position embedding, interpolated bicubically
            to the 256x256 token grid.
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, int, int, int]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, int, int, int] = (8, 4, 14, 7)
    pos_embed_size: int = 14

    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Index of the last block of each stage."""
        ends, total = [], 0
        for blocks in self.stages:
            total += blocks
            ends.append(total - 1)
        return tuple(ends)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Token width of each stage, finest first (96, 192, 384, 768 for tiny)."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.stages)))

    def readable(self) -> tuple[int, tuple[int, ...], int, int]:
        """The fields a checkpoint's tensor shapes show: (embed_dim, stages, pos_embed_size,
        first window side)."""
        return self.embed_dim, tuple(self.stages), self.pos_embed_size, self.window_spec[0]


# The four official shapes (sam2.1_hiera_{t,s,b+,l}.yaml over the Hiera defaults).
HIERA_TINY = HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), pos_embed_size=7)
HIERA_SMALL = HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), pos_embed_size=7)
HIERA_BASE_PLUS = HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20))
HIERA_LARGE = HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8), pos_embed_size=7)
OFFICIAL_HIERA = (HIERA_TINY, HIERA_SMALL, HIERA_BASE_PLUS, HIERA_LARGE)


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state[key].shape)
    except KeyError:
        raise SamExportError(f"checkpoint has no complete SAM 2.1 Hiera encoder (missing {key!r})") from None


def describe_hiera(state: Mapping[str, Any]) -> HieraConfig | None:
    """The Hiera shape of a state dict with SAM 2.1's key names (``image_encoder.trunk.*``),
    ``None`` when it has no Hiera trunk.

    Raises:
        SamExportError: a Hiera trunk with parts missing, or of a shape none of SAM 2.1's four
            models has (the message gives what was read).
    """
    p = TRUNK_PREFIX
    if f"{p}patch_embed.proj.weight" not in state:
        return None
    embed_dim = _shape(state, f"{p}patch_embed.proj.weight")[0]
    blocks = sorted({int(k[len(p) + 7:].split(".", 1)[0]) for k in state if k.startswith(f"{p}blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise SamExportError(f"checkpoint has no complete SAM 2.1 Hiera encoder (blocks {blocks[:3]}...)")
    # The first block of stages 2..4 changes the width, with a projection on its shortcut.
    starts = [0] + [i for i in blocks if f"{p}blocks.{i}.proj.weight" in state] + [len(blocks)]
    stages = tuple(b - a for a, b in pairwise(starts))
    pos_embed_size = _shape(state, f"{p}pos_embed")[-1]
    window = _shape(state, f"{p}pos_embed_window")[-1]
    found = (int(embed_dim), stages, int(pos_embed_size), int(window))
    for config in OFFICIAL_HIERA:
        if config.readable() == found:
            return config
    raise SamExportError(
        f"checkpoint has a Hiera encoder of width {found[0]}, stages {found[1]}, position "
        f"embedding {found[2]}x{found[2]}, first window {found[3]}: not one of SAM 2.1's "
        f"tiny/small/base_plus/large"
    )


def hiera_encoder_macs(config: HieraConfig) -> int:
    """Multiply-accumulates of the exported SAM 2.1 encoder (trunk, neck laterals, and the
    decoder's ``conv_s0`` / ``conv_s1`` it runs once per image) on a 1024x1024 input, as the
    graph computes them: windowed blocks pad the grid to a multiple of the window side before the
    qkv projection; attention products are included; norms, softmax, GELU, pooling and
    resizing are not. tiny 146.2 GMAC, small 180.0, base_plus 323.4, large 911.4 (SAM's
    vit_b: 486.0)."""
    side = IMAGE_SIZE // PATCH_STRIDE
    dim = config.embed_dim
    macs = side * side * dim * 3 * 7 * 7  # patch embedding
    stage_starts = {end + 1 for end in config.stage_ends[:-1]}
    stage, sides = 0, []
    for i in range(config.depth):
        window = 0 if i in config.global_att_blocks else config.window_spec[stage]
        dim_out = dim
        pooled = i in stage_starts
        if pooled:
            dim_out, stage = dim * 2, stage + 1
            macs += side * side * dim * dim_out  # shortcut projection, before its pooling
        grid = math.ceil(side / window) * window if window else side
        windows = (grid // window) ** 2 if window else 1
        keys = (window if window else side) ** 2
        queries = keys // 4 if pooled else keys
        macs += windows * keys * dim * 3 * dim_out  # qkv on every (padded) token
        macs += windows * queries * keys * dim_out * 2  # q @ k^T and attn @ v, all heads
        macs += windows * queries * dim_out * dim_out  # output projection, padded tokens too
        if pooled:
            side //= 2
        macs += side * side * dim_out * 4 * dim_out * 2  # MLP
        dim = dim_out
        if i in config.stage_ends:
            sides.append(side)
    macs += sum(s * s * d * NECK_DIM for s, d in zip(sides, config.stage_dims))  # laterals
    macs += sides[0] ** 2 * NECK_DIM * HIGH_RES_DIMS[0] + sides[1] ** 2 * NECK_DIM * HIGH_RES_DIMS[1]
    return macs
