"""What this machine can run: versions, ONNX Runtime providers, TensorRT, its features, and the GPU."""

from __future__ import annotations

import importlib
import importlib.util
import platform

from samexport import constants as C
from samexport._version import __version__
from samexport.engines import NoGpuError, cuda_devices, tensorrt_availability, trt_api
from samexport.engines.builder import is_jetson
from samexport.runtime.openvino_backend import device_capabilities, resolve_precision


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as exc:  # noqa: BLE001 (a broken install, e.g. missing shared libraries, is worth reporting)
        return f"broken: {type(exc).__name__}: {exc}"


def tensorrt_features(version: str, *, jetson: bool) -> dict[str, str]:
    """For TensorRT ``version``: each feature of ``trt_api.FEATURES``, ``yes`` or why not."""

    report = {}
    for feature, minimum in trt_api.FEATURES.items():
        if not trt_api.supports(version, feature):
            report[feature] = f"no (needs TensorRT >= {minimum[0]}.{minimum[1]})"
        elif jetson and feature.startswith("hardware compatibility"):
            report[feature] = "no (not supported on Jetson)"
        else:
            report[feature] = "yes"
    return report


def backend_status(backend: C.BackendInfo, onnxruntime_providers: str) -> str:
    """Whether ``backend``'s modules are installed here, and if not, what to install (one line).
    ``onnxruntime_providers``: ONNX Runtime's providers, comma-separated."""
    missing = [m for m in backend.modules if importlib.util.find_spec(m) is None]
    install = f"pip install 'samexport[{backend.extra}]'" if backend.extra else "pip install samexport"
    if missing:
        return f"missing {', '.join(missing)} ({install})"
    if backend.onnxruntime_device == "cuda" and "CUDAExecutionProvider" not in onnxruntime_providers:
        return f"no CUDA provider ({install}, instead of onnxruntime)"
    return "installed"


def openvino_report() -> dict[str, str]:
    """OpenVINO's devices, and per device its full name and whether it computes in bf16 / f16
    (``OPTIMIZATION_CAPABILITIES``: what ``openvino:precision=auto`` picks from)."""
    if importlib.util.find_spec("openvino") is None:
        return {}
    try:
        import openvino

        core = openvino.Core()
        devices = list(core.available_devices)
    except Exception as exc:  # noqa: BLE001 (a broken install is worth reporting, not a crash)
        return {"openvino devices": f"broken: {type(exc).__name__}: {exc}"}

    report = {"openvino devices": ", ".join(devices) or "none"}
    for device in devices:
        capabilities = device_capabilities(core, device)
        try:
            name = core.get_property(device, "FULL_DEVICE_NAME")
        except RuntimeError:
            name = "?"
        report[f"  openvino {device}"] = (
            f"{name}; bf16 {'yes' if 'BF16' in capabilities else 'no'}, f16 {'yes' if 'FP16' in capabilities else 'no'}; "
            f"precision=auto runs {resolve_precision('auto', capabilities, device)}"
        )
    return report


def diagnose() -> dict[str, str]:
    """One line per fact, in the order `samexport doctor` prints them."""

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
        "openvino": _version("openvino"),
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
    for backend in C.BACKENDS.values():
        report[f"backend {backend.name}"] = backend_status(backend, report["onnxruntime providers"])
    report.update(openvino_report())
    availability = tensorrt_availability()
    report["tensorrt engines"] = "can build" if availability else f"cannot build here: {availability.reason}"
    if report["tensorrt"][0].isdigit():
        advice = trt_api.recommended_attention(report["tensorrt"])
        report["recommended --attention"] = f"{advice.mode} ({advice.reason}); see docs/jetson.md"
        for feature, status in tensorrt_features(report["tensorrt"], jetson=is_jetson()).items():
            report[f"  {feature}"] = status
    return report
