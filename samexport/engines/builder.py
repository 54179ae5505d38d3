"""ONNX graph -> plain TensorRT engine plan, with build settings as data, through Polygraphy.

Polygraphy (NVIDIA's, tested against each TensorRT release) does the parse, the builder config and
the build: ``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork``. What is left
here is what samexport decides: the profiles, which settings this TensorRT release and this device
support (a clear error instead of an ``AttributeError`` deep inside a build), and the build record
for ``manifest.json``.

Precision lives in the ONNX graph (FP16 types and Casts, INT8 Q/DQ; see ``samexport.precision``),
so every network is parsed *strongly typed*: TensorRT 11 removed the FP16/INT8 builder flags and
TensorRT 10.x (JetPack 6) builds strongly typed networks the same way. TF32 is on by default in
TensorRT; Polygraphy's ``CreateConfig`` clears it unless asked, so an fp32 graph runs in FP32 (the
record says ``"tf32": false``). The same code builds with TensorRT-RTX (``flavour="tensorrt_rtx"``),
which needs no GPU to build: such plans are test builds, recorded as such, refused by the runtime.

The plan file is exactly the serialized engine: no header.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from samexport import constants as C
from samexport.engine_records import EngineRecord, EngineSettings, ShapeRange
from samexport.engines import NoGpuError, TensorRTFlavour, cuda_devices, load_tensorrt, polygraphy_trt, trt_api
from samexport.errors import SamExportError
from samexport.staging import write_atomically

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

    def decoder_profile(self, contract: C.GraphContract = C.SAM_GRAPHS) -> dict[str, tuple[Shape, Shape, Shape]]:
        """Shapes of every input of ``contract``'s decoder at min / opt / max B and N; the mask count
        M takes B's range, which holds both M = B and M = 1. Fixed axes (the per-image features:
        SAM's embedding, SAM 2.1's embedding and both high-resolution maps) are the same in all three."""
        return self._profile(contract.decoder_inputs)

    def profiles(self, graph: str, contract: C.GraphContract = C.SAM_GRAPHS) -> list[Profile] | None:
        """The optimisation profiles of ``graph`` (``"encoder"`` or ``"decoder"``) of ``contract``:
        one profile over its inputs when any axis is dynamic, None for a graph of fixed shapes
        (every encoder today). What ``build_plans`` builds each graph with, for every family."""
        inputs = {"encoder": contract.encoder_inputs, "decoder": contract.decoder_inputs}[graph]
        if not any(isinstance(d, str) for spec in inputs for d in spec.shape):
            return None
        return [self._profile(inputs)]

    def _profile(self, inputs: tuple[C.TensorSpec, ...]) -> dict[str, tuple[Shape, Shape, Shape]]:
        axes = {C.PROMPT_BATCH: self.prompts, C.NUM_POINTS: self.points, C.NUM_MASKS: self.prompts}
        return {
            spec.name: tuple(  # type: ignore[misc]
                tuple(axes[d][k] if isinstance(d, str) else d for d in spec.shape) for k in range(3)
            )
            for spec in inputs
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return data

    def record(self) -> EngineSettings:
        """These settings as the manifest records them (``engine_config``, each plan's ``config``)."""
        return EngineSettings(
            workspace_bytes=self.workspace_bytes, prompts=tuple(self.prompts), points=tuple(self.points),
            timing_cache=str(self.timing_cache) if self.timing_cache else None,
            version_compatible=self.version_compatible, hardware_compatibility=self.hardware_compatibility,
            optimization_level=self.optimization_level,
        )


def build_engine(
    onnx_path: Path | str,
    plan_path: Path | str,
    config: BuildConfig = BuildConfig(),
    *,
    profiles: list[Profile] | None = None,
    flavour: TensorRTFlavour = "tensorrt",
) -> EngineRecord:
    """Parse ``onnx_path`` strongly typed, build it, write the plain plan to ``plan_path``.

    Args:
        onnx_path: ONNX graph (external data next to it is found by the parser).
        plan_path: where to write the serialized engine (written under a temporary name and
            renamed, so a failed or interrupted build leaves no plan).
        config: build settings.
        profiles: optimisation profiles, each input name -> (min, opt, max) shapes; required
            when the graph has dynamic inputs (use ``[config.decoder_profile()]`` for the decoder).
        flavour: ``"tensorrt"``, or ``"tensorrt_rtx"`` to build without a GPU (test builds).

    Returns:
        The plan's record for ``manifest.json`` (:class:`~samexport.engine_records.EngineRecord`, the plan
        named by its file name): builder, TensorRT module and version, whether it is a test build,
        GPU name and compute capability (None when built without a GPU), TF32, profiles, IO
        tensors, settings, seconds, plan size.

    Raises:
        SamExportError: the graph does not parse (with every parser error), a dynamic input has
            no profile, a setting is not supported by this TensorRT or device, or the build fails.
        MissingExtraError: TensorRT or Polygraphy is not installed.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise SamExportError(f"ONNX graph not found: {onnx_path}")
    pg = polygraphy_trt(flavour)
    trt = load_tensorrt(flavour)
    check_build_settings(trt, config, flavour)
    with _polygraphy_messages() as messages:
        try:
            builder, network, parser = pg.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
        except Exception as exc:  # noqa: BLE001 (Polygraphy reports parser failures as PolygraphyException)
            raise SamExportError(
                f"{flavour} could not parse {onnx_path}:\n  " + "\n  ".join(messages.errors or [str(exc)])
            ) from None
        _check_profiles(network, profiles or [])
        create_config = _create_config(pg, trt, config, profiles or [], flavour)
        start = time.perf_counter()
        try:
            plan = pg.EngineBytesFromNetwork(
                (builder, network, parser), config=create_config,
                save_timing_cache=str(config.timing_cache) if config.timing_cache else None,
            )()
        except Exception as exc:  # noqa: BLE001 (PolygraphyException: the builder returned no engine)
            hint = ""
            if any("OutOfMemory" in e for e in messages.errors):
                hint = f"\n  (workspace_bytes={config.workspace_bytes} is too small for the largest profile)"
            raise SamExportError(
                f"{flavour} failed to build {onnx_path.name}:\n  " + "\n  ".join(messages.errors or [str(exc)]) + hint
            ) from None
        seconds = time.perf_counter() - start
    data = memoryview(plan)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(plan_path, data)

    gpu = None
    try:
        gpu = cuda_devices()[0]
    except NoGpuError:
        pass
    return EngineRecord(
        plan=plan_path.name,
        builder=flavour,
        test_build=flavour == "tensorrt_rtx",
        tensorrt_module=trt.__name__,
        tensorrt_version=trt.__version__,
        gpu=gpu.name if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
        profiles=tuple(
            {name: ShapeRange(*(tuple(shape) for shape in shapes)) for name, shapes in profile.items()}
            for profile in profiles or []
        ),
        config=config.record(),
        plan_bytes=data.nbytes,
        strongly_typed=True,
        tf32=False,
        inputs=tuple(_io(network.get_input(i)) for i in range(network.num_inputs)),
        outputs=tuple(_io(network.get_output(i)) for i in range(network.num_outputs)),
        build_seconds=round(seconds, 3),
    )


# TensorRT's names for the dtypes of the graph contracts (``DataType.FLOAT`` -> ``"float"``, as
# :func:`_io` writes them into the engine record).
TENSORRT_DTYPES = {"float32": "float", "float16": "half", "int32": "int32", "int64": "int64", "bool": "bool"}


def expected_io(specs: tuple[C.TensorSpec, ...]) -> list[dict]:
    """The engine record's view of ``specs`` (a graph contract's inputs or outputs): name,
    TensorRT dtype, shape with -1 for each dynamic axis."""
    return [
        {"name": s.name, "dtype": TENSORRT_DTYPES[s.dtype], "shape": [-1 if isinstance(d, str) else d for d in s.shape]}
        for s in specs
    ]


def check_engine_io(record: EngineRecord, graph: str, contract: C.GraphContract) -> None:
    """Refuse a plan whose input or output tensors are not ``contract``'s for ``graph``
    (``"encoder"`` / ``"decoder"``): the same names in the same order, dtypes and shapes (a
    dynamic axis is -1). The runtime feeds and reads the plans by the contract, so a graph exported
    for another family, or an older export, is said here rather than at the first inference.

    Raises:
        SamExportError: naming the first tensor that differs, what the plan has and what the contract says.
    """
    inputs = {"encoder": contract.encoder_inputs, "decoder": contract.decoder_inputs}[graph]
    outputs = {"encoder": contract.encoder_outputs, "decoder": contract.decoder_outputs}[graph]
    for kind, found, wanted in (("inputs", record.inputs, expected_io(inputs)), ("outputs", record.outputs, expected_io(outputs))):
        if [dict(io) for io in found] != wanted:
            raise SamExportError(
                f"the {graph} plan's {kind} are not the {contract.name} graph contract's: plan "
                f"{[(io['name'], io['dtype'], list(io['shape'])) for io in found]}, contract "
                f"{[(io['name'], io['dtype'], io['shape']) for io in wanted]}"
            )


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T writes ``/etc/nv_tegra_release``)."""
    return Path("/etc/nv_tegra_release").exists()


