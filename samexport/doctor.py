"""What this machine can run: versions, ONNX Runtime providers, TensorRT and GPU."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess

from samexport import __version__


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install (e.g. missing shared libraries) is worth reporting
        return f"broken: {type(exc).__name__}: {exc}"


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU according to nvidia-smi, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def diagnose() -> dict[str, str]:
    """One line per fact, in the order `samexport doctor` prints them."""
    report = {
        "samexport": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "tensorrt": _version("tensorrt"),
        "tensorrt_rtx": _version("tensorrt_rtx"),
    }
    try:
        import onnxruntime

        report["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
    except ImportError:
        report["onnxruntime providers"] = "none (onnxruntime not installed)"
    report["nvidia gpu"] = gpu_name() or "none found (nvidia-smi absent or no device)"
    report["tensorrt engines"] = (
        "can build" if report["tensorrt"][0].isdigit() and gpu_name() else
        "cannot build here: needs the tensorrt package and an NVIDIA GPU"
    )
    return report
