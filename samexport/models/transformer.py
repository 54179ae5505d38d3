"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math

import torch
from torch import nn

from samexport.models.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose internal width can be ``dim // downsample_rate``."""

    def __init__(self, dim: int, *, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q BxNqxC, k and v BxNkxC (B may broadcast from 1) -> BxNqxC."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, heads, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, heads * c))

    # The two cross-attentions of the decoder, re-associated so that the 4096 image tokens are
    # never projected. With T prompt tokens, h heads of width d and C channels, a projection of
    # the image tokens costs HW*C*h*d multiply-adds; multiplying the image tokens by the
    # token-side matrices folded with the projection weights costs HW*C*h*T, half as much for
    # h*d = 128 and T <= 8, and the image-side tensors keep their token-major HWxC layout (no
    # head transposes). The functions equal ``forward``'s up to float rounding (~1e-7 relative).

    def tokens_to_image(
        self, q: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor
    ) -> torch.Tensor:
        """``forward(q, image_k, image_v)`` for few queries and many keys.

        Args:
            q: BxTxC prompt tokens (queries).
            image_k, image_v: BxHWxC image tokens (B may broadcast from 1), before projection.

        Returns:
            BxTxC. The key bias adds a per-query constant to the logits, which softmax ignores;
            the value bias passes through unchanged because attention weights sum to 1.
        """
        b, t, _ = q.shape
        heads, width = self.num_heads, self.q_proj.out_features // self.num_heads
        channels = self.k_proj.in_features
        q = self._split_heads(self.q_proj(q))  # B x h x T x d
        w_k = self.k_proj.weight.reshape(heads, width, channels) / math.sqrt(width)
        folded_q = (q @ w_k).reshape(b, heads * t, channels)  # queries in the image-token frame
        attn = (folded_q @ image_k.transpose(1, 2)).softmax(dim=-1)  # B x hT x HW
        mixed = (attn @ image_v).reshape(b, heads, t, channels)  # attention-weighted image tokens
        w_v = self.v_proj.weight.reshape(heads, width, channels).transpose(1, 2)
        out = (mixed @ w_v).transpose(1, 2).reshape(b, t, heads * width) + self.v_proj.bias
        return self.out_proj(out)

    def image_to_tokens(
        self, image_q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """``forward(image_q, k, v)`` for many queries and few keys.

        Args:
            image_q: BxHWxC image tokens (queries), before projection.
            k, v: BxTxC prompt tokens.

        Returns:
            BxHWxC.
        """
        b, t, _ = k.shape
        heads, width = self.num_heads, self.q_proj.out_features // self.num_heads
        channels = self.q_proj.in_features
        scale = 1 / math.sqrt(width)
        k = self._split_heads(self.k_proj(k))  # B x h x T x d
        w_q = self.q_proj.weight.reshape(heads, width, channels) * scale
        folded_k = (k @ w_q).reshape(b, heads * t, channels)  # keys in the image-token frame
        bias = (k * (self.q_proj.bias.reshape(heads, 1, width) * scale)).sum(-1).reshape(b, 1, heads * t)
        logits = image_q @ folded_k.transpose(1, 2) + bias  # B x HW x hT
        n = logits.shape[1]
        attn = logits.reshape(b, n, heads, t).softmax(dim=-1).reshape(b, n, heads * t)
        w_out = self.out_proj.weight.reshape(channels, heads, width).permute(1, 2, 0)  # h x d x C
        folded_v = (self._split_heads(self.v_proj(v)) @ w_out).reshape(b, heads * t, channels)
        return attn @ folded_v + self.out_proj.bias


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self, dim: int, *, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads=num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads=num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        *,
        reassociated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reassociated``: cross-attentions via ``Attention.tokens_to_image`` /
        ``image_to_tokens``, which never project the image tokens (same result, fewer MACs)."""
        token_to_image, image_to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if reassociated:
            token_to_image, image_to_token = token_to_image.tokens_to_image, image_to_token.image_to_tokens
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Parameter names follow the official checkpoints (``mask_decoder.transformer.*``)."""

    def __init__(
        self, *, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads=num_heads, mlp_dim=mlp_dim, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads=num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image BxCxHxW, image_pe 1xCxHxW, tokens BxTxC -> (tokens BxTxC, image tokens BxHWxC)."""
        return self.forward_tokens(image.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2), tokens)

    def forward_tokens(
        self, keys: torch.Tensor, key_pe: torch.Tensor, tokens: torch.Tensor, *, reassociated: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same on token-major image tokens: keys BxHWxC, key_pe 1xHWxC, tokens BxTxC."""
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, reassociated=reassociated)
        final = self.final_attn_token_to_image
        attn = (final.tokens_to_image if reassociated else final)(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
