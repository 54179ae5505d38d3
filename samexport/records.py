"""The manifest's typed sections (``samexport.artifacts.Manifest``): what the graphs' precisions
are, what the build's parity check found, what the stored PyTorch references are, the checkpoint
and the graphs (the engine sections are in :mod:`samexport.engine_records`). Each reads and writes
its ``manifest.json`` form (``from_dict`` / ``to_dict``), so code reads attributes, not string keys.
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
