"""SAM 2.1's mask decoder: SAM's two-way transformer and upscaling, plus high-resolution skips,
an object-score head, and the choice of output masks by stability.

Parameter names follow the official checkpoints (``sam_mask_decoder.*``). What differs from SAM's
decoder (:mod:`samexport.models.mask_decoder`), read off ``sam2/modeling/sam/mask_decoder.py`` and
the SAM 2.1 configs:

- an object-score token before the IoU token, and a 3-layer MLP on it giving one logit per
  prompt ("is the object there");
- the upscaling adds the image's stride-8 map (projected by ``conv_s1`` to 64 channels) after the
  first transposed convolution and the stride-4 map (``conv_s0``, 32 channels) after the second;
- the IoU head ends in a sigmoid;
- the transformer's MLPs are named ``mlp.layers.0`` / ``mlp.layers.1`` (SAM: ``lin1`` / ``lin2``);
  the arithmetic is SAM's, so samexport's :class:`TwoWayTransformer` is reused with that MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from samexport.models.common import MLP, LayerNorm2d
from samexport.models.sam2_configs import HIGH_RES_DIMS
from samexport.models.transformer import TwoWayTransformer

# With one mask asked for, the official image predictor (build_sam2's apply_postprocessing) falls
# back to the best of the three multimask outputs when token 0's mask is unstable: these numbers.
from samexport.sam2_transforms import STABILITY_DELTA, STABILITY_THRESHOLD


class Sam2MaskDecoder(nn.Module):
    """``sam_mask_decoder``: always returns all four mask tokens (token 0 single-mask, 1..3
    multimask); :func:`select_masks` makes the official choice between them."""

    def __init__(self, *, dim: int = 256, num_mask_tokens: int = 4, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.transformer = TwoWayTransformer(dim=dim, mlp_dim=mlp_dim)
        for layer in self.transformer.layers:  # same math as MLPBlock (ReLU), official names
            layer.mlp = MLP(dim, mlp_dim, dim, 2)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, HIGH_RES_DIMS[0], kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, HIGH_RES_DIMS[1], kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
        high_res_s0: torch.Tensor,
        high_res_s1: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a batch of B prompts against one image.

        Args:
            image_embeddings: 1x256x64x64 (``no_mem_embed`` added), broadcast over the prompts.
            image_pe: 1x256x64x64 positional encoding of the embedding grid.
            sparse_embeddings: BxNx256 point/box embeddings (N may be 0).
            dense_embeddings: Bx256x64x64 mask-prompt (or "no mask") embeddings.
            high_res_s0: 1x32x256x256, the stride-4 map after ``conv_s0``.
            high_res_s1: 1x64x128x128, the stride-8 map after ``conv_s1``.

        Returns:
            (mask logits Bx4x256x256, IoU predictions Bx4 in [0, 1], object-score logits Bx1).
        """
        batch = sparse_embeddings.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse_embeddings], dim=1)

        src = image_embeddings + dense_embeddings  # broadcasts 1 -> B
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        object_token_out, iou_token_out = hs[:, 0], hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = act1(norm1(deconv1(src) + high_res_s1))
        upscaled = act2(deconv2(upscaled) + high_res_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou = torch.sigmoid(self.iou_prediction_head(iou_token_out))
        return masks, iou, self.pred_obj_score_head(object_token_out)


def stability_scores(mask_logits: torch.Tensor, *, delta: float = STABILITY_DELTA) -> torch.Tensor:
    """IoU of the masks thresholded at +delta and -delta: ...xHxW logits -> ... scores (1 where
    nothing is above -delta)."""
    flat = mask_logits.flatten(-2)
    inner = (flat > delta).sum(-1).float()
    outer = (flat > -delta).sum(-1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))


def select_masks(
    masks: torch.Tensor,
    iou: torch.Tensor,
    *,
    multimask_output: bool,
    threshold: float = STABILITY_THRESHOLD,
    delta: float = STABILITY_DELTA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official predictor's output masks from all four tokens.

    Args:
        masks: Bx4x256x256 logits; iou: Bx4.
        multimask_output: True: tokens 1..3. False: token 0 where its mask is stable
            (:func:`stability_scores` >= ``threshold``), else the multimask token with the highest
            predicted IoU (``dynamic_multimask_via_stability``), chosen per prompt by arithmetic.

    Returns:
        (Bx3x256x256, Bx3) or (Bx1x256x256, Bx1).
    """
    if multimask_output:
        return masks[:, 1:], iou[:, 1:]
    best = iou[:, 1:].argmax(dim=-1, keepdim=True) + 1  # B x 1, a multimask token
    best_masks = torch.gather(masks, 1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
    best_iou = torch.gather(iou, 1, best)
    stable = (stability_scores(masks[:, :1], delta=delta) >= threshold)  # B x 1
    return (
        torch.where(stable[:, :, None, None], masks[:, :1], best_masks),
        torch.where(stable, iou[:, :1], best_iou),
    )
