"""Checkpoint -> artifact directory: ONNX graphs, engine plans (where possible) and a manifest."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from samexport import constants as C
from samexport.artifacts import default_artifact_dir, staged_directory, write_manifest
from samexport.errors import SamExportError
from samexport.variants import Variant, get_variant

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass
class BuildResult:
    """What a build produced, and which engines it could not build and why."""

    artifact_dir: Path
    manifest: dict
    skipped_engines: dict[str, str] = field(default_factory=dict)


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` where absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build(
    variant: Variant | str,
    *,
    checkpoint: Path | str | None = None,
    output: Path | str | None = None,
    precision: Precision = "fp32",
    opset: int | None = None,
    download: bool = True,
    on_step: Callable[[str], None] = lambda message: None,
) -> BuildResult:
    """Export ``variant`` from ``checkpoint`` into an artifact directory.

    Args:
        variant: registry name (``"vit_b"``) or a :class:`Variant`.
        checkpoint: official-format ``.pth``; ``None`` looks in the cache and downloads the
            official file if it is missing (and ``download`` is true).
        output: artifact directory; default ``engines/<variant>-<precision>``.
        precision: numeric format of the graphs the engines are built from.
        opset: ONNX opset (default: the exporter's, 18).
        on_step: called with a one-line description before each stage.

    The directory is assembled in a staging folder and renamed into place when complete.
    """
    from samexport.checkpoint import load_sam
    from samexport.download import resolve_checkpoint, sha256_file
    from samexport.export.to_onnx import DEFAULT_OPSET, export_decoder, export_encoder

    variant = get_variant(variant) if isinstance(variant, str) else variant
    if precision not in PRECISIONS:
        raise SamExportError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision != "fp32":
        raise SamExportError(
            f"{precision} graphs are not implemented yet (issue 3); build fp32 for now"
        )
    opset = opset or DEFAULT_OPSET
    destination = Path(output) if output else default_artifact_dir(variant.name, precision)

    checkpoint = resolve_checkpoint(variant, checkpoint, download_missing=download)
    on_step(f"hashing {checkpoint}")
    checkpoint_sha = sha256_file(checkpoint)
    on_step(f"loading {variant.name} weights")
    sam = load_sam(checkpoint, variant)

    started = time.perf_counter()
    with staged_directory(destination) as staging:
        on_step(f"exporting {C.ENCODER_ONNX} (opset {opset})")
        export_encoder(sam, staging / C.ENCODER_ONNX, opset=opset)
        on_step(f"exporting {C.DECODER_ONNX} (opset {opset})")
        export_decoder(sam, staging / C.DECODER_ONNX, opset=opset)

        skipped = {
            "encoder": "TensorRT engines are not built yet (issue 3)",
            "decoder": "TensorRT engines are not built yet (issue 3)",
        }
        manifest = {
            "variant": variant.name,
            "precision": precision,
            "opset": opset,
            "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha},
            "encoder": {
                "onnx": C.ENCODER_ONNX,
                "inputs": [s.to_dict() for s in C.ENCODER_INPUTS],
                "outputs": [s.to_dict() for s in C.ENCODER_OUTPUTS],
            },
            "decoder": {
                "onnx": C.DECODER_ONNX,
                "inputs": [s.to_dict() for s in C.DECODER_INPUTS],
                "outputs": [s.to_dict() for s in C.DECODER_OUTPUTS],
            },
            "engines": {},
            "skipped_engines": skipped,
            "versions": package_versions("samexport", "torch", "onnx", "onnxruntime"),
            "build_seconds": round(time.perf_counter() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_manifest(staging, manifest)
    return BuildResult(destination, manifest, skipped)
