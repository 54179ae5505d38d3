"""Every TensorRT Python name samexport uses directly, with the first release that has it.

One table, :data:`API`, so that code calling an attribute a supported release lacks is guarded
(:func:`require`) rather than failing with ``AttributeError`` on a Jetson, and one table of
features, :data:`FEATURES`, for ``samexport doctor`` and the version gates. samexport supports
TensorRT 10.3 (JetPack 6) to 11.x; ``None`` means every supported release has it.

``tests/engines/test_trt_api.py`` checks the table against the exported names of NVIDIA's
``tensorrt-cu12-bindings`` wheels of 10.3.0, 10.16.1.11 and 11.4.0.106 (every entry present from its
first release on, and absent from 10.3 when its first release is later), and scans the TensorRT
code for ``trt.<Name>`` / ``trt.<Enum>.<MEMBER>`` uses missing from the table.

Facts checked in those wheels (and in 10.4.0 to 10.8.0.43, 11.0.0.114 for first releases):

- ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` first exists in 10.9.0.34 (absent in
  10.3.0 to 10.8.0.43); ``AMPERE_PLUS`` is in every 10.x.
- ``Runtime.engine_host_code_allowed`` exists in 10.3.0 and every later release (the string sits
  among ``Runtime``'s ``load_runtime`` / ``temporary_directory`` / ``tempfile_control_flags``
  properties, i.e. it is a property of ``Runtime``, the Python name of ``IRuntime``).
- ``BuilderFlag.TF32`` is still in 11.4 (its docstring "Allow (but not require) computations on
  tensors of type DataType.FLOAT to use TF32" follows ``EDITABLE_TIMING_CACHE``); TensorRT 11
  removed the weak-typing flags: 11.4's ``BuilderFlag`` docstrings go DEBUG, GPU_FALLBACK, REFIT,
  DISABLE_TIMING_CACHE, EDITABLE_TIMING_CACHE, TF32, ... with no FP16 ("Enable FP16 layer
  selection"), INT8 ("Enable Int8 layer selection"), OBEY_PRECISION_CONSTRAINTS or
  PREFER_PRECISION_CONSTRAINTS (all in 10.3; OBEY/PREFER last in 10.16). samexport therefore builds
  strongly typed networks only and never uses those flags.
- ``ICudaEngine.get_tensor_profile_shape(name: str, profile_index: int)`` returns the (min, opt,
  max) shapes of an input under a profile, the same in 10.3 and 11.4 (docstring "Get the
  minimum/optimum/maximum dimensions for a particular tensor under an optimization profile.
  :arg name: ... :arg profile_index: ...").
- ``tensorrt.plugin`` (pure Python, in the bindings wheel) first ships in 10.6; ``aot_impl`` and
  ``QuickPluginCreationRequest`` first in 10.9 (absent in 10.8.0.43).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from samexport.errors import SamExportError

Release = tuple[int, int]
OLDEST_SUPPORTED: Release = (10, 3)

# Name (attribute path under the ``tensorrt`` module) -> first release that has it; None: all >= 10.3.
# ``plugin.<name>`` entries are ``tensorrt.plugin`` (pure Python) names.
API: dict[str, Release | None] = {
    # module level
    "__version__": None,
    "Builder": None,
    "OnnxParser": None,
    "Runtime": None,
    "Logger": None,
    "Logger.WARNING": None,
    "ILogger": None,
    "ILogger.Severity": None,
    "ILogger.Severity.ERROR": None,
    "ILogger.Severity.WARNING": None,
    "nptype": None,
    "float16": None,
    "float32": None,
    # enums
    "NetworkDefinitionCreationFlag": None,
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": None,
    "MemoryPoolType": None,
    "MemoryPoolType.WORKSPACE": None,
    "BuilderFlag": None,
    "BuilderFlag.TF32": None,
    "BuilderFlag.VERSION_COMPATIBLE": None,
    "HardwareCompatibilityLevel": None,
    "HardwareCompatibilityLevel.AMPERE_PLUS": None,
    "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY": (10, 9),
    "TensorIOMode": None,
    "TensorIOMode.INPUT": None,
    # builder
    "Builder.create_network": None,
    "Builder.create_builder_config": None,
    "Builder.create_optimization_profile": None,
    "Builder.build_serialized_network": None,
    "OnnxParser.parse_from_file": None,
    "OnnxParser.num_errors": None,
    "OnnxParser.get_error": None,
    "ParserError.node": None,
    "ParserError.node_name": None,
    "ParserError.node_operator": None,
    "ParserError.desc": None,
    "INetworkDefinition.num_inputs": None,
    "INetworkDefinition.get_input": None,
    "INetworkDefinition.num_outputs": None,
    "INetworkDefinition.get_output": None,
    "IBuilderConfig.set_flag": None,
    "IBuilderConfig.clear_flag": None,
    "IBuilderConfig.set_memory_pool_limit": None,
    "IBuilderConfig.builder_optimization_level": None,
    "IBuilderConfig.hardware_compatibility_level": None,
    "IBuilderConfig.add_optimization_profile": None,
    "IBuilderConfig.create_timing_cache": None,
    "IBuilderConfig.set_timing_cache": None,
    "IBuilderConfig.get_timing_cache": None,
    "ITimingCache.serialize": None,
    "IOptimizationProfile.set_shape": None,
    # runtime
    "Runtime.deserialize_cuda_engine": None,
    "Runtime.engine_host_code_allowed": None,
    "ICudaEngine.create_execution_context": None,
    "ICudaEngine.num_io_tensors": None,
    "ICudaEngine.get_tensor_name": None,
    "ICudaEngine.get_tensor_mode": None,
    "ICudaEngine.get_tensor_dtype": None,
    "ICudaEngine.get_tensor_shape": None,
    "ICudaEngine.get_tensor_profile_shape": None,
    "IExecutionContext.set_input_shape": None,
    "IExecutionContext.set_tensor_address": None,
    "IExecutionContext.get_tensor_shape": None,
    "IExecutionContext.execute_async_v3": None,
    # the attention plugin (tensorrt.plugin)
    "QuickPluginCreationRequest": (10, 9),
    "plugin.register": (10, 9),
    "plugin.autotune": (10, 9),
    "plugin.aot_impl": (10, 9),
    "plugin.TensorDesc": (10, 9),
    "plugin.AutoTuneCombination": (10, 9),
    "plugin.KernelLaunchParams": (10, 9),
    "plugin.SymIntExprs": (10, 9),
}

# What a release can do, by first release (``samexport doctor`` lists them).
FEATURES: dict[str, Release] = {
    "attention plugin": (10, 9),  # tensorrt.plugin with aot_impl (quickly deployable plugins, AOT)
    "onnx attention": (10, 14),  # the ONNX parser imports ONNX Attention as IAttention
    "hardware compatibility ampere_plus": (10, 3),
    "hardware compatibility same_compute_capability": (10, 9),
    "version compatibility": (10, 3),
}


def release(trt_or_version: ModuleType | str) -> Release:
    """``(major, minor)`` of a TensorRT module or version string: ``"10.3.0.30"`` -> ``(10, 3)``."""
    version = trt_or_version if isinstance(trt_or_version, str) else getattr(trt_or_version, "__version__", "0")
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return parts[0], parts[1]


def _first_release(name: str) -> Release | None:
    if name in API:
        return API[name]
    if name in FEATURES:
        return FEATURES[name]
    raise KeyError(f"{name!r} is not in samexport.engines.trt_api.API or FEATURES: add it there")


def _has_attribute(trt: ModuleType, name: str) -> bool:
    if name.startswith("plugin."):
        return True  # tensorrt.plugin is imported on demand; its release gate is enough
    obj = trt
    for part in name.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _is_rtx(trt: ModuleType) -> bool:
    return getattr(trt, "__name__", "").startswith("tensorrt_rtx")


def supports(trt_or_version: ModuleType | str, name: str) -> bool:
    """Whether a TensorRT release has ``name`` (a key of :data:`API` or :data:`FEATURES`).

    With a version string, by the table. With a module, also by looking the attribute up; for
    TensorRT-RTX (its own version numbers) by the attribute alone.

    Raises:
        KeyError: ``name`` is in neither table (a samexport bug: add it).
    """
    first = _first_release(name)
    if isinstance(trt_or_version, str):
        return first is None or release(trt_or_version) >= first
    if name in API and not _has_attribute(trt_or_version, name):
        return False
    return _is_rtx(trt_or_version) or first is None or release(trt_or_version) >= first


def require(trt_or_version: ModuleType | str, name: str, what: str) -> None:
    """Raise a clear error when this TensorRT lacks ``name``, which ``what`` needs.

    Raises:
        SamExportError: "``what`` needs TensorRT >= X; this is TensorRT Y".
    """
    if supports(trt_or_version, name):
        return
    first = _first_release(name) or OLDEST_SUPPORTED
    version = trt_or_version if isinstance(trt_or_version, str) else getattr(trt_or_version, "__version__", "?")
    raise SamExportError(f"{what} needs TensorRT >= {first[0]}.{first[1]}; this is TensorRT {version}")


@dataclass(frozen=True)
class AttentionAdvice:
    """The ``--attention`` mode to export with for a TensorRT release, and why (one line)."""

    mode: str
    reason: str


def recommended_attention(version: str) -> AttentionAdvice:
    """The encoder attention mode for TensorRT ``version`` (``samexport doctor``, docs/jetson.md).

    - before 10.9 (JetPack 6.x ships 10.3): ``fused-pattern``, TensorRT's documented MHA-fusion
      form; there is neither the plugin API (10.9) nor an ONNX ``Attention`` importer (10.14).
    - 10.9 to 10.13: ``fused-pattern`` still; the attention plugin loads from 10.9 but has not yet
      been run on a GPU by samexport, so it is the alternative, not the advice.
    - from 10.14 (JetPack 7.2 ships 10.16; TensorRT 11.4.1 supports JetPack >= 7.2.2):
      ``onnx-attention``, imported as ``IAttention``, TensorRT's recommended way to fused
      attention. TensorRT accepts the node only with one output and never inside an ``If``
      (NVIDIA/TensorRT#4738, #4739); samexport's export writes exactly that.

    Whatever the mode, FP16 fused attention has known silent failures (#4837 in 10.16.1, #4723
    on 10.3): ``samexport engines`` verifies plans, and ``--fallback`` builds the FP32 attention
    form (``samexport.precision.attention_fp32``), which 11.3 and later document as FP32
    accumulation for FP16 fused attention.
    """
    found = release(version)
    if found < FEATURES["attention plugin"]:
        return AttentionAdvice(
            "fused-pattern",
            "no tensorrt.plugin (needs 10.9) and no ONNX Attention import (needs 10.14) in this release",
        )
    if found < FEATURES["onnx attention"]:
        return AttentionAdvice(
            "fused-pattern",
            "no ONNX Attention import before 10.14; the attention plugin loads from 10.9 but is not yet GPU-verified",
        )
    accumulation = (
        "; FP16 engines fall back to the FP32 attention form, documented as FP32 accumulation from 11.3"
        if found >= (11, 3)
        else "; FP16 fused attention has known failures (NVIDIA/TensorRT#4837): verify, --fallback if needed"
    )
    return AttentionAdvice(
        "onnx-attention",
        "imported as IAttention (from 10.14; one output, never inside If: NVIDIA/TensorRT#4738, #4739)" + accumulation,
    )
