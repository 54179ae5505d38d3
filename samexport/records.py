"""The manifest's typed sections (``samexport.artifacts.Manifest``): what the graphs' precisions
are, what the build's parity check found, what each engine plan is, what the stored PyTorch
references are. Each reads and writes its ``manifest.json`` form (``from_dict`` / ``to_dict``),
so code reads attributes, not string keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from samexport import constants as C
from samexport.errors import SamExportError

# The encoder's display names for an FP16 graph, in ``graphs.encoder`` of manifests written before
# ``graphs.fp16_encoder`` existed (read by GraphPrecisions.from_dict only).
_FP16_ENCODERS = ("fp16", "int8 (Q/DQ) on fp16")


@dataclass(frozen=True)
class GraphPrecisions:
    """``manifest.graphs``: the numeric format of the graphs the build wrote.

    Attributes:
        encoder: ``fp32``, ``fp16``, ``int8 (Q/DQ)`` or ``int8 (Q/DQ) on fp16`` (for people;
            no code reads meaning from it).
        decoder: ``fp32`` or ``fp16``.
        fp16_encoder: the encoder graph computes in FP16: ``fp16``, or int8 whose Q/DQ sit on an
            FP16 graph (the TensorRT recipe, ``samexport.precision.recipes.Int8Recipe.fp16``).
        int8_target: the runtime the int8 Q/DQ placement is tuned for (None unless int8).
        calibration_images: the folder the int8 encoder was calibrated on (None unless int8).
        extra: keys this version does not know, written back as they were.
    """

    encoder: str
    decoder: str
    fp16_encoder: bool = False
    int8_target: str | None = None
    calibration_images: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {"encoder": self.encoder, "decoder": self.decoder, "fp16_encoder": self.fp16_encoder}
        if self.int8_target is not None:
            data |= {"int8_target": self.int8_target, "calibration_images": self.calibration_images}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = C.MANIFEST) -> GraphPrecisions:
        """Validate; a section written before ``fp16_encoder`` existed gets it from the
        encoder's name, the only place those builds recorded it."""
        if not (isinstance(data.get("encoder"), str) and isinstance(data.get("decoder"), str)):
            raise SamExportError(f"{source}: bad 'graphs' section: {str(data)[:200]}")
        fp16 = data.get("fp16_encoder", data["encoder"] in _FP16_ENCODERS)
        if not isinstance(fp16, bool):
            raise SamExportError(f"{source}: 'graphs.fp16_encoder' must be true or false, got {fp16!r}")
        known = ("encoder", "decoder", "fp16_encoder", "int8_target", "calibration_images")
        return cls(
            data["encoder"], data["decoder"], fp16, data.get("int8_target"), data.get("calibration_images"),
            extra={key: value for key, value in data.items() if key not in known},
        )


@dataclass(frozen=True)
class ParityRecord:
    """``manifest.parity``: the build's short parity check against PyTorch, as stored
    (``ParityReport.to_dict(detail=False)``, ``samexport.parity.report``).

    Attributes:
        passed: every check was within the precision's tolerances.
        summary: the worst (and mean) figures, by name (``ParityReport.summary``:
            ``embedding_cosine``, ``mask_iou_min``, ``iou_score_max_abs``, ...).
        precision: the tolerances used.
        details: the rest as written (reference, candidate, tolerances, checks, images).
    """

    passed: bool
    summary: dict
    precision: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {"passed": self.passed, "summary": self.summary}
        if self.precision is not None:
            data["precision"] = self.precision
        return {**data, **self.details}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> ParityRecord:
        if not (isinstance(data, dict) and isinstance(data.get("passed"), bool) and isinstance(data.get("summary"), dict)):
            raise SamExportError(f"{source}: bad 'parity' section: {str(data)[:200]}")
        details = {key: value for key, value in data.items() if key not in ("passed", "summary", "precision")}
        return cls(data["passed"], data["summary"], data.get("precision"), details)


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


# The stored PyTorch references: ``references-<sha256 prefix>.npz`` (samexport.parity.references),
# named by content so that replacing them never overwrites the file the current manifest names.
REFERENCES_PREFIX = "references-"
# The keys of ``manifest.references`` as ``samexport.parity.references.record_references`` writes
# them, in its order (format 1 records have no ``contract`` or ``features``).
_REFERENCES_KEYS = (
    "file", "format", "contract", "features", "images", "image_source", "decoder_calls", "stored_dtype",
    "storage_error", "reference", "seconds", "bytes",
)


