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
  ``--attention fused-pattern``.

(The first release of each is recorded once, in ``samexport.engines.trt_api.FEATURES``.)

The kernel's calling convention under TensorRT: the AOT plugin launches the kernel with the input
pointers, then the symbolic int32 "extra" arguments, then the output pointers. Here every stride
and the softmax scale are compile-time constants (all shapes but the batch x heads axis are fixed
by the graph), so the entry point takes exactly ``(q, k, v, rel_h, rel_w, out)``; the batch x heads
axis is the launch grid's second dimension. Triton appends two scratch-buffer pointers to every
kernel; this kernel uses no scratch memory, so they are removed from the PTX entry
(:func:`samexport.plugins.attention_kernel.compile_kernel` checks they are unused).

What ``tensorrt.plugin`` (10.9 to 11.x) requires of the registered functions, checked against
NVIDIA's code in ``tests/plugins/test_tensorrt_plugin.py``:

- ``aot_impl`` must carry a return annotation, a 4-tuple of (str | bytes, str | bytes,
  ``KernelLaunchParams``, a ``SymExprs`` subclass): ``_validate._validate_aot_impl`` raises
  "No return annotation found for aot_impl function" otherwise.
- Attributes arrive as plugin fields, each a 1-D NumPy array (one element for a scalar). 10.9 and
  10.16 convert a field annotated ``int``/``float`` with ``int(array)``, a TypeError from NumPy
  2.4 on; fields annotated ``numpy.typing.NDArray[dtype]`` are converted with
  ``data.astype(dtype)`` on every release, whatever integer or float type the field carries (the
  creator declares them INT32 / FLOAT32). The functions read element 0, as NVIDIA's samples do.
- ``aot_impl`` receives every attribute positionally, in the order of the fields the plugin was
  created from (the node's attribute order, which is the registration order), then ``outputs``
  and ``tactic``.

Not yet run on a GPU: the registration and AOT path follow NVIDIA's documented API and sample
(``samples/python/quickly_deployable_plugins``); ``tests/export/test_attention.py`` has the GPU
checks, skipped without TensorRT and a GPU. Three assumptions only a GPU run can confirm: that
TensorRT accepts an empty list of extra scalar kernel arguments (``SymIntExprs(0)``), that the
batch-x-heads shape expression is accepted as the launch grid's y dimension, and that the
pointer-only calling convention (Triton's unused scratch pointers removed from the PTX) launches.
"""

# No ``from __future__ import annotations`` here: ``tensorrt.plugin`` inspects the registered
# functions' annotations at runtime and needs real types, not strings.

import ctypes
import importlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from samexport.constants import PLUGIN_ID
from samexport.engines import NoGpuError, cuda_devices, load_tensorrt, trt_api
from samexport.errors import MissingExtraError, SamExportError

_registered = False


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
    try:
        gpu = cuda_devices()[0]
    except NoGpuError as exc:
        raise SamExportError(f"building the attention plugin needs a CUDA GPU: {exc}") from None
    return "sm_" + gpu.compute_capability.replace(".", ""), ptx_version_for_driver(_cuda_driver_version())


def _load_plugin_api():
    """``(tensorrt, tensorrt.plugin)``; MissingExtraError / SamExportError when unusable."""
    trt = load_tensorrt("tensorrt")
    version = getattr(trt, "__version__", "0")
    hint = "export the encoder with --attention fused-pattern instead"
    try:
        trt_api.require(version, "attention plugin", "the quickly deployable plugin API (tensorrt.plugin)")
    except SamExportError as exc:
        raise SamExportError(f"{exc}; {hint}") from None
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except ImportError as exc:
        raise MissingExtraError(f"tensorrt.plugin is not importable ({exc}); {hint}") from exc
    if not hasattr(trtp, "aot_impl"):
        raise SamExportError(f"TensorRT {version}'s tensorrt.plugin has no aot_impl; {hint}")
    return trt, trtp


def tensorrt_plugins_for(attention: str) -> tuple[Callable[[], None], ...]:
    """The plugin loaders ``samexport.engines.artifact.build_plans`` needs for graphs exported
    with ``--attention attention``: :func:`register_tensorrt_plugin` for ``plugin``, else none."""
    return (register_tensorrt_plugin,) if attention == "plugin" else ()


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

    Int = npt.NDArray[np.int32]  # one-element 1-D arrays: how TensorRT hands over plugin fields
    Float = npt.NDArray[np.float32]

    def describe(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        rel_h: trtp.TensorDesc,
        rel_w: trtp.TensorDesc,
        grid_h: Int,
        grid_w: Int,
        head_dim: Int,
        scale: Float,
    ) -> trtp.TensorDesc:
        """Output: same shape and type as q (BHxNxD)."""
        return q.like()

    def formats(q, k, v, rel_h, rel_w, outputs) -> list[trtp.AutoTuneCombination]:
        """All six tensors FP16, or all FP32 ('|' ties them together); linear layout."""
        return [trtp.AutoTuneCombination(", ".join(["FP16|FP32"] * 6), "LINEAR")]

    def compile_for_engine(
        q, k, v, rel_h, rel_w, grid_h: Int, grid_w: Int, head_dim: Int, scale: Float, outputs, tactic
    ) -> tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        """PTX of the kernel for this node's shapes and type, and how to launch it."""
        from samexport.plugins.attention_kernel import compile_kernel

        h, w, d = (int(_scalar(f, n)) for f, n in ((grid_h, "grid_h"), (grid_w, "grid_w"), (head_dim, "head_dim")))
        _check_static_shapes(q, rel_h, rel_w, grid_h=h, grid_w=w, head_dim=d)
        dtype = "fp16" if q.dtype == trt.float16 else "fp32"
        target, ptx_version = _building_target()
        softmax_scale = float(_scalar(scale, "scale"))
        kernel = compile_kernel(
            target, grid_hw=(h, w), head_dim=d, dtype=dtype, scale=softmax_scale, ptx_version=ptx_version
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x = -(-(h * w) // kernel.block_m)  # query tiles
        launch.grid_y = q.shape_expr[0]  # batch x heads (windows x heads in windowed blocks)
        launch.block_x = kernel.threads
        launch.shared_mem = kernel.shared_mem
        return kernel.name, kernel.ptx, launch, trtp.SymIntExprs(0)  # no scalar arguments

    trtp.register(PLUGIN_ID)(describe)
    trtp.autotune(PLUGIN_ID)(formats)
    trtp.aot_impl(PLUGIN_ID)(compile_for_engine)
    _registered = True


def _scalar(field: np.ndarray, name: str):
    """Element 0 of a one-element plugin field (TensorRT passes every attribute as a 1-D array)."""
    if np.size(field) != 1:
        raise SamExportError(f"{PLUGIN_ID}: attribute {name} must be one value, got {np.size(field)}")
    return np.ravel(field)[0].item()


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
