"""TinyViT, MobileSAM's image encoder: 1x3x1024x1024 normalised image -> 1x256x64x64 embedding.

Written here from the architecture of the official ``mobile_sam`` package (TinyViT-5M as MobileSAM
configures it); parameter and buffer names follow its checkpoints (``image_encoder.*`` of
``mobile_sam.pt``), so official state dicts load unchanged:

- stem: two 3x3 stride-2 ``Conv2d + BatchNorm`` (``Conv2dBN``, keys ``c.*`` / ``bn.*``) with GELU
  between them: 1024 -> 256;
- stage 0: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, each with BatchNorm; residual,
  then GELU);
- stages 1-3: TinyViT blocks on BxHxWxC tokens: windowed multi-head attention (LayerNorm first)
  whose bias is a learned table per head indexed by ``|Δrow| * ws + |Δcol|`` (``attention_biases``
  with ``attention_bias_idxs``), q/k/v interleaved per head in the ``qkv`` projection, windows
  zero-padded at the bottom/right with the padded tokens *not* masked (they take part as keys, as
  in the official model); residual; a 3x3 depthwise ``Conv2dBN`` (``local_conv``); a pre-norm MLP
  with residual;
- patch merging between stages (1x1, 3x3 depthwise with the stage's stride, 1x1; GELU between);
- SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to 256 channels.

The classifier head (``norm_head``, ``head``) is in the official checkpoints but unused by SAM;
it is kept so that the state dict layout is the official one. :func:`fold_batchnorms` gives the
export-time copy with every BatchNorm folded into its convolution.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from samexport.constants import EMBED_DIM
from samexport.models.common import LayerNorm2d
from samexport.models.encoder_configs import TinyViTConfig

NUM_CLASSES = 1000  # the unused ImageNet head of the official checkpoints


class Conv2dBN(nn.Sequential):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``), on NxCxHxW."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int = 1, *, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """One ``Conv2d`` with bias computing this module in eval mode (running statistics):
        ``w' = w * g / sqrt(var + eps)``, ``b' = beta - mean * g / sqrt(var + eps)``."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            groups=conv.groups, bias=True,
        )
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (in eval mode) with every :class:`Conv2dBN` replaced by its
    folded ``Conv2d``. The original is left as it is."""
    folded = copy.deepcopy(module).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dBN):
                setattr(parent, name, child.folded())
    return folded


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Stem: 3x3 stride-2 conv to C/2, GELU, 3x3 stride-2 conv to C (``seq.0``, ``seq.2``)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(3, embed_dim // 2, 3, stride=2, padding=1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual on NxCxHxW: 1x1 expand, 3x3 depthwise, 1x1 project, + input, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """NxCxHxW -> NxC'x(H/s)x(W/s): 1x1 conv, GELU, 3x3 depthwise stride s, GELU, 1x1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


def bias_indices(window: int) -> torch.Tensor:
    """(ws*ws)x(ws*ws) int64: for tokens i, j of a window (row-major), ``|Δrow| * ws + |Δcol|``,
    the column of ``attention_biases`` holding their bias (the official table order)."""
    rows = torch.arange(window).repeat_interleave(window)
    cols = torch.arange(window).repeat(window)
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class Attention(nn.Module):
    """Pre-norm multi-head attention over the ws*ws tokens of a window, plus a learned bias.

    ``qkv`` is laid out per head: its output, viewed as tokens x heads x 3D, holds head h's q, k and
    v at ``[h, 0:D]``, ``[h, D:2D]``, ``[h, 2D:3D]``. The bias of query i and key j in head h is
    ``attention_biases[h, attention_bias_idxs[i, j]]``.

    ``mode`` (an export-time switch, see ``samexport.export.attention.attention_mode``) picks how the attention
    core is written; all agree to float rounding and hold no parameters:

    - ``plain``: as the official model: ``softmax((q @ k^T) * scale + bias) @ v``;
    - ``fused-pattern``: TensorRT's MHA-fusion form, ``softmax((q * scale) @ k^T + bias) @ v``
      with every tensor 4-D and the bias a 1 x heads x N x N constant;
    - ``onnx-attention``: ``scaled_dot_product_attention`` with the bias as an additive mask,
      exported as the ONNX ``Attention`` op at opset >= 23.
    """

    mode: str = "plain"

    def __init__(self, dim: int, *, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", bias_indices(window), persistent=False)

    def bias(self) -> torch.Tensor:
        """heads x N x N additive bias, gathered from the table (never cached: always current)."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxNxC tokens of B windows -> BxNxC."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each B x heads x N x D
        bias = self.bias()
        if self.mode == "plain":
            attn = (q @ k.transpose(-2, -1)) * self.scale + bias
            out = attn.softmax(dim=-1) @ v
        elif self.mode == "fused-pattern":
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias[None]
            out = attn.softmax(dim=-1) @ v
        elif self.mode == "onnx-attention":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], scale=self.scale)
        else:
            raise ValueError(f"unknown attention mode {self.mode!r}")
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, ``fc1``, GELU, ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention + residual, depthwise local conv, MLP + residual, on BxHxWxC tokens."""

    def __init__(self, dim: int, *, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads=num_heads, window=window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        windows = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x  # zeros, not masked
        nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
        windows = windows.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        out = self.attn(windows).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        x = x + out[:, :h, :w]
        x = _channels_last(self.local_conv(_channels_first(x)))
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then patch merging; NxCxHxW in and out."""

    def __init__(self, dim: int, out_dim: int, *, depth: int, expand_ratio: float, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks on BxHxWxC tokens, then (except last) patch merging."""

    def __init__(
        self, dim: int, out_dim: int | None, *, depth: int, num_heads: int, window: int, mlp_ratio: float,
        local_conv_size: int, stride: int = 1,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads=num_heads, window=window, mlp_ratio=mlp_ratio, local_conv_size=local_conv_size)
            for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = _channels_last(self.downsample(_channels_first(x)))
        return x


class TinyViT(nn.Module):
    """TinyViT backbone plus SAM's neck. Input 1x3x1024x1024 (normalised, padded), output
    1x256x64x64."""

    def __init__(self, config: TinyViTConfig, *, out_chans: int = EMBED_DIM) -> None:
        super().__init__()
        dims, depths = config.embed_dims, config.depths
        if len(config.num_heads) != len(dims) - 1 or len(config.window_sizes) != len(dims) - 1:
            raise ValueError("TinyViTConfig: num_heads and window_sizes need one entry per attention stage")
        self.config = config
        self.patch_embed = PatchEmbed(dims[0])
        layers: list[nn.Module] = [
            ConvLayer(dims[0], dims[1], depth=depths[0], expand_ratio=config.mbconv_expand_ratio,
                      stride=config.merge_strides[0])
        ]
        for i in range(1, len(dims)):
            last = i == len(dims) - 1
            layers.append(
                BasicLayer(
                    dims[i], None if last else dims[i + 1], depth=depths[i], num_heads=config.num_heads[i - 1],
                    window=config.window_sizes[i - 1], mlp_ratio=config.mlp_ratio,
                    local_conv_size=config.local_conv_size, stride=1 if last else config.merge_strides[i],
                )
            )
        self.layers = nn.ModuleList(layers)
        self.norm_head = nn.LayerNorm(dims[-1])  # unused: official checkpoint layout
        self.head = nn.Linear(dims[-1], NUM_CLASSES)  # unused: official checkpoint layout
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](self.patch_embed(x))  # N x C1 x 128 x 128
        x = _channels_last(x)
        for layer in self.layers[1:]:
            x = layer(x)
        return self.neck(_channels_first(x))
