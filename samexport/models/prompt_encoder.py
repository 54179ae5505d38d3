"""SAM's prompt encoder: points, box corners and mask prompts -> sparse and dense embeddings.

Written without data-dependent control flow (labels select embeddings by arithmetic masks), so the
same code is the torch reference and the exported graph. A box is two points labelled 2 (top-left)
and 3 (bottom-right); label -1 marks a padding point ("not a point").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from samexport.models.common import LayerNorm2d

NUM_POINT_EMBEDDINGS = 4  # background, foreground, box top-left, box bottom-right


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]: sin/cos of 2*pi*(2*xy - 1) @ G, G ~ N(0, 1)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords ...x2 normalised to [0, 1] -> ...x(2*num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, size: int) -> torch.Tensor:
        """Encoding of every cell centre of a size x size grid -> 1 x C x size x size."""
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([xs, ys], dim=-1)).permute(2, 0, 1)[None]


class PromptEncoder(nn.Module):
    """Parameter names follow the official checkpoints (``prompt_encoder.*``)."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        embedding_size: int = 64,
        input_image_size: int = 1024,
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_EMBEDDINGS)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def image_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, 1 x 256 x 64 x 64."""
        return self.pe_layer.dense(self.embedding_size)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse prompt embeddings.

        Args:
            coords: BxNx2 float (x, y) in the 1024x1024 input frame.
            labels: BxN float or int; -1 padding, 0 background, 1 foreground, 2/3 box corners.

        Returns:
            BxNx256 embeddings.
        """
        coords = (coords + 0.5) / self.input_image_size  # pixel centres, normalised
        embedding = self.pe_layer.encode(coords)
        labels = labels[..., None].to(embedding.dtype)
        embedding = embedding * (labels != -1) + self.not_a_point_embed.weight * (labels == -1)
        for i, point_embedding in enumerate(self.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == i)
        return embedding

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Dense prompt embeddings.

        Args:
            mask_input: Bx1x256x256 mask logits (e.g. a previous prediction); ignored where
                ``has_mask_input`` is 0.
            has_mask_input: B float, 1 where ``mask_input`` is a real prompt, else 0.

        Returns:
            Bx256x64x64: the downscaled mask, or the learned "no mask" embedding.
        """
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask * self.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
