"""SAM's mask decoder: image embedding + prompt embeddings -> 4 mask logits and 4 IoU scores."""

from __future__ import annotations

import torch
from torch import nn

from samexport.models.common import MLP, LayerNorm2d
from samexport.models.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Parameter names follow the official checkpoints (``mask_decoder.*``).

    Always returns all four mask tokens: token 0 is the single-mask output, tokens 1..3 the
    multimask outputs. Choosing between them is the caller's job.
    """

    def __init__(self, *, dim: int = 256, num_mask_tokens: int = 4) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer(dim=dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of B prompts against one image.

        Args:
            image_embeddings: 1x256x64x64, broadcast (not copied) over the B prompts.
            image_pe: 1x256x64x64 positional encoding of the embedding grid.
            sparse_embeddings: BxNx256 point/box embeddings.
            dense_embeddings: Bx256x64x64 mask-prompt embeddings.

        Returns:
            (masks Bx4x256x256 logits, iou_predictions Bx4).
        """
        batch = sparse_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse_embeddings], dim=1)

        src = image_embeddings + dense_embeddings  # broadcasts 1 -> B
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
