"""What this machine can run: versions, ONNX Runtime providers, TensorRT, its features, and the GPU."""

from __future__ import annotations

import importlib
import platform

from samexport import __version__

# First TensorRT release with each feature samexport can use (release notes and developer guide).
TENSORRT_FEATURES: dict[str, tuple[tuple[int, int], str]] = {
    "version-compatible engines (--version-compatible)": ((8, 6), "BuilderFlag.VERSION_COMPATIBLE"),
    "hardware compatibility ampere_plus (--hardware-compatible)": ((8, 6), "not on Jetson"),
    "hardware compatibility same_compute_capability": ((10, 9), "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"),
    "attention plugin (--attention plugin)": ((10, 9), "tensorrt.plugin with aot_impl"),
    "ONNX Attention op (--attention onnx-attention)": ((10, 14), "IAttention"),
}


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install (e.g. missing shared libraries) is worth reporting
        return f"broken: {type(exc).__name__}: {exc}"


def _release(version: str) -> tuple[int, int]:
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def tensorrt_features(version: str, *, jetson: bool) -> dict[str, str]:
    """For TensorRT ``version``: each feature samexport uses, ``yes`` or why not."""
    found = _release(version)
    report = {}
    for feature, (minimum, note) in TENSORRT_FEATURES.items():
        if found < minimum:
            report[feature] = f"no (needs TensorRT >= {minimum[0]}.{minimum[1]})"
        elif jetson and feature.startswith("hardware compatibility"):
            report[feature] = "no (not supported on Jetson)"
        else:
            report[feature] = "yes"
    return report


def diagnose() -> dict[str, str]:
    """One line per fact, in the order `samexport doctor` prints them."""
    from samexport.engines import NoGpuError, cuda_devices, tensorrt_availability
    from samexport.engines.builder import is_jetson

    report = {
        "samexport": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}" + (" (Jetson)" if is_jetson() else ""),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "polygraphy": _version("polygraphy"),
        "tensorrt": _version("tensorrt"),
        "tensorrt_rtx": _version("tensorrt_rtx_bindings"),
        "triton": _version("triton"),
    }
    try:
        import onnxruntime

        report["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
    except ImportError:
        report["onnxruntime providers"] = "none (onnxruntime not installed)"
    try:
        report["nvidia gpu"] = "; ".join(f"{g.name} (compute capability {g.compute_capability})" for g in cuda_devices())
    except NoGpuError as exc:
        report["nvidia gpu"] = f"none ({exc})"
    availability = tensorrt_availability()
    report["tensorrt engines"] = "can build" if availability else f"cannot build here: {availability.reason}"
    if report["tensorrt"][0].isdigit():
        for feature, status in tensorrt_features(report["tensorrt"], jetson=is_jetson()).items():
            report[f"  {feature}"] = status
    return report
