"""Artifact directories: the ONNX graphs, engine plans and ``manifest.json`` of one build.

A build is written into a hidden staging folder next to its destination and renamed into place only
when complete, manifest last, so a crash never leaves a directory that looks like a finished build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from samexport import constants as C
from samexport.errors import SamExportError

MANIFEST_FORMAT = 2  # 2: a "runtime" section; format 1 manifests are read and upgraded
DEFAULT_ROOT = Path("engines")


def default_artifact_dir(variant: str, precision: str, root: Path = DEFAULT_ROOT) -> Path:
    """``engines/<variant>-<precision>``, e.g. ``engines/vit_b-fp16``."""
    return root / f"{variant}-{precision}"


@dataclass(frozen=True)
class RuntimeNeeds:
    """What a runtime must know to open the artifact, recorded by the build so the runtime never
    infers it from build settings (the attention mode, the precision).

    Attributes:
        onnxruntime_encoder: ONNX Runtime can run ``encoder.onnx`` (False for plugin-node graphs,
            which only TensorRT runs).
        onnxruntime_memory_arena: open ONNX Runtime sessions with the CPU memory arena (False for
            fp16 graphs, the TensorRT-recipe int8 encoder included: the arena grew past 18 GiB
            on the vit_b fp16 encoder, 4.4 GiB without it).
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
            onnxruntime_memory_arena=precision != "fp16" and not fp16_encoder,
            gpu_specific_kernels=attention == "plugin",
        )


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what one build made and what the runtime needs to open it.

    ``to_dict`` / ``from_dict`` are the JSON form; ``from_dict`` validates types and values and
    upgrades format 1. Keys this version does not know are kept in ``extra`` and written back.
    """

    variant: str
    precision: str
    attention: str
    opset: int
    graphs: dict
    checkpoint: dict
    encoder: dict
    decoder: dict
    runtime: RuntimeNeeds
    engine_config: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)
    skipped_engines: dict = field(default_factory=dict)
    parity: dict | None = None
    versions: dict = field(default_factory=dict)
    build_seconds: float | None = None
    created: str | None = None
    extra: dict = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict:
        data = {"format": self.format}
        for item in fields(self):
            if item.name not in ("format", "extra", "runtime"):
                data[item.name] = getattr(self, item.name)
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
            "engines": dict, "skipped_engines": dict, "versions": dict,
        }
        data = {"attention": "plain", "engine_config": {}, "engines": {}, "skipped_engines": {}, "versions": {}, **data}
        for key, kind in expected.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise SamExportError(f"{source}: {key!r} must be a {kind.__name__}, got {data.get(key)!r}")
        if data["precision"] not in C.PRECISIONS:
            raise SamExportError(f"{source}: unknown precision {data['precision']!r}; valid: {', '.join(C.PRECISIONS)}")
        if data["attention"] not in C.ATTENTION_MODES:
            raise SamExportError(f"{source}: unknown attention mode {data['attention']!r}; valid: {', '.join(C.ATTENTION_MODES)}")
        from samexport.variants import get_variant

        try:
            get_variant(data["variant"])
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
        known = {item.name for item in fields(cls)}
        return cls(
            **{key: data[key] for key in known - {"runtime", "extra", "format"} if key in data},
            runtime=runtime,
            extra={key: value for key, value in data.items() if key not in known},
            format=MANIFEST_FORMAT,
        )

    def replace(self, **changes) -> Manifest:
        return replace(self, **changes)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically: a temporary file in the same folder, flushed to disk,
    then renamed over the old one, so a reader sees the old manifest or the new, never half."""
    path = Path(folder) / C.MANIFEST
    partial = path.with_name(f".{C.MANIFEST}.partial-{os.getpid()}")
    try:
        with open(partial, "w") as stream:
            stream.write(json.dumps(manifest.to_dict(), indent=2) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_manifest(folder: Path | str) -> Manifest:
    """Read and validate ``manifest.json``; a missing or foreign file is a clear error."""
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
    manifest = Manifest.from_dict(data, source=str(path))
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        if not (folder / name).is_file():
            raise SamExportError(f"{folder} is incomplete: {name} is missing; rebuild it")
    return manifest


@contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``destination`` atomically.

    On any exception the staging folder is deleted and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a build is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
    os.replace(staging, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
