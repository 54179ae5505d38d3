"""The fused rel-pos attention kernel as a TensorRT plugin (quickly deployable Python plugin, AOT).

:func:`register_tensorrt_plugin` registers ``samexport::SamRelPosAttention`` with TensorRT's
``tensorrt.plugin`` API, so the ONNX parser imports the ``plugin`` graphs' nodes (see
``samexport.plugins.onnx_node``) as plugin layers. The plugin has only an ahead-of-time
implementation: at build time it compiles the Triton kernel to PTX for the building GPU, and
TensorRT embeds that PTX in the engine. The engine then runs in any TensorRT runtime (C++,
``trtexec``) with no Python, Triton or registration at inference.

Which TensorRT gets what:

- TensorRT >= 10.9: the plugin (``--attention plugin``). 10.9 is where the quickly deployable
  plugin API, including ``aot_impl``, became a stable feature; 10.10 also reads the plugin
  namespace from the node's domain (the nodes carry it both ways).
- TensorRT >= 10.14 can also take ``--attention onnx-attention`` (ONNX ``Attention`` imported as
  ``IAttention``); it still materialises the bias as a mask.
- Older TensorRT, e.g. 10.3 on Jetson JetPack 6: no Python plugin API; use
  ``--attention fused-pattern`` (:func:`default_attention` picks it).

The kernel's calling convention under TensorRT: the AOT plugin launches the kernel with the input
pointers, then the symbolic int32 "extra" arguments, then the output pointers. Here every stride
and the softmax scale are compile-time constants (all shapes but the batch x heads axis are fixed
by the graph), so the entry point takes exactly ``(q, k, v, rel_h, rel_w, out)``; the batch x heads
axis is the launch grid's second dimension. Triton appends two scratch-buffer pointers to every
kernel; this kernel uses no scratch memory, so they are removed from the PTX entry
(:func:`compile_plugin_kernel` checks they are unused).

Not yet run on a GPU: the registration and AOT path follow NVIDIA's documented API and sample
(``samples/python/quickly_deployable_plugins``); ``tests/test_attention_modes.py`` has the GPU
checks, skipped without TensorRT and a GPU. Three assumptions only a GPU run can confirm: that
TensorRT accepts an empty list of extra scalar kernel arguments (``SymIntExprs(0)``), that the
batch-x-heads shape expression is accepted as the launch grid's y dimension, and that the
pointer-only calling convention (Triton's unused scratch pointers removed from the PTX) launches.
"""

# No ``from __future__ import annotations`` here: ``tensorrt.plugin`` inspects the registered
# functions' annotations at runtime and needs real types, not strings.

import ctypes
import re
from dataclasses import dataclass
from typing import Literal

from samexport.errors import MissingExtraError, SamExportError
from samexport.plugins.onnx_node import PLUGIN_ID

MIN_TENSORRT = (10, 9)
MIN_TENSORRT_ONNX_ATTENTION = (10, 14)
_registered = False


def _release(version: str) -> tuple[int, int]:
    major, minor, *_ = (int(part) for part in re.findall(r"\d+", version)[:2] + ["0", "0"])
    return major, minor


def supports_plugin(tensorrt_version: str) -> bool:
    """True when TensorRT ``tensorrt_version`` (e.g. "10.13.3.9") can run the plugin."""
    return _release(tensorrt_version) >= MIN_TENSORRT


def default_attention(tensorrt_version: str | None) -> Literal["plugin", "fused-pattern"]:
    """The attention export for a TensorRT version: the plugin where it exists, else the MHA-fusion pattern."""
    return "plugin" if tensorrt_version and supports_plugin(tensorrt_version) else "fused-pattern"


@dataclass(frozen=True)
class PluginKernel:
    """The kernel compiled for one plugin configuration.

    Attributes:
        name: PTX entry point.
        ptx: PTX text; the entry takes ``(q, k, v, rel_h, rel_w, out)`` pointers only.
        block_m: query tokens per program (launch grid x = ceil(N / block_m)).
        threads: threads per program (launch block x).
        shared_mem: dynamic shared memory bytes per program.
    """

    name: str
    ptx: str
    block_m: int
    threads: int
    shared_mem: int


