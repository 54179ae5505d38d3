"""SAM 2.1's image encoder: a Hiera trunk and an FPN neck, written for export.

Parameter names follow the official checkpoints (``image_encoder.trunk.*``,
``image_encoder.neck.convs.N.conv.*``), so their tensors load unchanged. Tokens are kept
channels-last (BxHxWxC) inside the trunk, as the official model does; every shape is static for a
1024x1024 input, so the same code is the torch reference and the exported graph.

Window attention pads the grid to a multiple of the window side and cuts the padding off after;
a block that starts a stage pools its queries (2x2 max) inside each window, so its output grid is
half the input's, and pools its projected shortcut the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from samexport.models.common import MLP
from samexport.models.sam2_configs import NECK_DIM, HieraConfig

Q_STRIDE = 2  # query pooling (2x2 max) at the first block of stages 2..4


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """BxHxWxC -> (B*nWxwindowxwindowxC, padded (Hp, Wp)); zero padding bottom/right."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: B*nWxwindowxwindowxC -> BxHxWxC (padding cut off)."""
    hp, wp = padded
    rows, cols = hp // window, wp // window
    c = windows.shape[-1]
    x = windows.reshape(-1, rows, cols, window, window, c).transpose(2, 3).reshape(-1, hp, wp, c)
    h, w = size
    return x[:, :h, :w] if (hp, wp) != (h, w) else x


def _pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling of a BxHxWxC tensor -> Bx(H/2)x(W/2)xC."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), Q_STRIDE, Q_STRIDE).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Attention over BxHxWxC tokens (one window or the whole grid), optionally with 2x2-pooled
    queries, in which case the output grid is (H/2)x(W/2). Width ``dim`` -> ``dim_out``."""

    def __init__(self, dim: int, dim_out: int, *, num_heads: int, pool_queries: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pool_queries = pool_queries
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)  # B x HW x heads x d
        if self.pool_queries:
            q = _pool(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B x heads x tokens x d
        attn = (q * (1 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm block: (windowed) attention and a GELU MLP, each with a residual. A block that
    changes the width (``dim != dim_out``) pools its queries and projects its shortcut."""

    def __init__(self, dim: int, dim_out: int, *, num_heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = window  # 0: global attention
        self.changes_stage = dim != dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, pool_queries=self.changes_stage)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, act=nn.GELU)
        if self.changes_stage:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC -> BxHxWxC_out (H, W halved when the block starts a stage)."""
        shortcut = x
        x = self.norm1(x)
        if self.changes_stage:
            shortcut = _pool(self.proj(x))
        if self.window > 0:
            x, padded = window_partition(x, self.window)
        x = self.attn(x)
        if self.window > 0:
            window, size = self.window, tuple(shortcut.shape[1:3])
            if self.changes_stage:  # pooled windows are half as wide, on the pooled grid
                window = window // Q_STRIDE
                padded = tuple(s + (-s) % window for s in size)
            x = window_unpartition(x, window, padded, size)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: Bx3x1024x1024 -> Bx256x256xC (channels last)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The trunk: Bx3x1024x1024 -> the last block of each stage, NCHW, finest first
    (tiny: Bx96x256x256, Bx192x128x128, Bx384x64x64, Bx768x32x32)."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, config.pos_embed_size, config.pos_embed_size))
        side = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, dim, side, side))
        stage_starts = {end + 1 for end in config.stage_ends[:-1]}
        heads, stage = config.num_heads, 0
        blocks = []
        for i in range(config.depth):
            # The first block of a stage still windows with the previous stage's side.
            window = 0 if i in config.global_att_blocks else config.window_spec[stage]
            dim_out = dim
            if i in stage_starts:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            blocks.append(MultiScaleBlock(dim, dim_out, num_heads=heads, window=window))
            dim = dim_out
        self.blocks = nn.ModuleList(blocks)

    def position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """The background embedding resized (bicubic) to ``size`` plus the window embedding
        tiled over it -> 1xHxWxC."""
        pos = F.interpolate(self.pos_embed, size=size, mode="bicubic", align_corners=False)
        side = self.pos_embed_window.shape[-1]
        pos = pos + self.pos_embed_window.tile(1, 1, size[0] // side, size[1] // side)
        return pos.permute(0, 2, 3, 1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(image)
        x = x + self.position_embedding(tuple(x.shape[1:3]))
        outputs = []
        ends = set(self.config.stage_ends)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class Lateral(nn.Module):
    """One FPN lateral: a 1x1 convolution to the neck width (parameter ``conv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, NECK_DIM, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """Stage outputs (finest first) -> three 256-channel maps at strides 4, 8 and 16.

    ``convs`` are ordered coarsest first, as in the checkpoints. The stride-16 map is its lateral
    plus the stride-32 lateral upsampled 2x (nearest); the stride-4 and stride-8 maps are their
    laterals alone. The stride-32 map itself is not returned (the official ``scalp``)."""

    def __init__(self, stage_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(Lateral(dim) for dim in reversed(stage_dims))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last = len(self.convs) - 1
        lateral = [self.convs[last - i](x) for i, x in enumerate(features)]
        coarse = F.interpolate(lateral[3], scale_factor=2.0, mode="nearest")
        return lateral[0], lateral[1], lateral[2] + coarse


class HieraImageEncoder(nn.Module):
    """``image_encoder``: Bx3x1024x1024 normalised image -> (Bx256x256x256 stride-4 map,
    Bx256x128x128 stride-8 map, Bx256x64x64 stride-16 map), before the decoder's projections
    and the ``no_mem_embed``."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.trunk = Hiera(config)
        self.neck = FpnNeck(config.stage_dims)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.neck(self.trunk(image))
