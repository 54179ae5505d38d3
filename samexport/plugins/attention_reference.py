"""Pure-torch reference for SAM attention with the decomposed relative-position bias.

This is the numerical contract of the fused attention kernel (``attention_kernel.py``) and of the
TensorRT plugin built around it: given per-head queries, keys, values and the two small rel-pos
projections, it returns exactly what :class:`samexport.models.image_encoder.Attention` computes
before its output projection. It materialises the (HW)x(HW) bias, so it is for testing only.

Shapes use ``BH`` for batch x heads (windows x heads for windowed blocks), ``N = H * W`` tokens on
an HxW grid (row-major: token ``n`` sits at row ``n // W``, column ``n % W``) and ``D`` for the
head dimension.
"""

from __future__ import annotations

import torch

from samexport.models.image_encoder import relative_position_table


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


def expand_rel_pos_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Materialise the full BHxNxN bias from ``rel_h`` (BHxNxH) and ``rel_w`` (BHxNxW)."""
    bh, n, h = rel_h.shape
    w = rel_w.shape[-1]
    bias = rel_h[:, :, :, None] + rel_w[:, :, None, :]
    return bias.reshape(bh, n, h * w)


def reference_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    grid_hw: tuple[int, int],
    scale: float,
    compute_dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` with the decomposed bias, as ``Attention.forward``.

    Args:
        q, k, v: BHxNxD, N = H * W.
        rel_h: BHxNxH, ``rel_w``: BHxNxW, from :func:`decomposed_rel_pos`.
        grid_hw: (H, W) token grid.
        scale: softmax scale, ``head_dim ** -0.5`` in SAM.
        compute_dtype: dtype to compute in (default float32, the accuracy oracle for fp16
            inputs); ``None`` computes in the inputs' dtype, op for op like the torch model.

    Returns:
        BHxNxD attention output in q's dtype.
    """
    h, w = grid_hw
    if q.shape[1] != h * w:
        raise ValueError(f"q has {q.shape[1]} tokens, grid {h}x{w} needs {h * w}")
    out_dtype = q.dtype
    if compute_dtype is not None:
        q, k, v, rel_h, rel_w = (t.to(compute_dtype) for t in (q, k, v, rel_h, rel_w))
    attn = (q * scale) @ k.transpose(-2, -1) + expand_rel_pos_bias(rel_h, rel_w)
    return (attn.softmax(dim=-1) @ v).to(out_dtype)
