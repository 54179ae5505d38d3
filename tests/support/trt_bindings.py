"""NVIDIA's real TensorRT Python bindings, per release, for tests on machines without TensorRT.

NVIDIA publishes ``tensorrt-cu12-bindings`` on PyPI for every release (about 1.3 MB a wheel). Its
compiled module (``tensorrt_bindings/tensorrt.so``) needs libnvinfer and cannot load here, but two
things in the wheel are usable without it:

- ``tensorrt_bindings/plugin/``: the quickly deployable plugin API (``tensorrt.plugin``, 10.9 and
  later) is pure Python. :func:`fake_tensorrt` imports NVIDIA's real package over the smallest
  stand-in for the compiled module that lets it import, register a plugin and run the
  ahead-of-time build calls the way TensorRT's builder makes them.
- The compiled module's exported names: pybind11 keeps every class, enum member, method and
  property name as a C string in the ``.so``. :func:`exported_names` reads them, so tests can check
  which release has which API without loading the library.

Wheels are fetched with ``pip download --no-deps`` for one fixed platform (cp311, manylinux x86_64:
the files read here are the same for every platform) into
``<samexport cache>/trt-bindings/<version>`` and reused. They never enter the package install.
:class:`BindingsUnavailable` (tests skip) is raised only when the package index is unreachable;
any other download failure is an error.
"""

from __future__ import annotations

import ast
import contextlib
import enum
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np

# Release -> exact PyPI version of tensorrt-cu12-bindings (`pip index versions tensorrt-cu12-bindings`).
RELEASES = {
    "10.3": "10.3.0",  # JetPack 6 (Jetson Orin); no tensorrt.plugin
    "10.9": "10.9.0.34",  # first release with tensorrt.plugin.aot_impl
    "10.16": "10.16.1.11",
    "11.4": "11.4.0.106",
}
PLUGIN_RELEASES = ("10.9", "10.16", "11.4")
_PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--implementation", "cp",
    "--python-version", "311",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
]  # fmt: skip
# What pip prints when it cannot reach the index (no network, DNS, proxy, TLS interception).
_UNREACHABLE = re.compile(
    r"NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Network is unreachable|"
    r"Temporary failure in name resolution|Name or service not known|ProxyError|SSLError|"
    r"Connection refused|nodename nor servname"
)


class BindingsUnavailable(RuntimeError):
    """The package index cannot be reached: the wheel cannot be downloaded here."""


_unavailable: list[str] = []  # the first reason, so later downloads skip at once


def cache_dir() -> Path:
    from samexport.utils import default_cache_dir

    return default_cache_dir() / "trt-bindings"


