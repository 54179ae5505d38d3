"""ONNX -> TensorRT engine plans, and whether this machine can build them.

``tensorrt`` and the CUDA driver are optional: nothing here imports them at module import time.
:func:`tensorrt_availability` says, in one line, why engines cannot be built, so ``samexport
build`` can report which engines it skipped and why.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from samexport.errors import MissingExtraError, SamExportError

TensorRTFlavour = Literal["tensorrt", "tensorrt_rtx"]

# Import names per flavour: the TensorRT-RTX PyPI wheels (tensorrt-rtx-cu12-bindings) install
# ``tensorrt_rtx_bindings``; NVIDIA's own packages name it ``tensorrt_rtx``.
_MODULES: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt",),
    "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}
_INSTALL_HINT = {
    "tensorrt": "pip install 'samexport[tensorrt]' (TensorRT's libraries come from NVIDIA's index: "
    "add --extra-index-url https://pypi.nvidia.com if pip cannot find them)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu12-libs tensorrt-rtx-cu12-bindings",
}


def load_tensorrt(flavour: TensorRTFlavour = "tensorrt") -> ModuleType:
    """Import the TensorRT Python module of ``flavour``; raise :class:`MissingExtraError` if absent.

    ``"tensorrt_rtx"`` (TensorRT for RTX) shares the builder API used here and builds engines
    without a GPU, which the test suite uses to prove every graph parses and builds.
    """
    errors = []
    for name in _MODULES[flavour]:
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # also covers a wheel whose shared libraries fail to load
            errors.append(f"{name}: {exc}")
    raise MissingExtraError(f"{flavour} is not importable ({'; '.join(errors)}); install it with: {_INSTALL_HINT[flavour]}")


def polygraphy_trt(flavour: TensorRTFlavour = "tensorrt") -> ModuleType:
    """Polygraphy's TensorRT backend (``polygraphy.backend.trt``) bound to ``flavour``.

    Polygraphy picks TensorRT or TensorRT-RTX once, when its backend modules are first imported
    (``POLYGRAPHY_USE_TENSORRT_RTX``; its loaders bind the module at import time), so one process
    uses one flavour: asking for the other afterwards is an error rather than a silent mix.
    TensorRT-RTX's PyPI wheel installs its module as ``tensorrt_rtx_bindings``; Polygraphy imports
    ``tensorrt_rtx``, so the wheel's module is registered under that name too.

    Raises:
        MissingExtraError: Polygraphy or the TensorRT flavour is not installed.
        SamExportError: this process already uses Polygraphy with the other flavour.
    """
    trt = load_tensorrt(flavour)
    try:
        from polygraphy import config as polygraphy_config
    except ImportError as exc:
        raise MissingExtraError(
            f"polygraphy is not installed ({exc}); install it with: pip install 'samexport[tensorrt]'"
        ) from exc
    want_rtx = flavour == "tensorrt_rtx"
    if "polygraphy.backend.trt" in sys.modules and polygraphy_config.USE_TENSORRT_RTX != want_rtx:
        bound = "tensorrt_rtx" if polygraphy_config.USE_TENSORRT_RTX else "tensorrt"
        raise SamExportError(
            f"this process already drives {bound} through Polygraphy and cannot switch to {flavour}; "
            "run the other builder in a separate process"
        )
    polygraphy_config.USE_TENSORRT_RTX = want_rtx
    if want_rtx:
        sys.modules.setdefault("tensorrt_rtx", trt)
    return importlib.import_module("polygraphy.backend.trt")


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as the driver reports it."""

    index: int
    name: str
    compute_capability: str  # "8.7" for Jetson Orin, "9.0" for H100


class NoGpuError(RuntimeError):
    """No usable CUDA device; the message says why (no driver, no device, driver error)."""


_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def cuda_devices() -> list[GpuInfo]:
    """CUDA devices through the driver library (``libcuda``), with no Python CUDA package.

    Raises:
        NoGpuError: the NVIDIA driver is missing or reports no device.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        try:
            cuda = ctypes.CDLL("nvcuda.dll")
        except (OSError, AttributeError):
            raise NoGpuError("no NVIDIA driver (libcuda.so.1 not found)") from None
    status = cuda.cuInit(0)
    if status != 0:
        raise NoGpuError(f"the NVIDIA driver found no usable GPU (cuInit error {status})")
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise NoGpuError("the NVIDIA driver reports no CUDA device")
    devices = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(device), index)
        cuda.cuDeviceGetName(name, len(name), device)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        devices.append(GpuInfo(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}"))
    return devices


@dataclass(frozen=True)
class Availability:
    """Whether TensorRT engines can be built here. Truthy when they can.

    Attributes:
        ok: TensorRT imports and a CUDA GPU is present.
        reason: one line saying what is missing ("" when ``ok``).
        tensorrt_version: the importable TensorRT version, or None.
        gpu: the first CUDA device, or None.
    """

    ok: bool
    reason: str
    tensorrt_version: str | None = None
    gpu: GpuInfo | None = None

    def __bool__(self) -> bool:
        return self.ok


def tensorrt_availability(flavour: TensorRTFlavour = "tensorrt") -> Availability:
    """Can this machine build and run engines with ``flavour``? If not, why not (one line)."""
    try:
        trt = load_tensorrt(flavour)
    except MissingExtraError as exc:
        return Availability(False, str(exc))
    version = getattr(trt, "__version__", None)
    try:
        gpu = cuda_devices()[0]
    except NoGpuError as exc:
        return Availability(False, f"{flavour} {version} is installed but {exc}", version)
    return Availability(True, "", version, gpu)


__all__ = [
    "Availability",
    "GpuInfo",
    "NoGpuError",
    "TensorRTFlavour",
    "cuda_devices",
    "load_tensorrt",
    "polygraphy_trt",
    "tensorrt_availability",
]