def compile_plugin_kernel(
    target: str,
    *,
    grid_hw: tuple[int, int],
    head_dim: int,
    dtype: Literal["fp16", "fp32"],
    scale: float,
    ptx_version: int | None = None,
    max_shared_mem: int = 48 * 1024,
) -> PluginKernel:
    """Compile the kernel as the plugin launches it: contiguous tensors, constants baked in.

    Needs Triton but no GPU (tests compile it on CPU).

    Args:
        target: ``"sm_XY"``, e.g. ``"sm_87"`` for Jetson Orin.
        grid_hw: token grid (14, 14) for windowed blocks, (64, 64) for global ones.
        head_dim: 64 (vit_b/l) or 80 (vit_h).
        dtype: element type of all five inputs and the output.
        scale: softmax scale (``head_dim ** -0.5`` in SAM).
        ptx_version: PTX ISA version x 10 (see :func:`ptx_version_for_driver`); None: Triton's.
        max_shared_mem: shared-memory budget per program. A kernel may use more than 48 KB only
            after an explicit opt-in (``cuFuncSetAttribute``) that TensorRT's AOT plugin launch is
            not documented to make, so the default tiles are shrunk until they fit 48 KB.

    Raises:
        SamExportError: bad target, or the compiled kernel does not have the expected entry.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from samexport.plugins import attention_kernel as ak

    if not (target.startswith("sm_") and target[3:].isdigit()):
        raise SamExportError(f"target must look like 'sm_87', got {target!r}")
    capability = int(target[3:])
    h, w = grid_hw
    n = h * w
    fn = ak._kernel(False)
    pointers = ("Q", "K", "V", "REL_H", "REL_W", "OUT")
    block_d, block_d2 = ak._split_head_dim(head_dim)
    constants: dict = {
        "GRID_H": h,
        "GRID_W": w,
        "W_PAD": triton.next_power_of_2(w),
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "BLOCK_D2": block_d2,
        "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32",  # as ak._input_precision
        "qk_scale": scale * ak.LOG2E,
    }
    # Contiguous BHxNxD (q, k, v, out), BHxNxH (rel_h), BHxNxW (rel_w): strides are constants.
    for prefix, last in {"q": head_dim, "k": head_dim, "v": head_dim, "h": h, "w": w, "o": head_dim}.items():
        names = [name for name in fn.arg_names if name.startswith(f"stride_{prefix}")]
        constants.update(zip(names, (n * last, last, 1)))
    signature = {name: "constexpr" for name in fn.arg_names}
    signature.update({name: f"*{dtype}" for name in pointers})
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    candidates = (
        ak.default_config(grid_hw, dtype),
        ak.KernelConfig(64, 64, 4, 2),
        ak.KernelConfig(64, 64, 4, 1),
        ak.KernelConfig(32, 32, 4, 1),
    )
    for config in candidates:
        constants.update(BLOCK_M=config.block_m, BLOCK_N=config.block_n)
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
            target=GPUTarget("cuda", capability, 32),
            options={"num_warps": config.num_warps, "num_stages": config.num_stages, "ptx_version": ptx_version},
        )
        if compiled.metadata.shared <= max_shared_mem:
            break
    else:
        raise SamExportError(f"no kernel tiling fits {max_shared_mem} bytes of shared memory")
    metadata = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(metadata, scratch, 0):
            raise SamExportError(f"the kernel needs Triton {scratch}={getattr(metadata, scratch)}; the plugin has none")
    ptx = _drop_unused_trailing_params(compiled.asm["ptx"], metadata.name, keep=len(pointers))
    return PluginKernel(metadata.name, ptx, config.block_m, metadata.num_warps * 32, metadata.shared)


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


# CUDA driver version (cuDriverGetVersion: 1000 * major + 10 * minor) -> newest PTX ISA it JIT-compiles.
_PTX_ISA_BY_DRIVER = [
    (12090, None),  # 12.9+: Triton's default (8.8 for Triton 3.8)
    (12080, 87),
    (12050, 85),  # 12.5 and 12.6
    (12040, 84),
    (12030, 83),
    (12020, 82),  # JetPack 6.0
    (12010, 81),
    (12000, 80),
]


def ptx_version_for_driver(driver_version: int) -> int | None:
    """The PTX ISA version (x 10) to emit for a CUDA driver; None means Triton's default.

    Raises:
        SamExportError: drivers older than CUDA 12.0 (sm_90 and Triton need PTX >= 8.0).
    """
    for minimum, isa in _PTX_ISA_BY_DRIVER:
        if driver_version >= minimum:
            return isa
    raise SamExportError(f"the plugin needs a CUDA 12.0 or newer driver, found {driver_version}")


def _cuda_driver_version() -> int:
    cuda = ctypes.CDLL("libcuda.so.1")
    version = ctypes.c_int()
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        raise SamExportError("cuDriverGetVersion failed")
    return version.value


def _building_target() -> tuple[str, int | None]:
    """``("sm_XY", ptx_version)`` for the first CUDA device and its driver."""
    from samexport.engines import NoGpuError, cuda_devices

    try:
        gpu = cuda_devices()[0]
    except NoGpuError as exc:
        raise SamExportError(f"building the attention plugin needs a CUDA GPU: {exc}") from None
    return "sm_" + gpu.compute_capability.replace(".", ""), ptx_version_for_driver(_cuda_driver_version())


def _load_plugin_api():
    """``(tensorrt, tensorrt.plugin)``; MissingExtraError / SamExportError when unusable."""
    import importlib

    from samexport.engines import load_tensorrt

    trt = load_tensorrt("tensorrt")
    version = getattr(trt, "__version__", "0")
    hint = "export the encoder with --attention fused-pattern instead"
    if not supports_plugin(version):
        raise SamExportError(
            f"TensorRT {version} has no quickly deployable plugin API (needs >= "
            f"{'.'.join(map(str, MIN_TENSORRT))}); {hint}"
        )
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except ImportError as exc:
        raise MissingExtraError(f"tensorrt.plugin is not importable ({exc}); {hint}") from exc
    if not hasattr(trtp, "aot_impl"):
        raise SamExportError(f"TensorRT {version}'s tensorrt.plugin has no aot_impl; {hint}")
    return trt, trtp


def register_tensorrt_plugin() -> None:
    """Register ``samexport::SamRelPosAttention`` with TensorRT (once per process).

    Call before parsing a ``--attention plugin`` encoder. Needs TensorRT >= 10.9 and Triton
    (the ``plugin`` extra); the AOT implementation compiles for the first CUDA device.

    Raises:
        MissingExtraError: TensorRT, ``tensorrt.plugin`` or Triton is not installed.
        SamExportError: TensorRT is older than 10.9.
    """
    global _registered
    if _registered:
        return
    trt, trtp = _load_plugin_api()
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            "triton is not installed; install it with: pip install 'samexport[plugin]'"
        ) from exc

    def describe(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        rel_h: trtp.TensorDesc,
        rel_w: trtp.TensorDesc,
        grid_h: int,
        grid_w: int,
        head_dim: int,
        scale: float,
    ) -> trtp.TensorDesc:
        """Output: same shape and type as q (BHxNxD)."""
        return q.like()

    def formats(q, k, v, rel_h, rel_w, outputs):
        """All six tensors FP16, or all FP32; linear layout."""
        return [trtp.AutoTuneCombination(", ".join(["FP16|FP32"] * 6))]

    def compile_for_engine(
        q, k, v, rel_h, rel_w, grid_h: int, grid_w: int, head_dim: int, scale: float, outputs, tactic
    ):
        """PTX of the kernel for this node's shapes and type, and how to launch it."""
        _check_static_shapes(q, rel_h, rel_w, grid_h=grid_h, grid_w=grid_w, head_dim=head_dim)
        dtype = "fp16" if q.dtype == trt.float16 else "fp32"
        target, ptx_version = _building_target()
        kernel = compile_plugin_kernel(
            target, grid_hw=(grid_h, grid_w), head_dim=head_dim, dtype=dtype, scale=scale, ptx_version=ptx_version
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x = -(-(grid_h * grid_w) // kernel.block_m)  # query tiles
        launch.grid_y = q.shape_expr[0]  # batch x heads (windows x heads in windowed blocks)
        launch.block_x = kernel.threads
        launch.shared_mem = kernel.shared_mem
        return kernel.name, kernel.ptx, launch, trtp.SymIntExprs(0)  # no scalar arguments

    trtp.register(PLUGIN_ID)(describe)
    trtp.autotune(PLUGIN_ID)(formats)
    trtp.aot_impl(PLUGIN_ID)(compile_for_engine)
    _registered = True


def _check_static_shapes(q, rel_h, rel_w, *, grid_h: int, grid_w: int, head_dim: int) -> None:
    """The node's attributes must agree with its tensors' static dims (N, D, H, W)."""
    expected = {
        ("q", 1): grid_h * grid_w,
        ("q", 2): head_dim,
        ("rel_h", 2): grid_h,
        ("rel_w", 2): grid_w,
    }
    tensors = {"q": q, "rel_h": rel_h, "rel_w": rel_w}
    for (name, axis), value in expected.items():
        dim = tensors[name].shape_expr[axis]
        if not dim.is_constant:
            raise SamExportError(f"{PLUGIN_ID}: {name} axis {axis} must be static (only batch x heads may vary)")
        if dim.constant_value() != value:
            raise SamExportError(
                f"{PLUGIN_ID}: {name} axis {axis} is {dim.constant_value()}, attributes say {value}"
            )
