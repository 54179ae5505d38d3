"""Fused SAM attention kernel (Triton): softmax(q k^T * scale + decomposed rel-pos bias) v.

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
without a GPU (:func:`compile_kernel`, for sm_80 / sm_87 Jetson Orin / sm_90; the TensorRT plugin's
kernel) and runs on CUDA.
"""

from __future__ import annotations

import functools
import re
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from samexport.errors import SamExportError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CompiledKernel",
    "KernelConfig",
    "compile_kernel",
    "default_config",
    "fused_rel_pos_attention",
]

LOG2E = 1.4426950408889634
_DTYPES = ("fp16", "fp32")

# Reduction combiners the kernel calls; rebound per mode by :func:`_kernel`.
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
def _kernel(interpret: bool):
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

    h, w = grid_hw
    if q.dim() != 3:
        raise ValueError(f"q must be BHxNxD, got shape {tuple(q.shape)}")
    bh, n, d = q.shape
    if n != h * w:
        raise ValueError(f"q has {n} tokens but grid {h}x{w} has {h * w}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if rel_h.shape != (bh, n, h) or rel_w.shape != (bh, n, w):
        raise ValueError(
            f"rel_h must be {(bh, n, h)} and rel_w {(bh, n, w)}, "
            f"got {tuple(rel_h.shape)} and {tuple(rel_w.shape)}"
        )
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
    _kernel(interpret)[grid](
        q, k, v, rel_h, rel_w, out,
        *q.stride(), *k.stride(), *v.stride(), *rel_h.stride(), *rel_w.stride(), *out.stride(),
        scale * LOG2E,
        GRID_H=h,
        GRID_W=w,
        HEAD_DIM=d,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        W_PAD=triton.next_power_of_2(w),
        BLOCK_D=_split_head_dim(d)[0],
        BLOCK_D2=_split_head_dim(d)[1],
        INPUT_PRECISION=_input_precision(dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class CompiledKernel:
    """The kernel compiled for one GPU architecture and one problem, as the TensorRT plugin runs it.

    Attributes:
        name: PTX entry point.
        ptx: PTX assembly text; the entry takes the ``(q, k, v, rel_h, rel_w, out)`` pointers only.
        block_m: query tokens per program: launch grid x = ceil(N / block_m), grid y = batch x heads.
        threads: threads per program (launch block x).
        shared_mem: dynamic shared memory bytes per program.
    """

    name: str
    ptx: str
    block_m: int
    threads: int
    shared_mem: int


_POINTERS = ("Q", "K", "V", "REL_H", "REL_W", "OUT")


def compile_kernel(
    target: str = "sm_87",
    *,
    grid_hw: tuple[int, int] = (14, 14),
    head_dim: int = 64,
    dtype: Literal["fp16", "fp32"] = "fp16",
    scale: float | None = None,
    config: KernelConfig | None = None,
    ptx_version: int | None = None,
    max_shared_mem: int = 48 * 1024,
) -> CompiledKernel:
    """Compile the kernel to PTX for one GPU architecture; needs Triton but no GPU.

    The kernel is specialised as the TensorRT plugin launches it: contiguous BHxNxD q, k, v and
    output, BHxNxH rel_h and BHxNxW rel_w, so every stride and the softmax scale are compile-time
    constants and the entry takes exactly the six tensor pointers (Triton's two scratch-buffer
    pointers, unused by this kernel, are removed; that they are unused is checked). Results are
    cached: TensorRT asks for the kernel once per format combination.

    Args:
        target: ``"sm_XY"`` compute capability, e.g. ``"sm_80"`` (A100), ``"sm_87"`` (Jetson
            Orin), ``"sm_90"`` (H100; Triton emits ``sm_90a``).
        grid_hw: token grid, (14, 14) for windowed blocks and (64, 64) for global ones.
        head_dim: head size (64 for vit_b/l, 80 for vit_h).
        dtype: element type of q, k, v, rel_h, rel_w and the output.
        scale: softmax scale; None: ``head_dim ** -0.5`` as in SAM.
        config: tile sizes; None: :func:`default_config`, shrunk until it fits ``max_shared_mem``.
        ptx_version: PTX ISA version times ten (e.g. 82 for CUDA 12.2, JetPack 6.0; 85 for CUDA
            12.6). None takes Triton's default for its bundled ptxas (8.8 in Triton 3.8), which a
            driver older than CUDA 12.8 cannot JIT-compile. sm_90 needs at least 80.
        max_shared_mem: shared memory budget per program. More than 48 KB needs an explicit opt-in
            (``cuFuncSetAttribute``) that TensorRT's AOT plugin launch is not documented to make.

    Returns:
        The PTX (with ``.target sm_XY``, ``sm_90a`` for sm_90) and its launch parameters.

    Raises:
        SamExportError: a malformed target, a PTX version too old for it, no tiling within the
            shared memory budget, or a kernel that needs Triton's scratch memory.
    """
    return _compile_kernel(
        target, (int(grid_hw[0]), int(grid_hw[1])), int(head_dim), dtype,
        float(head_dim**-0.5 if scale is None else scale), config, ptx_version, int(max_shared_mem),
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _compile_kernel(target, grid_hw, head_dim, dtype, scale, config, ptx_version, max_shared_mem) -> CompiledKernel:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not (isinstance(target, str) and target.startswith("sm_") and target[3:].isdigit()):
        raise SamExportError(f"target must look like 'sm_87', got {target!r}")
    capability = int(target[3:])
    if ptx_version is not None and capability >= 90 and ptx_version < 80:
        # LLVM aborts the process (not an exception) on this combination.
        raise SamExportError(f"{target} needs ptx_version >= 80, got {ptx_version}")
    if dtype not in _DTYPES:
        raise SamExportError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    h, w = grid_hw
    n = h * w
    fn = _kernel(False)
    block_d, block_d2 = _split_head_dim(head_dim)
    constants: dict = {
        "GRID_H": h,
        "GRID_W": w,
        "W_PAD": triton.next_power_of_2(w),
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "BLOCK_D2": block_d2,
        "INPUT_PRECISION": _input_precision(dtype),
        "qk_scale": scale * LOG2E,
    }
    # Contiguous BHxNxD (q, k, v, out), BHxNxH (rel_h), BHxNxW (rel_w): strides are constants.
    for prefix, last in {"q": head_dim, "k": head_dim, "v": head_dim, "h": h, "w": w, "o": head_dim}.items():
        names = [name for name in fn.arg_names if name.startswith(f"stride_{prefix}")]
        constants.update(zip(names, (n * last, last, 1)))
    signature = {name: "constexpr" for name in fn.arg_names}
    signature.update({name: f"*{dtype}" for name in _POINTERS})
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in _POINTERS}
    if config is not None:
        candidates: tuple[KernelConfig, ...] = (config,)
    else:
        candidates = (
            default_config(grid_hw, dtype),
            KernelConfig(64, 64, 4, 2),
            KernelConfig(64, 64, 4, 1),
            KernelConfig(32, 32, 4, 1),
        )
    for candidate in candidates:
        constants.update(BLOCK_M=candidate.block_m, BLOCK_N=candidate.block_n)
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
            target=GPUTarget("cuda", capability, 32),
            options={"num_warps": candidate.num_warps, "num_stages": candidate.num_stages, "ptx_version": ptx_version},
        )
        if compiled.metadata.shared <= max_shared_mem:
            break
    else:
        raise SamExportError(f"no kernel tiling fits {max_shared_mem} bytes of shared memory")
    metadata = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(metadata, scratch, 0):
            raise SamExportError(f"the kernel needs Triton {scratch}={getattr(metadata, scratch)}; the plugin has none")
    ptx = _drop_unused_trailing_params(compiled.asm["ptx"], metadata.name, keep=len(_POINTERS))
    return CompiledKernel(metadata.name, ptx, candidate.block_m, metadata.num_warps * 32, metadata.shared)


def _drop_unused_trailing_params(ptx: str, entry: str, *, keep: int) -> str:
    """Remove the PTX entry's parameters after the first ``keep`` if the body never reads them."""
    header = re.search(rf"\.entry {re.escape(entry)}\((.*?)\)", ptx, re.DOTALL)
    if header is None:
        raise SamExportError(f"entry {entry} not found in the compiled PTX")
    params = [p.strip() for p in header.group(1).split(",") if p.strip()]
    names = [p.split()[-1] for p in params]
    for name in names[keep:]:
        if len(re.findall(rf"\b{re.escape(name)}\b", ptx)) != 1:
            raise SamExportError(f"kernel parameter {name} is used; cannot drop it from the plugin entry")
    body = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[: header.start(1)] + "\n" + body + "\n" + ptx[header.end(1) :]
