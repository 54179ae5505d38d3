"""The fused attention kernel compiled to PTX as the TensorRT plugin launches it; needs Triton, no GPU.

:func:`compile_kernel` specialises the kernel of :mod:`samexport.plugins.attention_triton` for one
GPU architecture and one problem shape and returns the PTX with its launch parameters.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

import triton

from samexport.constants import VIT_WINDOW_SIZE
from samexport.errors import SamExportError
from samexport.plugins.attention_triton import (
    KERNEL_DTYPES,
    KernelConfig,
    default_config,
    problem_arguments,
    triton_kernel,
)

__all__ = ["CompiledKernel", "compile_kernel"]


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
    grid_hw: tuple[int, int] = (VIT_WINDOW_SIZE, VIT_WINDOW_SIZE),
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
    if dtype not in KERNEL_DTYPES:
        raise SamExportError(f"dtype must be one of {KERNEL_DTYPES}, got {dtype!r}")
    h, w = grid_hw
    n = h * w
    fn = triton_kernel(False)
    constants: dict = problem_arguments(grid_hw, head_dim, dtype, scale)
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
