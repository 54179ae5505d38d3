"""The manifest's engine sections (``samexport.artifacts.Manifest``): the build settings the plans
were made with (``engine_config``), what each plan is (``engines``) and what verifying them found
(``engines_verification``). Each reads and writes its ``manifest.json`` form (``from_dict`` /
``to_dict``), so code reads attributes, not string keys. The graphs', parity's and references'
sections are in :mod:`samexport.records`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from samexport import constants as C
from samexport.errors import SamExportError

# The keys of the build settings as ``samexport.engines.builder.BuildConfig.to_dict`` writes them.
_SETTINGS_KEYS = (
    "workspace_bytes", "prompts", "points", "timing_cache", "version_compatible", "hardware_compatibility",
    "optimization_level",
)


def _min_opt_max(value: object, key: str, source: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(type(n) is int for n in value)):
        raise SamExportError(f"{source}: engine setting {key!r} must be [min, opt, max], got {value!r}")
    return tuple(value)  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineSettings:
    """The engine build settings as recorded: ``manifest.engine_config`` and each engine record's
    ``config`` (``samexport.engines.builder.BuildConfig.record``, the build's settings as data).

    Attributes:
        workspace_bytes: the tactics' scratch memory limit (None: TensorRT's default).
        prompts, points: the decoder's prompt batch and points per prompt as (min, opt, max).
        timing_cache: the tactic timing cache file, as a string (None: none).
        version_compatible: built so that later TensorRT releases of the line may run it.
        hardware_compatibility: ``none``, ``ampere_plus`` or ``same_compute_capability``.
        optimization_level: the builder's optimisation level (None: TensorRT's default).
        absent: the keys the JSON form did not hold (records written before a setting existed, or
            partial ones); they read as the defaults here and are not written back.
        extra: keys this version does not know, written back as they were.
    """

    workspace_bytes: int | None = None
    prompts: tuple[int, int, int] | None = None
    points: tuple[int, int, int] | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    optimization_level: int | None = None
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {key: getattr(self, key) for key in _SETTINGS_KEYS if key not in self.absent}
        for key in ("prompts", "points"):
            if data.get(key) is not None:
                data[key] = list(data[key])
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> EngineSettings:
        if not isinstance(data, dict):
            raise SamExportError(f"{source}: bad engine settings: {str(data)[:200]}")
        checks = {
            "workspace_bytes": lambda v: v is None or type(v) is int,
            "timing_cache": lambda v: v is None or isinstance(v, str),
            "version_compatible": lambda v: isinstance(v, bool),
            "hardware_compatibility": lambda v: v in ("none", "ampere_plus", "same_compute_capability"),
            "optimization_level": lambda v: v is None or type(v) is int,
        }
        for key, check in checks.items():
            if key in data and not check(data[key]):
                raise SamExportError(f"{source}: bad engine setting {key!r}: {data[key]!r}")
        known = {key: data[key] for key in _SETTINGS_KEYS if key in data}
        for key in ("prompts", "points"):
            if key in known:
                known[key] = _min_opt_max(known[key], key, source)
        return cls(
            **known, absent=frozenset(key for key in _SETTINGS_KEYS if key not in data),
            extra={key: value for key, value in data.items() if key not in _SETTINGS_KEYS},
        )


def settings_or_none(data: object, *, source: str = C.MANIFEST) -> EngineSettings | None:
    """An empty settings object (``{}``: no plans were configured, or a record without them) -> None."""
    return EngineSettings.from_dict(data, source=source) if data != {} and data is not None else None


# ``engines_verification``: the keys always written (where the plans were built) and those written
# only when they have a value (the figures, when the plans ran; why not; which encoder form).
_WHERE_BUILT = ("gpu", "compute_capability", "tensorrt_module", "tensorrt_version", "attention", "precision")
_VERDICT_OPTIONAL = ("reason", "backend", "references", "summary", "checks", "verified", "encoder_form", "fallback_from")


@dataclass(frozen=True)
class EngineVerification:
    """``manifest.engines_verification``: the verdict on the plans ``manifest.engines`` names,
    recorded by ``samexport engines`` and the build (``samexport.parity.engines.verdict_record``).

    Attributes:
        status: ``passed``, ``unverified`` or ``not run (test build)`` (failed plans are not kept).
        gpu, compute_capability, tensorrt_module, tensorrt_version: where the plans were built.
        attention, precision: the artifact's attention form and precision (the tolerances used).
        reason: why the plans were not checked (e.g. ``built without references``).
        backend, references, summary, checks, verified: when the plans ran: the backend that ran
            them, the references file, the worst figures by name, each check
            (``ParityCheck.to_dict``) and when.
        encoder_form: ``exported`` or ``fp32-attention`` (``--fallback``'s safer form).
        fallback_from: with ``fp32-attention``: what the exported form's plans failed on
            (``encoder_form``, ``failure``, ``summary``).
        extra: keys this version does not know (and optional keys written as null), written back.
    """

    status: str
    gpu: str | None = None
    compute_capability: str | None = None
    tensorrt_module: str | None = None
    tensorrt_version: str | None = None
    attention: str | None = None
    precision: str | None = None
    reason: str | None = None
    backend: str | None = None
    references: str | None = None
    summary: dict | None = None
    checks: tuple[dict, ...] | None = None
    verified: str | None = None
    encoder_form: str | None = None
    fallback_from: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def replace(self, **changes) -> EngineVerification:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = {"status": self.status, **{key: getattr(self, key) for key in _WHERE_BUILT}}
        for key in _VERDICT_OPTIONAL:
            if getattr(self, key) is not None:
                data[key] = list(self.checks) if key == "checks" else getattr(self, key)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> EngineVerification:
        if not (isinstance(data, dict) and isinstance(data.get("status"), str)):
            raise SamExportError(f"{source}: bad 'engines_verification' section: {str(data)[:200]}")
        kinds = {"summary": dict, "checks": list, "fallback_from": dict}
        for key in (*_WHERE_BUILT, *_VERDICT_OPTIONAL):
            value = data.get(key)
            if value is not None and not isinstance(value, kinds.get(key, str)):
                raise SamExportError(f"{source}: bad 'engines_verification.{key}': {str(value)[:200]}")
        optional = {key: data[key] for key in _VERDICT_OPTIONAL if data.get(key) is not None}
        if "checks" in optional:
            optional["checks"] = tuple(optional["checks"])
        return cls(
            data["status"], **{key: data.get(key) for key in _WHERE_BUILT}, **optional,
            extra={
                key: value for key, value in data.items()
                if key not in ("status", *_WHERE_BUILT, *optional)  # unknown keys, and optional ones written as null
            },
        )


class ShapeRange(NamedTuple):
    """One input's shapes in an optimization profile: the smallest, the tuned-for and the largest."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


# Keys of an engine record in ``manifest.json`` that EngineRecord reads into attributes (any
# other key is kept in ``extra`` and written back).
_ENGINE_KEYS = (
    "builder", "test_build", "tensorrt_module", "tensorrt_version", "gpu", "compute_capability", "strongly_typed",
    "tf32", "inputs", "outputs", "profiles", "config", "build_seconds", "plan_bytes", "plan", "graph",
)


@dataclass(frozen=True)
class EngineRecord:
    """One entry of ``manifest.engines``: written by ``samexport.engines.builder.build_engine``
    (the plan's path made relative to the artifact by ``samexport.engines.artifact``), read as
    attributes everywhere (``Manifest.engines[name]``, ``Manifest.engine(name)``).

    Attributes:
        plan: the plan's path, relative to the artifact.
        builder: ``tensorrt``, or ``tensorrt_rtx`` for a test build (no GPU needed).
        test_build: built to prove the graph builds (TensorRT-RTX, or no GPU); the runtime refuses it.
        tensorrt_module, tensorrt_version: the TensorRT that built the plan.
        gpu, compute_capability: the building GPU (None for a build without one).
        profiles: the optimization profiles, each input name -> :class:`ShapeRange` (none for the
            encoder, whose shapes are fixed).
        config: the build settings (:class:`EngineSettings`; None in a record that has none).
        plan_bytes: the plan's size.
        graph: the graph the plan was built from when it is not the artifact's exported one (the
            FP32 attention form of ``--fallback``, ``samexport.parity.engines``); None otherwise.
        strongly_typed, tf32, inputs, outputs, build_seconds: how it was built, for people.
        extra: keys this version does not know, written back as they were.
    """

    plan: str
    builder: str = "tensorrt"
    test_build: bool = False
    tensorrt_module: str | None = None
    tensorrt_version: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    profiles: tuple[dict[str, ShapeRange], ...] = ()
    config: EngineSettings | None = None
    plan_bytes: int | None = None
    graph: dict | None = None
    strongly_typed: bool = True
    tf32: bool = False
    inputs: tuple[dict, ...] = ()
    outputs: tuple[dict, ...] = ()
    build_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {
            "builder": self.builder, "test_build": self.test_build, "tensorrt_module": self.tensorrt_module,
            "tensorrt_version": self.tensorrt_version, "gpu": self.gpu, "compute_capability": self.compute_capability,
            "strongly_typed": self.strongly_typed, "tf32": self.tf32, "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "profiles": [{name: [list(shape) for shape in shapes] for name, shapes in p.items()} for p in self.profiles],
            "config": self.config.to_dict() if self.config else {}, "build_seconds": self.build_seconds, "plan_bytes": self.plan_bytes, "plan": self.plan,
        }
        if self.graph is not None:
            data["graph"] = self.graph
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, name: str = "engine") -> EngineRecord:
        """Validate the JSON form; an entry written before ``test_build`` existed is a test build
        when TensorRT-RTX built it."""
        if not (isinstance(data, dict) and isinstance(data.get("plan"), str)):
            raise SamExportError(f"the {name} engine's record names no plan: {str(data)[:200]}")
        try:
            profiles = tuple(
                {tensor: ShapeRange(*(tuple(int(n) for n in shape) for shape in shapes)) for tensor, shapes in profile.items()}
                for profile in data.get("profiles") or ()
            )
        except (AttributeError, TypeError, ValueError):
            raise SamExportError(f"the {name} engine's record has bad profiles: {str(data.get('profiles'))[:200]}") from None
        config = data.get("config") or {}
        if not isinstance(config, dict):
            raise SamExportError(f"the {name} engine's record has a bad config: {str(config)[:200]}")
        config = settings_or_none(config, source=f"the {name} engine's record")
        builder = data.get("builder", "tensorrt")
        return cls(
            plan=data["plan"], builder=builder, test_build=bool(data.get("test_build", builder == "tensorrt_rtx")),
            tensorrt_module=data.get("tensorrt_module"), tensorrt_version=data.get("tensorrt_version"),
            gpu=data.get("gpu"), compute_capability=data.get("compute_capability"), profiles=profiles,
            config=config, plan_bytes=data.get("plan_bytes"), graph=data.get("graph"),
            strongly_typed=bool(data.get("strongly_typed", True)), tf32=bool(data.get("tf32", False)),
            inputs=tuple(data.get("inputs") or ()), outputs=tuple(data.get("outputs") or ()),
            build_seconds=data.get("build_seconds"),
            extra={key: value for key, value in data.items() if key not in _ENGINE_KEYS},
        )

    def replace(self, **changes) -> EngineRecord:
        return replace(self, **changes)

    @property
    def version_compatible(self) -> bool:
        """Built version-compatible (``--version-compatible``): later TensorRT releases of the
        line may run it."""
        return self.config is not None and self.config.version_compatible

    @property
    def hardware_compatibility(self) -> str:
        """``none``, ``ampere_plus`` or ``same_compute_capability`` (``--hardware-compatible``)."""
        return self.config.hardware_compatibility if self.config else "none"

    @property
    def max_prompts(self) -> int | None:
        """The largest prompt batch the plan's first profile admits (the ``max`` size of the
        ``point_coords`` batch axis), or None for a plan without profiles (the encoder)."""
        if not self.profiles:
            return None
        return self.profiles[0][C.POINT_COORDS.name].max[0]


def engine_records(data: dict, *, source: str = C.MANIFEST) -> dict[str, EngineRecord]:
    """``manifest.engines`` in its JSON form -> records by engine name (``encoder``, ``decoder``)."""
    try:
        return {name: EngineRecord.from_dict(record, name=name) for name, record in data.items()}
    except SamExportError as exc:
        raise SamExportError(f"{source}: {exc}") from None