class ReferenceImage(NamedTuple):
    """One stored reference image: its size (height, width) and the prompts recorded on it, by name."""

    size: tuple[int, int]
    prompts: tuple[str, ...]


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_number_map(value: object) -> bool:
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _reference_image(value: object) -> ReferenceImage:
    """``{"size": [h, w], "prompts": [name, ...]}`` -> ReferenceImage (ValueError when not that)."""
    if not (isinstance(value, dict) and set(value) == {"size", "prompts"} and _is_str_list(value["prompts"])
            and isinstance(value["size"], list) and len(value["size"]) == 2 and all(_is_int(n) for n in value["size"])):
        raise ValueError(value)
    return ReferenceImage(tuple(value["size"]), tuple(value["prompts"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ReferencesRecord:
    """``manifest.references``: the stored PyTorch FP32 reference outputs
    (``samexport.parity.references.record_references`` writes the file and this record).

    Attributes:
        file: the ``references-<sha>.npz`` file in the artifact (listed in ``manifest.files``).
        format: the file's format (1: SAM's embedding only; 2: the graph contract's features).
        contract: the model family's graph contract the outputs follow (None in format 1).
        features: the encoder outputs stored per image, by name (None in format 1).
        images: the stored images, by name, in the file's order (:class:`ReferenceImage`).
        image_source: where the images came from, for people.
        decoder_calls: how many decoder calls are stored.
        stored_dtype: what each kind of array is stored as (``features``: ``float16``, ...), for people.
        storage_error: the storing's rounding error, by figure (``embedding_rel_max_abs``, ...).
        reference: the model that computed them (``... (FP32)``), for people.
        seconds: how long recording took; bytes: the file's size.
        absent: the keys the JSON form did not hold; they read as the defaults and are not written back.
        extra: keys this version does not know, written back as they were.
    """

    file: str
    format: int = 1
    contract: str | None = None
    features: tuple[str, ...] | None = None
    images: dict[str, ReferenceImage] = field(default_factory=dict)
    image_source: str | None = None
    decoder_calls: int | None = None
    stored_dtype: dict[str, str] = field(default_factory=dict)
    storage_error: dict[str, float] = field(default_factory=dict)
    reference: str | None = None
    seconds: float | None = None
    bytes: int | None = None
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {key: getattr(self, key) for key in _REFERENCES_KEYS if key not in self.absent}
        if data.get("features") is not None:
            data["features"] = list(data["features"])
        if "images" in data:
            data["images"] = {name: {"size": list(image.size), "prompts": list(image.prompts)}
                              for name, image in self.images.items()}
        for key in ("stored_dtype", "storage_error"):
            if key in data:
                data[key] = dict(data[key])
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> ReferencesRecord:
        """Validate the JSON form: the file's name is a references file's, the other keys that
        are present have their types."""
        checks = {
            "format": _is_int, "contract": _is_str, "features": _is_str_list, "images": lambda v: isinstance(v, dict),
            "image_source": _is_str, "decoder_calls": _is_int, "stored_dtype": _is_str_map,
            "storage_error": _is_number_map, "reference": _is_str, "seconds": _is_number, "bytes": _is_int,
        }
        if not (
            isinstance(data, dict) and isinstance(data.get("file"), str)
            and re.fullmatch(rf"{REFERENCES_PREFIX}[0-9a-f]{{16}}\.npz", data["file"])
            and all(check(data[key]) for key, check in checks.items() if key in data)
        ):
            raise SamExportError(f"{source}: bad 'references' section: {str(data)[:200]}")
        known = {key: data[key] for key in _REFERENCES_KEYS if key in data}
        try:
            known["images"] = {name: _reference_image(image) for name, image in known.get("images", {}).items()}
        except ValueError as exc:
            raise SamExportError(f"{source}: bad 'references.images' entry: {str(exc)[:200]}") from None
        if "features" in known:
            known["features"] = tuple(known["features"])
        for key in ("stored_dtype", "storage_error"):
            known[key] = dict(known.get(key, {}))
        return cls(
            **known, absent=frozenset(key for key in _REFERENCES_KEYS if key not in data),
            extra={key: value for key, value in data.items() if key not in _REFERENCES_KEYS},
        )

    def replace(self, **changes) -> ReferencesRecord:
        return replace(self, **changes)


def _tensor_spec(value: object) -> C.TensorSpec:
    """``{"name", "dtype", "shape"}`` (``TensorSpec.to_dict``) -> TensorSpec (ValueError when not that)."""
    if not (isinstance(value, dict) and set(value) == {"name", "dtype", "shape"} and _is_str(value["name"])
            and _is_str(value["dtype"]) and isinstance(value["shape"], list)
            and all(_is_int(n) or _is_str(n) for n in value["shape"])):
        raise ValueError(value)
    return C.TensorSpec(value["name"], value["dtype"], tuple(value["shape"]))


_GRAPH_KEYS = ("onnx", "inputs", "outputs", "halves")


@dataclass(frozen=True)
class GraphRecord:
    """``manifest.encoder`` / ``manifest.decoder``: one ONNX graph the build wrote
    (``samexport.build_steps.graph_record``).

    Attributes:
        onnx: the graph's file in the artifact.
        inputs, outputs: its tensors (name, dtype, shape; ``C.TensorSpec``), () when not recorded.
        halves: the decoder's two halves by name (``scores``, ``masks``), each a GraphRecord; None
            for the encoder and for artifacts built before samexport wrote them.
        absent: the keys the JSON form did not hold; not written back.
        extra: keys this version does not know, written back as they were.
    """

    onnx: str | None = None
    inputs: tuple[C.TensorSpec, ...] = ()
    outputs: tuple[C.TensorSpec, ...] = ()
    halves: dict[str, GraphRecord] | None = None
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> GraphRecord:
        return replace(self, **changes)

    def input(self, name: str) -> C.TensorSpec | None:
        """The recorded input called ``name`` (None when there is none)."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    def to_dict(self) -> dict:
        data = {key: getattr(self, key) for key in _GRAPH_KEYS if key not in self.absent}
        for key in ("inputs", "outputs"):
            if key in data:
                data[key] = [spec.to_dict() for spec in data[key]]
        if data.get("halves") is not None:
            data["halves"] = {name: half.to_dict() for name, half in self.halves.items()}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, section: str, source: str = C.MANIFEST) -> GraphRecord:
        try:
            if not isinstance(data, dict) or not (data.get("onnx") is None or _is_str(data["onnx"])):
                raise ValueError(data)
            known = {key: data[key] for key in _GRAPH_KEYS if key in data}
            for key in ("inputs", "outputs"):
                if key in known:
                    if not isinstance(known[key], list):
                        raise ValueError(known[key])
                    known[key] = tuple(_tensor_spec(spec) for spec in known[key])
        except ValueError as exc:
            raise SamExportError(f"{source}: bad {section!r} section: {str(exc)[:200]}") from None
        halves = known.get("halves")
        if halves is not None:
            if not isinstance(halves, dict):
                raise SamExportError(f"{source}: bad '{section}.halves' section: {halves!r}")
            known["halves"] = {
                name: cls.from_dict(half, section=f"{section}.halves.{name}", source=source) for name, half in halves.items()
            }
        return cls(
            **known, absent=frozenset(key for key in _GRAPH_KEYS if key not in data),
            extra={key: value for key, value in data.items() if key not in _GRAPH_KEYS},
        )


@dataclass(frozen=True)
class CheckpointRecord:
    """``manifest.checkpoint``: the PyTorch weights the build exported (file name and sha256).

    Attributes:
        file: the checkpoint's file name (None when not recorded).
        sha256: its sha256 (None when not recorded).
        absent, extra: as in :class:`GraphRecord`.
    """

    file: str | None = None
    sha256: str | None = None
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {key: getattr(self, key) for key in ("file", "sha256") if key not in self.absent}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> CheckpointRecord:
        if not (isinstance(data, dict) and all(data.get(key) is None or _is_str(data[key]) for key in ("file", "sha256"))):
            raise SamExportError(f"{source}: bad 'checkpoint' section: {str(data)[:200]}")
        return cls(
            data.get("file"), data.get("sha256"), absent=frozenset(key for key in ("file", "sha256") if key not in data),
            extra={key: value for key, value in data.items() if key not in ("file", "sha256")},
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
