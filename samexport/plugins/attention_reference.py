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

# The rel-pos projections and the bias they make are formed once, with the model.
from samexport.models.image_encoder import decomposed_rel_pos, expand_rel_pos_bias

__all__ = ["check_rel_pos_inputs", "decomposed_rel_pos", "expand_rel_pos_bias", "reference_rel_pos_attention"]


def check_rel_pos_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
    *, grid_hw: tuple[int, int],
) -> None:
    """Raise ``ValueError`` unless q, k, v are BHxNxD with N = H * W, rel_h BHxNxH and rel_w BHxNxW.

    The one shape contract of this reference (the plugin node's eager implementation) and of the
    fused kernel; dtypes are the caller's to check (the reference takes any, the kernel float16 or
    float32).
    """
    h, w = grid_hw
    if q.dim() != 3:
        raise ValueError(f"q must be BHxNxD, got shape {tuple(q.shape)}")
    bh, n, _ = q.shape
    if n != h * w:
        raise ValueError(f"q has {n} tokens but grid {h}x{w} has {h * w}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if rel_h.shape != (bh, n, h) or rel_w.shape != (bh, n, w):
        raise ValueError(
            f"rel_h must be {(bh, n, h)} and rel_w {(bh, n, w)}, "
            f"got {tuple(rel_h.shape)} and {tuple(rel_w.shape)}"
        )


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

    Raises:
        ValueError: shapes outside the contract of :func:`check_rel_pos_inputs`.
    """
    check_rel_pos_inputs(q, k, v, rel_h, rel_w, grid_hw=grid_hw)
    out_dtype = q.dtype
    if compute_dtype is not None:
        q, k, v, rel_h, rel_w = (t.to(compute_dtype) for t in (q, k, v, rel_h, rel_w))
    attn = (q * scale) @ k.transpose(-2, -1) + expand_rel_pos_bias(rel_h, rel_w)
    return (attn.softmax(dim=-1) @ v).to(out_dtype)
