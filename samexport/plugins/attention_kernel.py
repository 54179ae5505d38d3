"""Fused SAM attention (Triton) on torch tensors: softmax(q k^T * scale + decomposed rel-pos bias) v.

:func:`fused_rel_pos_attention` launches the kernel, on CUDA or under the Triton interpreter on
CPU. This module is also the kernel's public face: the kernel itself and its tile configuration
live in :mod:`samexport.plugins.attention_triton`, the PTX build for the TensorRT plugin in
:mod:`samexport.plugins.attention_ptx`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton

from samexport.plugins.attention_ptx import CompiledKernel, compile_kernel
from samexport.plugins.attention_triton import KernelConfig, default_config, problem_arguments, triton_kernel

if TYPE_CHECKING:
    import torch

__all__ = [
    "CompiledKernel",
    "KernelConfig",
    "compile_kernel",
    "default_config",
    "fused_rel_pos_attention",
]


def fused_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    grid_hw: tuple[int, int],
    scale: float,
    config: KernelConfig | None = None,
    interpret: bool | None = None,
) -> torch.Tensor:
    """SAM attention with the decomposed rel-pos bias formed on the fly, never as BHxNxN.

    Args:
        q, k, v: BHxNxD float16 or float32, N = H * W tokens in row-major grid order; any
            strides (views of the qkv projection are fine).
        rel_h: BHxNxH, ``q . R_h`` for each query and key row (unscaled q).
        rel_w: BHxNxW, ``q . R_w`` for each query and key column.
        grid_hw: (H, W) token grid: (14, 14) for windowed blocks, (64, 64) for global ones.
        scale: softmax scale, ``head_dim ** -0.5`` in SAM.
        config: tile sizes; :func:`default_config` when ``None``.
        interpret: run under the Triton interpreter (numpy, CPU tensors). Default: when the
            tensors are not on a CUDA device.

    Returns:
        BHxNxD contiguous tensor in q's dtype, equal to
        :func:`attention_reference.reference_rel_pos_attention` up to rounding.
    """
    import torch

    from samexport.plugins.attention_reference import check_rel_pos_inputs

    check_rel_pos_inputs(q, k, v, rel_h, rel_w, grid_hw=grid_hw)
    bh, n, d = q.shape
    if q.dtype not in (torch.float16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share dtype float16 or float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if interpret is None:
        interpret = q.device.type != "cuda"
    if not interpret and q.device.type != "cuda":
        raise ValueError("the compiled kernel needs CUDA tensors; pass interpret=True for CPU")
    dtype = "fp16" if q.dtype == torch.float16 else "fp32"
    config = config or default_config(grid_hw, dtype, interpret=interpret)

    out = torch.empty((bh, n, d), dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(n, config.block_m), bh)
    triton_kernel(interpret)[grid](
        q, k, v, rel_h, rel_w, out,
        *q.stride(), *k.stride(), *v.stride(), *rel_h.stride(), *rel_w.stride(), *out.stride(),
        **problem_arguments(grid_hw, d, dtype, scale),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return out
