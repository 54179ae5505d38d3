"""ONNX graph -> plain TensorRT engine plan, with build settings as data.

Precision lives in the ONNX graph (FP16 types and Casts, INT8 Q/DQ; see ``samexport.precision``),
so every network is parsed *strongly typed*: TensorRT 11 removed the FP16/INT8 builder flags and
TensorRT 10.x (JetPack 6) builds strongly typed networks the same way. The same code builds with
TensorRT-RTX (``flavour="tensorrt_rtx"``), which needs no GPU to build: the tests use it to prove
that every graph samexport emits parses and builds.

The plan file is exactly ``IHostMemory`` from ``build_serialized_network``: no header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from samexport import constants as C
from samexport.engines import NoGpuError, TensorRTFlavour, cuda_devices, load_tensorrt
from samexport.errors import SamExportError

log = logging.getLogger(__name__)

MinOptMax = tuple[int, int, int]
Shape = tuple[int, ...]
# input name -> (min shape, opt shape, max shape)
Profile = Mapping[str, tuple[Shape, Shape, Shape]]
HardwareCompatibility = Literal["none", "ampere_plus", "same_compute_capability"]


@dataclass(frozen=True)
class BuildConfig:
    """Engine build settings.

    Attributes:
        workspace_bytes: scratch memory limit for tactics; None leaves TensorRT's default (the
            device's memory). TensorRT rejects a build whose largest layer needs more than this,
            e.g. the decoder at B=64 wants ~1.1 GB in FP32.
        prompts: decoder prompt batch B as (min, opt, max). Default (1, 1, 64): interactive use
            decodes one prompt, the automatic mask generator 64 (its ``points_per_batch``); 64
            bounds activation memory (~0.5 GB of 256x256 upscaled features in FP16).
        points: decoder points per prompt N as (min, opt, max). Default (1, 2, 16): the most common
            prompts, one click plus the padding point or one box, are 2 points; 16 leaves room for
            a box and a dozen clicks. Kernels are tuned for ``opt``.
        timing_cache: file to read tactic timings from and write them back to; None: no cache.
        version_compatible: build a plan that later TensorRT versions can run (lean runtime).
        hardware_compatibility: ``"ampere_plus"`` runs on any Ampere or newer GPU,
            ``"same_compute_capability"`` on any GPU of the building GPU's compute capability.
        optimization_level: builder optimisation level 0..5; None: TensorRT's default (3).
    """

    workspace_bytes: int | None = 4 << 30
    prompts: MinOptMax = (1, 1, 64)
    points: MinOptMax = (1, 2, 16)
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compatibility: HardwareCompatibility = "none"
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "points"):
            low, opt, high = getattr(self, name)
            if not 1 <= low <= opt <= high:
                raise SamExportError(f"{name} profile must satisfy 1 <= min <= opt <= max; got {getattr(self, name)}")
        if self.hardware_compatibility not in ("none", "ampere_plus", "same_compute_capability"):
            raise SamExportError(f"unknown hardware_compatibility {self.hardware_compatibility!r}")

    def decoder_profile(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """Shapes of every decoder input at min / opt / max B and N."""
        axes = {C.PROMPT_BATCH: self.prompts, C.NUM_POINTS: self.points}
        return {
            spec.name: tuple(  # type: ignore[misc]
                tuple(axes[d][k] if isinstance(d, str) else d for d in spec.shape) for k in range(3)
            )
            for spec in C.DECODER_INPUTS
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return data


def build_engine(
    onnx_path: Path | str,
    plan_path: Path | str,
    config: BuildConfig = BuildConfig(),
    *,
    profiles: list[Profile] | None = None,
    flavour: TensorRTFlavour = "tensorrt",
) -> dict:
    """Parse ``onnx_path`` strongly typed, build it, write the plain plan to ``plan_path``.

    Args:
        onnx_path: ONNX graph (external data next to it is found by the parser).
        plan_path: where to write the serialized engine.
        config: build settings.
        profiles: optimisation profiles, each input name -> (min, opt, max) shapes; required
            when the graph has dynamic inputs (use ``[config.decoder_profile()]`` for the decoder).
        flavour: ``"tensorrt"``, or ``"tensorrt_rtx"`` to build without a GPU (tests).

    Returns:
        Build record for ``manifest.json``: TensorRT module and version, GPU name and compute
        capability (None when built without a GPU), profiles, IO tensors, settings, seconds,
        plan size.

    Raises:
        SamExportError: the graph does not parse (with every parser error), a dynamic input has
            no profile, or the build fails.
        MissingExtraError: TensorRT is not installed.
    """
    trt = load_tensorrt(flavour)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SamExportError(f"{flavour} could not parse {onnx_path}:\n  " + "\n  ".join(errors))

    builder_config = builder.create_builder_config()
    if config.workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    if config.optimization_level is not None:
        builder_config.builder_optimization_level = config.optimization_level
    if config.version_compatible:
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if config.hardware_compatibility != "none":
        builder_config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, config.hardware_compatibility.upper()
        )
    _add_profiles(builder, builder_config, network, profiles or [])
    cache = _attach_timing_cache(builder_config, config.timing_cache)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - start
    if plan is None:
        hint = ""
        if any("OutOfMemory" in e for e in logger.errors):
            hint = f"\n  (workspace_bytes={config.workspace_bytes} is too small for the largest profile)"
        raise SamExportError(f"{flavour} failed to build {onnx_path.name}:\n  " + "\n  ".join(logger.errors) + hint)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(memoryview(plan))
    if cache is not None and config.timing_cache is not None:
        Path(config.timing_cache).write_bytes(memoryview(builder_config.get_timing_cache().serialize()))

    gpu = None
    try:
        gpu = cuda_devices()[0]
    except NoGpuError:
        pass
    return {
        "tensorrt_module": trt.__name__,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.name if gpu else None,
        "compute_capability": gpu.compute_capability if gpu else None,
        "strongly_typed": True,
        "inputs": [_io(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_io(network.get_output(i)) for i in range(network.num_outputs)],
        "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in (profiles or [])],
        "config": config.to_dict(),
        "build_seconds": round(seconds, 3),
        "plan_bytes": plan.nbytes,
        "plan": plan_path.name,
    }


def _collecting_logger(trt):
    """A TensorRT logger that forwards to ``logging`` and keeps the errors for the exception."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return CollectingLogger()


def _add_profiles(builder, builder_config, network, profiles: list[Profile]) -> None:
    dynamic = [
        network.get_input(i).name for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    for index, shapes in enumerate(profiles):
        missing = [name for name in dynamic if name not in shapes]
        if missing:
            raise SamExportError(f"optimisation profile {index} gives no shapes for dynamic inputs {missing}")
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        if builder_config.add_optimization_profile(profile) < 0:
            raise SamExportError(f"optimisation profile {index} is invalid: {dict(shapes)}")
    if dynamic and not profiles:
        raise SamExportError(f"inputs {dynamic} are dynamic: pass an optimisation profile for them")


def _attach_timing_cache(builder_config, path: Path | None):
    if path is None:
        return None
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    cache = builder_config.create_timing_cache(data)
    builder_config.set_timing_cache(cache, False)  # ignore_mismatch=False: refuse another GPU's timings
    return cache


def _describe(error) -> str:
    where = f"node {error.node()} ({error.node_operator()} {error.node_name()!r})" if error.node() >= 0 else "graph"
    return f"{where}: {error.desc()}"


def _io(tensor) -> dict:
    return {"name": tensor.name, "dtype": str(tensor.dtype).rsplit(".", 1)[-1].lower(), "shape": list(tensor.shape)}