def bindings_dir(release: str) -> Path:
    """The unpacked ``tensorrt_bindings`` folder of ``release`` (a key of :data:`RELEASES`).

    Raises:
        BindingsUnavailable: the index is unreachable and the wheel is not cached.
        RuntimeError: pip failed for another reason (its output is in the message).
    """
    version = RELEASES[release]
    target = cache_dir() / version
    package = target / "tensorrt_bindings"
    if (package / "__init__.py").is_file():
        return package
    if _unavailable:
        raise BindingsUnavailable(_unavailable[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--retries", "1", "--timeout", "30", "--dest", tmp, *_PLATFORM_ARGS,
                   f"tensorrt-cu12-bindings=={version}"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            # "(from versions: none)": the index listed no version at all of a package PyPI has
            # (0.x to 11.x): it was not reached, or it is a mirror without NVIDIA's wheels.
            if _UNREACHABLE.search(output) or "(from versions: none)" in output:
                _unavailable.append(
                    "PyPI is unreachable (pip found no version of tensorrt-cu12-bindings): cannot download "
                    "NVIDIA's TensorRT bindings"
                )
                raise BindingsUnavailable(_unavailable[0])
            raise RuntimeError(f"pip download tensorrt-cu12-bindings=={version} failed:\n{output[-3000:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        try:
            os.replace(unpacked, target)  # atomic: a concurrent run may have won, which is fine
        except OSError:
            if not (package / "__init__.py").is_file():
                raise
    return package


# --- Exported names of the compiled module --------------------------------------------------------


class ExportedNames:
    """The names a release's ``tensorrt`` module exports, read from its files without loading them.

    ``name in names`` is True when ``name`` is a C string literal of ``tensorrt.so`` (pybind11
    registers every class, enum member, method and property by such a string) or a top-level name
    that the wheel's ``__init__.py`` defines in Python (``nptype``, ``volume``). Literals are read
    as the linker left them: it merges a string into a longer one that ends with it ("INT8" into
    "UINT8"), so a name is present when some NUL-terminated identifier string ends with it.

    Names are not tied to their class: ``BuilderFlag.INT8`` cannot be shown absent from 11.4 this
    way because ``DataType.INT8`` is there; docstrings (:meth:`has_text`) settle such cases.
    """

    def __init__(self, so_bytes: bytes, init_source: str) -> None:
        self._strings = {s.decode("ascii") for s in re.findall(rb"[\x20-\x7e\t\n]+(?=\x00)", so_bytes)}
        self._suffixes: set[str] = set()
        for s in self._strings:
            if len(s) <= 64 and re.fullmatch(r"[A-Za-z0-9_]+", s):
                self._suffixes.update(s[i:] for i in range(len(s)))
        self.python_names: set[str] = set()
        for node in ast.parse(init_source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                self.python_names.add(node.name)
            elif isinstance(node, ast.Assign):
                self.python_names.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def __contains__(self, name: str) -> bool:
        return name in self.python_names or name in self._suffixes

    def has_text(self, text: str) -> bool:
        """True when some string of the module (a docstring, say) contains ``text``."""
        return any(text in s for s in self._strings)


def exported_names(release: str) -> ExportedNames:
    package = bindings_dir(release)
    so = next(package.glob("tensorrt*.so"))
    return ExportedNames(so.read_bytes(), (package / "__init__.py").read_text())


# --- The smallest stand-in for the compiled module that tensorrt.plugin needs --------------------
#
# Every name below is one that NVIDIA's tensorrt/plugin/*.py (10.9, 10.16, 11.4) touches while it
# imports, registers a plugin, creates it from plugin fields and runs the AOT build calls
# (get_output_data_types, get_output_shapes, get_supported_format_combinations, configure_plugin,
# get_launch_params, get_kernel), plus trt.float16 / trt.float32 that samexport's plugin compares
# with. The module has no __getattr__: a name the real code needs and the stand-in lacks fails the
# test with AttributeError, naming it.


class _Logger:
    WARNING = 2

    def log(self, severity, message) -> None:
        pass


class _DimExpr:
    """trt.IDimensionExpr: a build-time constant or a named symbolic dimension."""

    def __init__(self, value: int | None = None, name: str = "") -> None:
        self.value, self.name = value, name

    def is_constant(self) -> bool:
        return self.value is not None

    def get_constant_value(self) -> int:
        if self.value is None:
            raise RuntimeError(f"{self.name} is not a build-time constant")
        return self.value

    def __repr__(self) -> str:
        return f"Dim({self.value if self.value is not None else self.name})"


class DimensionOperation(enum.Enum):
    SUM, PROD, MAX, MIN, SUB, EQUAL, LESS, FLOOR_DIV, CEIL_DIV = range(9)


_OPS = {
    DimensionOperation.SUM: lambda a, b: a + b,
    DimensionOperation.PROD: lambda a, b: a * b,
    DimensionOperation.MAX: max,
    DimensionOperation.MIN: min,
    DimensionOperation.SUB: lambda a, b: a - b,
    DimensionOperation.EQUAL: lambda a, b: int(a == b),
    DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: lambda a, b: a // b,
    DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class ExprBuilder:
    """trt.IExprBuilder: constants fold, x + 0 and x * 1 are x, anything else involving a symbolic
    dimension stays symbolic."""

    def constant(self, value: int) -> _DimExpr:
        return _DimExpr(int(value))

    def operation(self, op: DimensionOperation, first: _DimExpr, second: _DimExpr) -> _DimExpr:
        if first.is_constant() and second.is_constant():
            return _DimExpr(_OPS[op](first.value, second.value))
        if (op, second.value) in ((DimensionOperation.SUM, 0), (DimensionOperation.PROD, 1)):
            return first
        return _DimExpr(None, f"{op.name}({first!r}, {second!r})")


class _Dims(tuple):
    MAX_DIMS = 8


class _PluginField:
    def __init__(self, name: str, data=None, type=None) -> None:
        self.name, self.type = name, type
        self.data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data)


class _PluginRegistry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], object] = {}

    def register_creator(self, creator, namespace: str) -> bool:
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = ""):
        return self.creators.get((name, version, namespace))


class PluginTensorDesc:
    """trt.PluginTensorDesc: type, format, dims, scale."""

    def __init__(self, type=None, format=None, dims=(), scale: float = 1.0) -> None:
        self.type, self.format, self.dims, self.scale = type, format, _Dims(dims), scale


class DynamicPluginTensorDesc:
    """trt.DynamicPluginTensorDesc: a PluginTensorDesc with the profile's min / opt / max dims."""

    def __init__(self, desc: PluginTensorDesc, min=(), opt=(), max=()) -> None:
        self.desc, self.min, self.opt, self.max = desc, _Dims(min), _Dims(opt), _Dims(max)


class _Interface:
    """Base for the IPluginV3* / IPluginCreatorV3Quick / ISymExpr interfaces: no behaviour."""

    def __init__(self) -> None:
        pass


def _stand_in(version: str, path: Path) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__path__ = [str(path)]  # so `import tensorrt.plugin` finds NVIDIA's real subpackage
    trt.__version__ = version
    trt.Logger = _Logger
    DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4 FP4")
    trt.DataType = DataType
    trt.float32, trt.float16, trt.int32 = DataType.FLOAT, DataType.HALF, DataType.INT32
    trt.TensorFormat = enum.Enum(
        "TensorFormat", "LINEAR CHW2 HWC8 CHW4 CHW16 CHW32 DHWC8 CDHW32 HWC DLA_LINEAR DLA_HWC4 HWC16 DHWC"
    )
    trt.PluginFieldType = enum.Enum(
        "PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 FP8 INT4 FP4"
    )
    trt.PluginField = _PluginField
    trt.PluginFieldCollection = list
    registry = _PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    trt.QuickPluginCreationRequest = enum.Enum(
        "QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT"
    )
    trt.TensorRTPhase = enum.Enum("TensorRTPhase", "BUILD RUNTIME")
    trt.PluginArgType = enum.Enum("PluginArgType", "INT")
    trt.PluginArgDataType = enum.Enum("PluginArgDataType", "INT8 INT16 INT32")
    trt.DimensionOperation = DimensionOperation
    trt.IDimensionExpr = _DimExpr
    trt.IExprBuilder = ExprBuilder
    trt.Dims = _Dims
    trt.DimsExprs = lambda n: [None] * n
    trt.PluginTensorDesc = PluginTensorDesc
    trt.DynamicPluginTensorDesc = DynamicPluginTensorDesc
    trt.ITensor = type("ITensor", (), {})
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr"):  # fmt: skip
        setattr(trt, name, type(name, (_Interface,), {}))
    return trt


@contextlib.contextmanager
def fake_tensorrt(release: str):
    """Make ``import tensorrt`` give the stand-in and ``import tensorrt.plugin`` NVIDIA's real code.

    Yields the stand-in module. Every ``tensorrt`` module is taken out of ``sys.modules`` on entry
    and put back on exit, so each release starts from a fresh plugin registry.
    """
    package = bindings_dir(release)
    if not (package / "plugin" / "__init__.py").is_file():
        raise ValueError(f"TensorRT {release} has no tensorrt.plugin package")
    ours = lambda name: name == "tensorrt" or name.startswith("tensorrt.")  # noqa: E731
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    trt = _stand_in(RELEASES[release], package)
    sys.modules["tensorrt"] = trt
    try:
        with warnings.catch_warnings():  # NVIDIA's docstrings have invalid escapes ("\\s")
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            importlib.import_module("tensorrt.plugin")
        yield trt
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def ptxas() -> str | None:
    """Triton's bundled ``ptxas``, or None."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if os.access(path, os.X_OK) else shutil.which("ptxas")
