"""Artifact directories: the ONNX graphs, engine plans and ``manifest.json`` of one build.

A build is written into a hidden staging folder next to its destination and renamed into place only
when complete, manifest last, so a crash never leaves a directory that looks like a finished build
(``samexport.staging.staged_directory``). The destination is checked before any work
(``samexport.staging.check_output_destination``): samexport replaces only its own artifacts
(``samexport.replaceable.check_replaceable_artifact``), never a user's folder or file. The
manifest records the size and sha256 of every file the runtime loads (``Manifest.files``, see
``samexport.integrity``), recomputed on every rewrite. The manifest's sections are typed
(``samexport.records``: graph precisions, parity, the checkpoint, the graphs, the stored references;
``samexport.engine_records``: the build settings, one ``EngineRecord`` per engine plan, the verdict).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from samexport import constants as C
from samexport.engine_records import EngineRecord, EngineSettings, EngineVerification, engine_records, settings_or_none
from samexport.errors import SamExportError
from samexport.integrity import FileRecord, check_sizes, file_records, verify_files
from samexport.records import CheckpointRecord, GraphPrecisions, GraphRecord, ParityRecord, ReferencesRecord
from samexport.staging import write_atomically
from samexport.variants import get_model

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2  # 2: a "runtime" section; format 1 manifests are read and upgraded
DEFAULT_ROOT = Path("engines")
PLANS_PREFIX = "plans-"  # engine plan folders (samexport.engines.artifact)
PLANS_PARTIAL_PREFIX = ".plans-partial-"
PLANS_MARKER = ".samexport-plans"  # in plan folders: {"pid": ...} of the run that wrote them
PLAN_FILES = ("encoder.plan", "decoder.plan")
DIGEST_KEY = "manifest_sha256"  # sha256 of the rest of manifest.json (see write_manifest)


def default_artifact_dir(variant: str, precision: str, root: Path = DEFAULT_ROOT) -> Path:
    """``engines/<variant>-<precision>``, e.g. ``engines/vit_b-fp16``."""
    return root / f"{variant}-{precision}"


def onnxruntime_memory_arena(precision: str, *, fp16_encoder: bool = False) -> bool:
    """Whether ONNX Runtime sessions get the CPU memory arena: not for fp16 graphs, the int8
    encoder on an FP16 graph (TensorRT recipe, ``fp16_encoder``) included. The arena grew past
    18 GiB on the vit_b fp16 encoder, 4.4 GiB without it."""
    return precision != "fp16" and not fp16_encoder


@dataclass(frozen=True)
class RuntimeNeeds:
    """What a runtime must know to open the artifact, recorded by the build so the runtime never
    infers it from build settings (the attention mode, the precision).

    Attributes:
        onnxruntime_encoder: ONNX Runtime can run ``encoder.onnx`` (False for plugin-node graphs,
            which only TensorRT runs).
        onnxruntime_memory_arena: open ONNX Runtime sessions with the CPU memory arena (see
            :func:`onnxruntime_memory_arena`).
        gpu_specific_kernels: the engines hold kernels compiled for the building GPU (the
            attention plugin's PTX), so hardware compatibility does not apply to them.
    """

    onnxruntime_encoder: bool = True
    onnxruntime_memory_arena: bool = True
    gpu_specific_kernels: bool = False

    @classmethod
    def for_build(cls, *, precision: str, attention: str, fp16_encoder: bool = False) -> RuntimeNeeds:
        """``fp16_encoder``: an int8 encoder whose Q/DQ sit on an FP16 graph (TensorRT recipe)."""
        return cls(
            onnxruntime_encoder=attention != "plugin",
            onnxruntime_memory_arena=onnxruntime_memory_arena(precision, fp16_encoder=fp16_encoder),
            gpu_specific_kernels=attention == "plugin",
        )


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what one build made and what the runtime needs to open it.

    ``to_dict`` / ``from_dict`` are the JSON form; ``from_dict`` validates types and values and
    upgrades format 1. Keys this version does not know are kept in ``extra`` and written back.
    ``files`` maps each file the runtime loads (path relative to the artifact) to its
    ``FileRecord`` (size and sha256; ``samexport.integrity``); ``write_manifest`` fills it; only format 1 manifests,
    written before it existed, may have none (their files are not verified; ``read_manifest``).
    ``references`` describes the stored
    PyTorch reference outputs (a ``ReferencesRecord``, ``samexport.parity.references``; None for
    artifacts built before samexport stored them), whose file is listed in ``files`` like the graphs.
    ``engines_verification`` is the verdict on the plans ``engines`` names, recorded by
    ``samexport engines`` (``samexport.parity.engines``): passed / unverified / not run, with the
    GPU, TensorRT version, attention mode and figures (an ``EngineVerification``); None when no
    plans were checked. ``engine_config`` is the build settings of the plans (an
    ``EngineSettings``; None, written ``{}``, when none were configured); ``skipped_engines`` says,
    by engine name, why a plan was not built.
    """

    variant: str
    precision: str
    attention: str
    opset: int
    graphs: GraphPrecisions
    checkpoint: CheckpointRecord
    encoder: GraphRecord
    decoder: GraphRecord
    runtime: RuntimeNeeds
    engine_config: EngineSettings | None = None
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    skipped_engines: dict[str, str] = field(default_factory=dict)
    engines_verification: EngineVerification | None = None
    parity: ParityRecord | None = None
    references: ReferencesRecord | None = None
    versions: dict = field(default_factory=dict)
    build_seconds: float | None = None
    created: str | None = None
    files: dict[str, FileRecord] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict:
        data = {"format": self.format}
        for item in fields(self):
            if item.name not in ("format", "extra", "runtime"):
                data[item.name] = getattr(self, item.name)
        data["graphs"] = self.graphs.to_dict()
        data["parity"] = None if self.parity is None else self.parity.to_dict()
        data["engines"] = {name: record.to_dict() for name, record in self.engines.items()}
        data["engine_config"] = self.engine_config.to_dict() if self.engine_config else {}
        data["engines_verification"] = self.engines_verification and self.engines_verification.to_dict()
        data["skipped_engines"] = dict(self.skipped_engines)
        data["references"] = self.references and self.references.to_dict()
        data["files"] = {name: record.to_dict() for name, record in self.files.items()}
        for key in ("checkpoint", "encoder", "decoder"):
            data[key] = getattr(self, key).to_dict()
        data["runtime"] = asdict(self.runtime)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: object, *, source: str = C.MANIFEST) -> Manifest:
        """Validate and build; a wrong type, an unknown variant / precision / attention mode or
        an unknown format is a :class:`SamExportError` naming ``source``."""
        if not isinstance(data, dict):
            raise SamExportError(f"{source} is not a samexport manifest (a JSON object was expected, got {type(data).__name__})")
        version = data.get("format")
        if version not in (1, MANIFEST_FORMAT):
            raise SamExportError(
                f"{source} has manifest format {version!r}; this samexport reads formats 1 and "
                f"{MANIFEST_FORMAT}: rebuild the artifacts"
            )
        expected = {
            "variant": str, "precision": str, "attention": str, "opset": int, "graphs": dict,
            "checkpoint": dict, "encoder": dict, "decoder": dict, "engine_config": dict,
            "engines": dict, "skipped_engines": dict, "versions": dict, "files": dict,
        }
        data = {
            "attention": "plain", "engine_config": {}, "engines": {}, "skipped_engines": {}, "versions": {},
            "files": {}, **data,
        }
        for key, kind in expected.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise SamExportError(f"{source}: {key!r} must be a {kind.__name__}, got {data.get(key)!r}")
        if data["precision"] not in C.PRECISIONS:
            raise SamExportError(f"{source}: unknown precision {data['precision']!r}; valid: {', '.join(C.PRECISIONS)}")
        if data["attention"] not in C.ATTENTION_MODES:
            raise SamExportError(f"{source}: unknown attention mode {data['attention']!r}; valid: {', '.join(C.ATTENTION_MODES)}")
        decoder = GraphRecord.from_dict(data["decoder"], section="decoder", source=source)
        halves = decoder.halves
        if halves is not None and not all(
            key in halves and halves[key].onnx == name
            for key, name in (("scores", C.DECODER_SCORES_ONNX), ("masks", C.DECODER_MASKS_ONNX))
        ):
            raise SamExportError(f"{source}: bad 'decoder.halves' section: {data['decoder']['halves']!r}")
        for name, reason in data["skipped_engines"].items():
            if not isinstance(reason, str):
                raise SamExportError(f"{source}: 'skipped_engines' must give a reason (a string) for {name!r}, got {reason!r}")
        try:
            get_model(data["variant"])
        except SamExportError as exc:
            raise SamExportError(f"{source}: {exc}") from None
        if version == 1:
            runtime = RuntimeNeeds.for_build(precision=data["precision"], attention=data["attention"])
        elif isinstance(data.get("runtime"), dict):
            try:
                runtime = RuntimeNeeds(**data["runtime"])
            except TypeError as exc:
                raise SamExportError(f"{source}: bad 'runtime' section: {exc}") from None
        else:
            raise SamExportError(f"{source}: 'runtime' must be an object, got {data.get('runtime')!r}")
        graphs = GraphPrecisions.from_dict(data["graphs"], source=source)
        parity = None if data.get("parity") is None else ParityRecord.from_dict(data["parity"], source=source)
        engines = engine_records(data["engines"], source=source)
        verdict = data.get("engines_verification")
        references = data.get("references")
        typed = {
            "references": None if references is None else ReferencesRecord.from_dict(references, source=source),
            "checkpoint": CheckpointRecord.from_dict(data["checkpoint"], source=source),
            "encoder": GraphRecord.from_dict(data["encoder"], section="encoder", source=source),
            "decoder": decoder,
            "files": {name: FileRecord.from_dict(record, name=name, source=source) for name, record in data["files"].items()},
            "graphs": graphs, "parity": parity, "engines": engines,
            "engine_config": settings_or_none(data["engine_config"], source=source),
            "engines_verification": None if verdict is None else EngineVerification.from_dict(verdict, source=source),
        }
        known = {item.name for item in fields(cls)}
        return cls(
            **{key: data[key] for key in known - {"runtime", "extra", "format", *typed} if key in data},
            **typed,
            runtime=runtime,
            extra={key: value for key, value in data.items() if key not in known},
            format=MANIFEST_FORMAT,
        )

    def replace(self, **changes) -> Manifest:
        return replace(self, **changes)

    def engine(self, name: str) -> EngineRecord:
        """The record of the ``encoder`` or ``decoder`` plan (a ``KeyError`` when there is none:
        check ``name in manifest.engines`` first)."""
        return self.engines[name]

    @property
    def contract(self) -> C.GraphContract:
        """What the artifact's encoder emits and decoder takes (its model family's contract)."""
        return get_model(self.variant).contract

    def decoder_halves(self) -> tuple[str, str] | None:
        """(``decoder_scores.onnx``, ``decoder_masks.onnx``), or None for artifacts built before
        samexport wrote the decoder's halves (``decoder.halves`` in the manifest)."""
        halves = self.decoder.halves
        return (halves["scores"].onnx, halves["masks"].onnx) if halves else None


