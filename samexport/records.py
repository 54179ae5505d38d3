"""The manifest's typed sections (``samexport.artifacts.Manifest``): what the graphs' precisions
are, what the build's parity check found, what each engine plan is. Each reads and writes its
``manifest.json`` form (``from_dict`` / ``to_dict``), so code reads attributes, not string keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class EngineRecord:
    """One entry of ``manifest.engines`` (written by ``samexport.engines.builder.build_engine``),
    read as attributes: ``Manifest.engine(name)``.

    Attributes:
        plan: the plan's path, relative to the artifact.
        profiles: the optimization profiles, each ``{input name: [min, opt, max] shapes}``
            (none for the encoder, whose shapes are fixed).
        tensorrt_module, tensorrt_version: the TensorRT that built the plan.
        gpu, compute_capability: the building GPU (None for a build without one).
        plan_bytes: the plan's size.
        data: the whole entry as written.
    """

    plan: str
    profiles: tuple[dict, ...]
    tensorrt_module: str | None
    tensorrt_version: str | None
    gpu: str | None
    compute_capability: str | None
    plan_bytes: int | None
    data: dict

    @classmethod
    def from_dict(cls, data: dict, *, name: str = "engine") -> EngineRecord:
        if not (isinstance(data, dict) and isinstance(data.get("plan"), str)):
            raise SamExportError(f"the {name} engine's record names no plan: {str(data)[:200]}")
        return cls(
            data["plan"], tuple(data.get("profiles") or ()), data.get("tensorrt_module"),
            data.get("tensorrt_version"), data.get("gpu"), data.get("compute_capability"),
            data.get("plan_bytes"), data,
        )

    @property
    def test_build(self) -> bool:
        """A plan built to prove the graph builds (TensorRT-RTX, or no GPU); the runtime refuses it."""
        return bool(self.data.get("test_build"))

    @property
    def max_prompts(self) -> int | None:
        """The largest prompt batch the plan's first profile admits (the ``max`` size of the
        ``point_coords`` batch axis), or None for a plan without profiles (the encoder)."""
        if not self.profiles:
            return None
        return int(self.profiles[0][C.POINT_COORDS.name][2][0])
