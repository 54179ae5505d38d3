"""The fused SAM attention kernel in Triton: softmax(q k^T * scale + decomposed rel-pos bias) v.

SAM's image encoder adds a relative-position bias ``bias[n, m] = rel_h[n, m // W] + rel_w[n, m % W]``
to every attention logit, where ``rel_h = q . R_h`` (BHxNxH) and ``rel_w = q . R_w`` (BHxNxW) are
small projections of the unscaled queries (see :func:`attention_reference.decomposed_rel_pos`).
Generic fused attention cannot take it without materialising a BHxNxN tensor (12x4096x4096 per
global vit_b block, about 400 MB in FP16). This kernel forms the bias per tile from the key index
instead, inside a flash-attention style online softmax with FP32 accumulation:

- one program per (query tile of ``BLOCK_M`` tokens, batch x head);
- queries, keys and values may be FP16 or FP32 and arbitrarily strided (e.g. views of the qkv
  projection), the output is written contiguous in q's dtype;
- any token count (196 for a 14x14 window, 4096 for the global 64x64 grid): keys are walked on
  the grid with its width padded to a power of two (14 -> 16), so each key tile's row and column
  are shifts and masks and its bias is one contiguous load per query row;
- any head size: 64 for vit_b/l, 80 for vit_h, split in power-of-two blocks (64 + 16) so no
  multiply-adds are wasted on padding.

The same Python function runs under the Triton interpreter on CPU (tests), compiles to PTX
without a GPU (:func:`attention_ptx.compile_kernel`, for sm_80 / sm_87 Jetson Orin / sm_90; the
TensorRT plugin's kernel) and runs on CUDA (:func:`attention_kernel.fused_rel_pos_attention`).
This module holds the kernel body, its interpreted and JIT builds, and the tile configuration
both of those callers choose from.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Literal

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = ["KERNEL_DTYPES", "KernelConfig", "default_config", "problem_arguments", "triton_kernel"]

LOG2E = 1.4426950408889634
KERNEL_DTYPES = ("fp16", "fp32")

# Reduction combiners the kernel calls; rebound per mode by :func:`triton_kernel`.
_max_combine = tl.standard._elementwise_max
_sum_combine = tl.standard._sum_combine


def _rel_pos_attention_fwd(
    Q, K, V, REL_H, REL_W, OUT,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    stride_hb, stride_hn, stride_hk,
    stride_wb, stride_wn, stride_wk,
    stride_ob, stride_on, stride_od,
    qk_scale,  # softmax scale * log2(e): the softmax runs in base 2
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
    W_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_D2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One query tile of one (batch x head): online softmax over all key tiles.

    The head dimension is split in two power-of-two parts, ``BLOCK_D`` and ``BLOCK_D2`` (0 when
    HEAD_DIM is a power of two; 64 + 16 for 80), so no multiply-adds are wasted on padding.
    """
    N: tl.constexpr = GRID_H * GRID_W
    KEY_ROWS: tl.constexpr = BLOCK_N // W_PAD
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q_rows = Q + pid_b * stride_qb + offs_m[:, None] * stride_qn
    q = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if BLOCK_D2 > 0:
        offs_d2 = BLOCK_D + tl.arange(0, BLOCK_D2)
        mask_d2 = offs_d2 < HEAD_DIM
        q2 = tl.load(q_rows + offs_d2[None, :] * stride_qd, mask=mask_m[:, None] & mask_d2[None, :], other=0.0)
        acc2 = tl.full([BLOCK_M, BLOCK_D2], 0.0, dtype=tl.float32)
    rel_h_row = REL_H + pid_b * stride_hb + offs_m[:, None] * stride_hn
    rel_w_row = REL_W + pid_b * stride_wb + offs_m[:, None] * stride_wn
    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)

    # Keys are visited on a row-padded HxW_PAD grid (W_PAD = next power of two >= W), so that a key
    # tile's row and column follow from shifts and masks and a tile holds whole rows or part of
    # one: the row bias is then KEY_ROWS (or one) values per query and the column bias a
    # contiguous load. Padding columns (W <= kw < W_PAD) are masked out.
    for start in range(0, GRID_H * W_PAD, BLOCK_N):
        offs_p = start + tl.arange(0, BLOCK_N)
        key_row = offs_p // W_PAD
        key_col = offs_p % W_PAD
        mask_n = (key_col < GRID_W) & (key_row < GRID_H)
        offs_n = key_row * GRID_W + key_col
        k_cols = k_base + offs_n[None, :] * stride_kn
        k_t = tl.load(k_cols + offs_d[:, None] * stride_kd, mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        s = tl.dot(q, k_t, input_precision=INPUT_PRECISION)
        if BLOCK_D2 > 0:
            mask_k2 = mask_n[None, :] & mask_d2[:, None]
            k_t2 = tl.load(k_cols + offs_d2[:, None] * stride_kd, mask=mask_k2, other=0.0)
            s = tl.dot(q2, k_t2, s, input_precision=INPUT_PRECISION)

        # Decomposed bias from the query rows' small H- and W-long tables, never (HW)x(HW).
        mask_mn = mask_m[:, None] & mask_n[None, :]
        bias = tl.load(rel_w_row + key_col[None, :] * stride_wk, mask=mask_mn, other=0.0).to(tl.float32)
        if KEY_ROWS <= 1:
            bias_h = tl.load(rel_h_row + (start // W_PAD) * stride_hk, mask=mask_m[:, None], other=0.0)
        else:
            rows = start // W_PAD + tl.arange(0, KEY_ROWS)
            bias_h = tl.load(
                rel_h_row + rows[None, :] * stride_hk, mask=mask_m[:, None] & (rows < GRID_H)[None, :], other=0.0
            )
            bias_h = tl.broadcast_to(bias_h[:, :, None], [BLOCK_M, KEY_ROWS, W_PAD])
            bias_h = tl.reshape(bias_h, [BLOCK_M, BLOCK_N])
        bias += bias_h.to(tl.float32)
        s = tl.where(mask_n[None, :], s * qk_scale + bias * 1.4426950408889634, float("-inf"))  # log2(e)

        m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
        m_i = m_new

        v_rows = v_base + offs_n[:, None] * stride_vn
        v = tl.load(v_rows + offs_d[None, :] * stride_vd, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        p = p.to(v.dtype)
        acc = tl.dot(p, v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        if BLOCK_D2 > 0:
            v2 = tl.load(v_rows + offs_d2[None, :] * stride_vd, mask=mask_n[:, None] & mask_d2[None, :], other=0.0)
            acc2 = tl.dot(p, v2, acc2 * alpha[:, None], input_precision=INPUT_PRECISION)

    out_rows = OUT + pid_b * stride_ob + offs_m[:, None] * stride_on
    out_ty = OUT.dtype.element_ty
    mask_out = mask_m[:, None] & mask_d[None, :]
    tl.store(out_rows + offs_d[None, :] * stride_od, (acc / l_i[:, None]).to(out_ty), mask=mask_out)
    if BLOCK_D2 > 0:
        mask_out2 = mask_m[:, None] & mask_d2[None, :]
        tl.store(out_rows + offs_d2[None, :] * stride_od, (acc2 / l_i[:, None]).to(out_ty), mask=mask_out2)


@functools.cache
def triton_kernel(interpret: bool):
    """The kernel as a Triton JIT function, or as an interpreted one (CPU, numpy).

    Built here rather than with ``@triton.jit`` at import, so one process can both interpret the
    kernel and compile it to PTX whatever ``TRITON_INTERPRET`` was when triton was imported (which
    fixes triton's own library functions as compiled or interpreted). The kernel calls only
    builtins plus two reduction combiners, bound per mode: the compiler needs JIT functions, the
    interpreter recognises triton's own combiner objects and reduces with numpy instead of one
    Python call per element.
    """
    from triton.runtime.interpreter import InterpretedFunction

    combiners = {"_max_combine": tl.standard._elementwise_max, "_sum_combine": tl.standard._sum_combine}
    if not interpret:
        combiners = {
            name: JITFunction(fn.fn) if isinstance(fn, InterpretedFunction) else fn
            for name, fn in combiners.items()
        }
    body = _rel_pos_attention_fwd
    fn = types.FunctionType(body.__code__, {**body.__globals__, **combiners}, body.__name__)
    return InterpretedFunction(fn) if interpret else JITFunction(fn)


@dataclass(frozen=True)
class KernelConfig:
    """Launch configuration: tile sizes and GPU scheduling hints.

    Attributes:
        block_m: queries per program, a power of two >= 16.
        block_n: keys per inner step on the row-padded key grid, a power of two >= 16.
        num_warps, num_stages: Triton scheduling hints (ignored by the interpreter).
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")


def _split_head_dim(head_dim: int) -> tuple[int, int]:
    """Head dim as power-of-two blocks (lo, hi), hi = 0 if not needed: 64 -> (64, 0), 80 -> (64, 16)."""
    lo = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - lo
    return lo, 0 if rest <= 0 else max(16, triton.next_power_of_2(rest))


def default_config(
    grid_hw: tuple[int, int], dtype: Literal["fp16", "fp32"] = "fp16", *, interpret: bool = False
) -> KernelConfig:
    """Tile sizes for a problem.

    The GPU choices keep every SAM shape free of register spills on sm_80/87/90 (checked with
    ``ptxas -v``); they are not yet tuned on hardware. The interpreter runs numpy per tile, so it
    gets few, large tiles.
    """
    h, w = grid_hw
    if interpret:
        return KernelConfig(
            block_m=min(256, max(16, triton.next_power_of_2(h * w))),
            block_n=min(256, max(16, triton.next_power_of_2(h * triton.next_power_of_2(w)))),
        )
    if dtype == "fp32":  # IEEE FMA dots hold whole tiles in registers: keep them small.
        return KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=2)
    if w <= 16:  # windows: one 16-wide padded key row per step
        return KernelConfig(block_m=64, block_n=16, num_warps=4, num_stages=2)
    return KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=2)


def _input_precision(dtype: Literal["fp16", "fp32"]) -> str:
    # FP32 inputs are the accuracy path: keep IEEE products instead of TF32 tensor cores.
    return "ieee" if dtype == "fp32" else "tf32"


def problem_arguments(
    grid_hw: tuple[int, int], head_dim: int, dtype: Literal["fp16", "fp32"], scale: float
) -> dict[str, object]:
    """The kernel arguments a problem fixes, whatever the tiling and the tensors' strides.

    The token grid and its padded width, the head dimension and its power-of-two blocks, the dot
    precision for ``dtype`` and the softmax scale in base 2 (``scale * log2(e)``), by parameter
    name: keyword arguments for a launch, constants for a compile.
    """
    h, w = grid_hw
    block_d, block_d2 = _split_head_dim(head_dim)
    return {
        "GRID_H": h,
        "GRID_W": w,
        "W_PAD": triton.next_power_of_2(w),
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "BLOCK_D2": block_d2,
        "INPUT_PRECISION": _input_precision(dtype),
        "qk_scale": scale * LOG2E,
    }