def artifact_files(folder: Path, manifest: Manifest) -> list[str]:
    """The files the runtime loads, relative to ``folder``: the ONNX graphs (``C.GRAPH_FILES``)
    and their external data (``C.GRAPH_DATA_FILES``) that exist, by exact name, the plans
    ``manifest.engines`` names and the references file ``manifest.references`` names."""
    folder = Path(folder)
    names = {name for name in (*C.GRAPH_FILES, *C.GRAPH_DATA_FILES) if (folder / name).is_file()}
    names |= {record.plan for record in manifest.engines.values()}
    if manifest.references:
        names.add(manifest.references.file)
    return sorted(names)


def _digest(data: dict) -> str:
    """sha256 of the manifest's JSON in a canonical form (sorted keys, no whitespace)."""
    import hashlib

    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record the size and sha256 of the artifact's files (:func:`artifact_files`) in
    ``manifest.files`` and write ``manifest.json`` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over the old one, so a reader sees the old manifest or the new,
    never half. The file also holds :data:`DIGEST_KEY`, the sha256 of the rest, so that an edited
    manifest (another variant or precision) is refused by :func:`read_manifest`. Returns the
    manifest written (with its file records)."""
    folder = Path(folder)
    manifest = manifest.replace(files=file_records(folder, artifact_files(folder, manifest)))
    data = manifest.to_dict()
    write_atomically(folder / C.MANIFEST, json.dumps({**data, DIGEST_KEY: _digest(data)}, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path | str) -> Manifest:
    """Read and validate ``manifest.json`` and check the recorded file sizes (fast: no hashing;
    :func:`verify_artifact` checks contents); a missing or foreign file is a clear error, and so
    is a manifest edited since it was written (its :data:`DIGEST_KEY` does not match, or a
    current-format manifest lacks it or its file records; only format 1 manifests, written before
    records existed, are read without them, and :func:`verify_artifact` warns)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SamExportError(f"artifact directory not found: {folder}")
    path = folder / C.MANIFEST
    if not path.is_file():
        raise SamExportError(
            f"{folder} has no {C.MANIFEST}: it is not a samexport build, or the build did not "
            "finish; run `samexport build` again"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SamExportError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        _check_records_present(data, path)
    if isinstance(data, dict) and (DIGEST_KEY in data or data.get("files")):
        data = dict(data)
        if data.pop(DIGEST_KEY, None) != _digest(data):
            raise SamExportError(
                f"{path} was changed after samexport wrote it ({DIGEST_KEY} does not match its "
                "contents): the artifact cannot be trusted; rebuild it, or copy it again"
            )
    manifest = Manifest.from_dict(data, source=str(path))
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        if not (folder / name).is_file():
            raise SamExportError(f"{folder} is incomplete: {name} is missing; rebuild it")
    if manifest.files:
        unrecorded = sorted(set(artifact_files(folder, manifest)) - set(manifest.files))
        if unrecorded:
            raise SamExportError(
                f"{path} records no size or hash for {', '.join(unrecorded)}: the manifest was edited "
                "or comes from another build; rebuild the artifact, or copy it again"
            )
        check_sizes(folder, manifest.files, source=str(path))
    return manifest


def _check_records_present(data: dict, path: Path) -> None:
    """A manifest of the current format carries its file records and digest: every samexport that
    writes this format writes both, so one without them was edited, and reading it as an older
    build's would turn every hash check off. Only a genuinely older format (1: no ``runtime``
    section, written before records existed) may lack them.

    Raises:
        SamExportError: the records or the digest are missing from a current-format manifest, or a
            manifest claiming format 1 has the ``runtime`` section format 1 never had.
    """
    if data.get("format") == 1 and "runtime" in data:
        raise SamExportError(
            f"{path} claims manifest format 1 but has the 'runtime' section only format "
            f"{MANIFEST_FORMAT} writes: it was edited; rebuild the artifact, or copy it again"
        )
    if data.get("format") == MANIFEST_FORMAT and (DIGEST_KEY not in data or not data.get("files")):
        missing = [key for key in ("files", DIGEST_KEY) if not data.get(key)]
        raise SamExportError(
            f"{path} has manifest format {MANIFEST_FORMAT} but no {' or '.join(repr(k) for k in missing)}, "
            "which every samexport writing this format records: the manifest was edited, so its graphs "
            "cannot be checked; rebuild the artifact, or copy it again"
        )


def verify_artifact(folder: Path | str, manifest: Manifest, *, names: list[str] | None = None) -> None:
    """Check the sha256 of the artifact's files (``names`` only, when given) against the
    manifest; matches are cached (``samexport.integrity``), so only a first open hashes.

    A manifest without file records (written before samexport recorded them) is accepted with a
    warning: its files cannot be checked.

    Raises:
        SamExportError: a file is missing, or differs from its record (damaged, or from another
            build); the message names it.
    """
    folder = Path(folder)
    if not manifest.files:
        log.warning(
            "%s records no file sizes or hashes (made by an older samexport): its graphs and plans "
            "cannot be verified; rebuild it to add them", folder / C.MANIFEST,
        )
        return
    verify_files(folder, manifest.files, source=str(folder / C.MANIFEST), names=names)