def check_build_settings(trt, config: BuildConfig, flavour: TensorRTFlavour = "tensorrt") -> None:
    """Refuse, before any work, settings this TensorRT release or this device cannot build.

    - ``same_compute_capability`` first exists in TensorRT 10.9
      (``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY``; 10.3 on JetPack 6 lacks it).
    - Hardware compatibility is not supported on Jetson (TensorRT's "Hardware Compatibility"
      section lists it for discrete GPUs of the Ampere generation and newer only).
    - Version compatibility needs ``BuilderFlag.VERSION_COMPATIBLE`` (TensorRT >= 8.6).

    Raises:
        SamExportError: naming the setting, the release or device, and what to do instead.
    """
    if config.hardware_compatibility != "none":
        if flavour == "tensorrt" and is_jetson():
            raise SamExportError(
                "hardware-compatible engines are not supported on Jetson; build without "
                "--hardware-compatible (the plan then runs on this Jetson model only)"
            )
        level = config.hardware_compatibility.upper()
        trt_api.require(
            trt, f"HardwareCompatibilityLevel.{level}",
            f"hardware compatibility level {level} (--hardware-compatible)",
        )
    if config.version_compatible:
        trt_api.require(trt, "BuilderFlag.VERSION_COMPATIBLE", "version-compatible engines (--version-compatible)")


