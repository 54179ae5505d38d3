"""SAM's ViT image encoder: 1x3x1024x1024 normalised image -> 1x256x64x64 embedding.

Parameter names follow the official checkpoints (``image_encoder.*``), so their state dicts load
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from samexport.constants import VIT_WINDOW_SIZE
from samexport.models.common import LayerNorm2d, MLPBlock

PATCH_SIZE = 16


def relative_position_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Gather the learned relative-position embeddings for every (query, key) offset on one axis.

    Args:
        rel_pos: (2 * size - 1) x head_dim learned table, index ``size - 1`` meaning offset 0.
        q_size, k_size: grid length along this axis for queries and keys (equal in SAM).

    Returns:
        q_size x k_size x head_dim tensor ``R`` with ``R[i, j] = rel_pos[i - j + k_size - 1]``.
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        # Checkpoint trained for another grid size: resample the table linearly, as SAM does.
        rel_pos = F.interpolate(
            rel_pos.T[None], size=max_dist, mode="linear"
        )[0].T
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def decomposed_rel_pos(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two small rel-pos projections of the *unscaled* queries.

    Args:
        q: BHxNxD queries, N = H * W.
        rel_pos_h, rel_pos_w: (2H-1)xD and (2W-1)xD learned tables (``attn.rel_pos_h/_w``).
        grid_hw: (H, W) token grid.

    Returns:
        ``rel_h`` BHxNxH with ``rel_h[b, n, kh] = q[b, n] . R_h[n // W, kh]`` and ``rel_w`` BHxNxW
        with ``rel_w[b, n, kw] = q[b, n] . R_w[n % W, kw]``, in q's dtype. The attention bias for
        query n and key m is ``rel_h[b, n, m // W] + rel_w[b, n, m % W]``.
    """
    h, w = grid_hw
    r_h = relative_position_table(rel_pos_h, h, h).to(q.dtype)  # H x H x D
    r_w = relative_position_table(rel_pos_w, w, w).to(q.dtype)  # W x W x D
    grid_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, r_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, r_w)
    return rel_h.reshape(q.shape[0], h * w, h), rel_w.reshape(q.shape[0], h * w, w)


def expand_rel_pos_bias(rel_h: torch.Tensor, rel_w: torch.Tensor, *, heads: int | None = None) -> torch.Tensor:
    """Materialise the full bias from ``rel_h`` (BHxNxH) and ``rel_w`` (BHxNxW) with 4-D tensors
    only: BHxNxN, or (BH/heads) x heads x N x N when ``heads`` is given.
    (``plugins.onnx_node.inline_reference`` writes the same broadcast in ONNX ops.)"""
    bh, n, h = rel_h.shape
    w = rel_w.shape[-1]
    bias = rel_h.reshape(bh, n, h, 1) + rel_w.reshape(bh, n, 1, w)  # BH x N x H x W
    return bias.reshape(bh, n, n) if heads is None else bias.reshape(-1, heads, n, n)



class Attention(nn.Module):
    """Multi-head self-attention with SAM's decomposed relative-position bias.

    The bias for query (qh, qw) and key (kh, kw) is ``q . R_h[qh, kh] + q . R_w[qw, kw]``: two small
    einsums added per row and per column instead of a full (HW)x(HW) table.

    ``core`` swaps in another formulation of the attention itself (an export-time switch, see
    ``samexport.export.attention``): called as ``core(self, q, k, v, (h, w))`` with per-head
    (B*heads)x(HW)xD queries, keys and values, it returns the (B*heads)x(HW)xD attention output.
    ``None`` (default) computes it as below. It holds no parameters: the state dict is unchanged.
    """

    core: Callable[..., torch.Tensor] | None = None

    def __init__(self, dim: int, *, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxHxWxC tokens -> BxHxWxC."""
        b, h, w, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * heads, h * w, c // heads).unbind(0)

        if self.core is not None:
            out = self.core(self, q, k, v, (h, w))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn + self.rel_pos_bias(q, h, w)
            out = attn.softmax(dim=-1) @ v

        out = out.view(b, heads, h, w, c // heads).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)

    def rel_pos_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Decomposed bias for queries q (B*heads)x(HW)xD on an HxW grid -> (B*heads)x(HW)x(HW).

        Broadcast in 5-D as the official code does (``--attention plain`` keeps that graph;
        :func:`expand_rel_pos_bias` is the 4-D form the other modes use)."""
        bh = q.shape[0]
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        bias = rel_h.reshape(bh, h, w, h, 1) + rel_w.reshape(bh, h, w, 1, w)  # per key row, per key column
        return bias.reshape(bh, h * w, h * w)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split BxHxWxC into (B*nWin)x window x window xC, zero-padding H and W up to multiples."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to BxHxWxC, dropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention unless ``window == 0`` (global)."""

    def __init__(self, dim: int, *, num_heads: int, window: int, grid_size: int) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, grid_size=window or grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            h, w = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """16x16 non-overlapping patches -> tokens, BxHxWxC (``proj`` conv)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """ViT backbone plus neck. Input 1x3x1024x1024 (normalised, padded), output 1x256x64x64."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: tuple[int, ...],
        img_size: int = 1024,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        grid = img_size // PATCH_SIZE
        self.img_size = img_size
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                window=0 if i in global_attn_indexes else VIT_WINDOW_SIZE,
                grid_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
