"""The two exported graphs as small modules with no data-dependent control flow.

``EncoderGraph``: normalised, zero-padded image 1x3x1024x1024 -> image embedding 1x256x64x64.
Normalisation, resizing and padding stay outside the graph (see ``samexport.transforms``): padding
happens *after* normalisation, so an in-graph normalisation could not tell padding from black
pixels.

``DecoderGraph``: one image embedding and a batch of B prompts of N points each -> all four mask
logits Bx4x256x256 and IoU predictions Bx4, in that order (as the official mask decoder). Upsampling to the original image size is left to the
runtime (a float ``orig_im_size`` input does not parse in TensorRT, and upsampling only the masks
that are returned is cheaper).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from samexport.models import Sam


class EncoderGraph(nn.Module):
    """The image encoder of ``sam``, or ``image_encoder`` itself (e.g. a family's export-time
    rewrite of it), as the exported graph's module."""

    def __init__(self, sam: Sam | None = None, *, image_encoder: nn.Module | None = None) -> None:
        super().__init__()
        if (sam is None) == (image_encoder is None):
            raise TypeError("EncoderGraph takes either sam or image_encoder")
        self.image_encoder = sam.image_encoder if sam is not None else image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder, computed the official way up to float rounding, arranged for
    speed on CPU (see "Performance notes" in the design notes):

    - image tokens stay token-major (BxHWxC) throughout, so no per-prompt transposes;
    - the cross-attentions never project the image tokens (``Attention.tokens_to_image`` /
      ``image_to_tokens``), which halves the multiply-adds per prompt for up to 8 prompt tokens;
    - the transposed 2x2 stride-2 convolutions of the upscaling are matrix products over the
      channel axis, kept in sub-pixel order; LayerNorm2d becomes a LayerNormalization over the
      last axis, and GELU is written in the form ONNX Runtime fuses; one transpose at the end puts
      the 256x256 pixels in raster order;
    - the mask prompt's last 1x1 convolution is a matrix product straight into the token layout;
    - one mask input (M = 1) serves a whole batch: everything computed from the image alone
      broadcasts over the prompts instead of being repeated per prompt.

    Agrees with ``sam.prompt_encoder`` + ``sam.mask_decoder`` to ~1e-6 on logits (float rounding);
    ``tests/export/test_wrappers.py`` checks.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        # Constant for a given model: computed once, stored in the graph as an initializer.
        self.register_buffer("image_pe", sam.prompt_encoder.image_pe(), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See ``samexport.constants.DECODER_INPUTS`` for shapes; returns (masks Bx4x256x256, iou Bx4).

        ``mask_input`` / ``has_mask_input`` have M = B entries, or M = 1 for one shared by all B
        prompts (no mask prompt at all, say): the image tokens then stay a batch of one up to the
        first block's image-to-token update, and the mask embedding is computed once.
        """
        iou, mask_tokens, image_tokens = self.scores(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )
        return self.masks(mask_tokens, image_tokens), iou

    def scores(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything but the masks: (iou Bx4, mask tokens Bx4xC, image tokens BxHWxC), the
        two-way transformer's outputs that :meth:`masks` needs. About half of the decoder's work
        per prompt; the other half, :meth:`masks`, can be skipped for prompts whose IoU
        predictions already rule them out (the mask generator's ``pred_iou_thresh``)."""
        decoder = self.mask_decoder
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse], dim=1)

        keys = _tokens(image_embeddings) + self._dense_tokens(mask_input, has_mask_input)
        queries, keys = decoder.transformer.forward_tokens(keys, _tokens(self.image_pe), tokens, reassociated=True)
        iou = decoder.iou_prediction_head(queries[:, 0])
        return iou, queries[:, 1 : 1 + decoder.num_mask_tokens], keys

    def masks(self, mask_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Mask logits Bx4x256x256 from :meth:`scores`' mask and image tokens: the hypernetwork
        MLPs, the upscaling and their product."""
        decoder = self.mask_decoder
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )  # B x 4 x 32
        features = _upscale(decoder.output_upscaling, image_tokens)  # B x 65536 x 32, sub-pixel order
        masks = hyper_in @ features.transpose(1, 2)  # B x 4 x 65536
        return _raster_order(masks, image_tokens.shape[1])

    def _dense_tokens(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """``embed_masks`` as BxHWxC tokens: the no-mask embedding plus, where a mask is given,
        (downscaled mask - no-mask embedding); the last 1x1 convolution is a matrix product."""
        layers = self.prompt_encoder.mask_downscaling
        project = layers[-1]  # Conv2d 16 -> 256, kernel 1
        no_mask = self.prompt_encoder.no_mask_embed.weight  # 1 x C
        hidden = _tokens(layers[:-1](mask_input))  # B x HW x 16
        weight = project.weight.reshape(project.out_channels, project.in_channels)
        delta = nn.functional.linear(hidden, weight, project.bias - no_mask[0])
        return no_mask + has_mask_input.reshape(-1, 1, 1) * delta


class DecoderSplitGraph(nn.Module):
    """:class:`DecoderGraph` with the tensors between its two halves as outputs too: (masks,
    iou, mask tokens Bx4x256, image tokens Bx4096x256). Traced once, it is cut into
    ``decoder.onnx`` and the two halves (``samexport.export.to_onnx.export_decoders``)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.decoder = DecoderGraph(sam)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        iou, mask_tokens, image_tokens = self.decoder.scores(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input
        )
        return self.decoder.masks(mask_tokens, image_tokens), iou, mask_tokens, image_tokens


def _tokens(image: torch.Tensor) -> torch.Tensor:
    """BxCxHxW -> BxHWxC."""
    return image.flatten(2).transpose(1, 2)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in the form ONNX Runtime fuses into one Gelu op (``nn.GELU`` exports as
    x * (0.5 * (1 + erf(x / sqrt 2))), which it does not fuse)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _upscale(upscaling: nn.Sequential, keys: torch.Tensor) -> torch.Tensor:
    """``output_upscaling`` (ConvTranspose2d k2 s2, LayerNorm2d, GELU, ConvTranspose2d k2 s2, GELU)
    on BxHWxC tokens -> Bx(16*HW)x(C/8) features, pixels in sub-pixel order (y, x, dy1, dx1,
    dy2, dx2) with row 4y + 2dy1 + dy2 and column 4x + 2dx1 + dx2 of the 4x upscaled grid.

    A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output block, so it
    is one matrix product Cin -> (dy, dx, Cout) per pixel, done on 2-D views (a Gemm with bias).
    """
    up1, norm, _, up2, _ = upscaling
    batch, pixels, _ = keys.shape

    def conv_transpose(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, 4 * conv.out_channels)
        out = nn.functional.linear(x.reshape(-1, conv.in_channels), weight.t(), conv.bias.repeat(4))
        return out.reshape(-1, conv.out_channels)  # one row per output pixel

    x = conv_transpose(keys, up1)
    x = _gelu(nn.functional.layer_norm(x, (up1.out_channels,), norm.weight, norm.bias, norm.eps))
    x = _gelu(conv_transpose(x, up2))
    return x.reshape(batch, 16 * pixels, up2.out_channels)


def _raster_order(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Bx4x(16*HW) logits in the sub-pixel order of ``_upscale`` -> Bx4x(4H)x(4W)."""
    batch, count, _ = masks.shape
    side = math.isqrt(pixels)
    masks = masks.reshape(batch * count, side, side, 2, 2, 2, 2)  # y, x, dy1, dx1, dy2, dx2
    masks = masks.permute(0, 1, 3, 5, 2, 4, 6)  # y, dy1, dy2, x, dx1, dx2
    return masks.reshape(batch, count, 4 * side, 4 * side)