def _create_config(pg, trt, config: BuildConfig, profiles: list[Profile], flavour: TensorRTFlavour):
    """Polygraphy's config loader for ``config``: ``CreateConfig`` (TF32 off), or
    ``CreateConfigRTX`` for TensorRT-RTX, which has no precision flags to set."""
    polygraphy_profiles = []
    for shapes in profiles:
        profile = pg.Profile()
        for name, (low, opt, high) in shapes.items():
            profile.add(name, min=low, opt=opt, max=high)
        polygraphy_profiles.append(profile)
    kwargs = {
        "profiles": polygraphy_profiles or None,
        "memory_pool_limits": (
            {trt.MemoryPoolType.WORKSPACE: config.workspace_bytes} if config.workspace_bytes is not None else None
        ),
        "builder_optimization_level": config.optimization_level,
        "version_compatible": config.version_compatible or None,
        "hardware_compatibility_level": (
            getattr(trt.HardwareCompatibilityLevel, config.hardware_compatibility.upper())
            if config.hardware_compatibility != "none" else None
        ),
        "load_timing_cache": str(config.timing_cache) if config.timing_cache else None,
    }
    if flavour == "tensorrt_rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        return CreateConfigRTX(**kwargs)
    return pg.CreateConfig(tf32=False, **kwargs)


class _Messages(logging.Handler):
    """Collects Polygraphy's (and, through it, TensorRT's) error lines for the exception."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(message)
            log.error("TensorRT: %s", message)
        elif record.levelno >= logging.WARNING:
            log.warning("TensorRT: %s", message)
        else:
            log.debug("TensorRT: %s", message)


@contextlib.contextmanager
def _polygraphy_messages() -> Iterator[_Messages]:
    """Route Polygraphy's log through ``logging`` while a build runs: its errors are kept for the
    exception message, warnings reach samexport's logger, info lines stay out of the CLI output."""
    from polygraphy.logger import G_LOGGER

    handler = _Messages()
    python_logger = logging.getLogger("Polygraphy")
    previous, severity = G_LOGGER.use_python_logging_system, G_LOGGER.module_severity
    G_LOGGER.use_python_logging_system = True
    previous_level = python_logger.level
    if log.isEnabledFor(logging.DEBUG):  # TensorRT's verbose lines (layer fusions) only when asked
        G_LOGGER.module_severity = G_LOGGER.EXTRA_VERBOSE  # where Polygraphy puts TensorRT's VERBOSE
        python_logger.setLevel(1)
    python_logger.addHandler(handler)
    python_logger.propagate = False
    try:
        yield handler
    finally:
        python_logger.removeHandler(handler)
        G_LOGGER.use_python_logging_system = previous
        G_LOGGER.module_severity = severity
        python_logger.setLevel(previous_level)


def _check_profiles(network, profiles: list[Profile]) -> None:
    """Every dynamic input needs shapes in every profile (Polygraphy would fill in defaults)."""
    dynamic = [
        network.get_input(i).name for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    for index, shapes in enumerate(profiles):
        missing = [name for name in dynamic if name not in shapes]
        if missing:
            raise SamExportError(f"optimisation profile {index} gives no shapes for dynamic inputs {missing}")
        for name, (low, opt, high) in shapes.items():
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise SamExportError(f"optimisation profile {index} is invalid for {name}: {low}, {opt}, {high}")
    if dynamic and not profiles:
        raise SamExportError(f"inputs {dynamic} are dynamic: pass an optimisation profile for them")


def _io(tensor) -> dict:
    return {"name": tensor.name, "dtype": str(tensor.dtype).rsplit(".", 1)[-1].lower(), "shape": list(tensor.shape)}
