"""Checkpoint -> artifact directory: ONNX graphs, engine plans (where possible) and a manifest.

The pipeline behind ``samexport.build`` (the function; this module has another name so that
``from samexport import build`` always gives the function).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from samexport import constants as C
from samexport.artifacts import (
    Manifest,
    RuntimeNeeds,
    default_artifact_dir,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from samexport.build_steps import SAM2_STEPS, SAM_STEPS, ModelSteps
from samexport.download import resolve_checkpoint
from samexport.engines import load_tensorrt, tensorrt_availability
from samexport.engines.artifact import BUILDERS, PlanRequest, build_plans, check_engine_request, discard_plans
from samexport.engines.builder import BuildConfig
from samexport.errors import SamExportError
from samexport.parity.engines import UNVERIFIED, plan_check, runs, tensorrt_runner, verdict_record
from samexport.parity.verify import VerificationError
from samexport.plugins.tensorrt_plugin import tensorrt_plugins_for
from samexport.precision.calibration import check_calibration_cache
from samexport.precision.recipes import Int8Target
from samexport.records import CheckpointRecord, ParityRecord
from samexport.replaceable import check_replaceable_artifact
from samexport.staging import check_output_destination, staged_directory
from samexport.utils import default_cache_dir, package_versions, sha256_file
from samexport.variants import ModelVariant, get_model

Precision = C.Precision
PRECISIONS = C.PRECISIONS
EngineRequest = Literal["auto", "require", "skip"]
ENGINE_NAMES = ("encoder", "decoder")


@dataclass
class BuildResult:
    """What a build produced, and which engines it could not build and why."""

    artifact_dir: Path
    manifest: Manifest
    skipped_engines: dict[str, str] = field(default_factory=dict)

    @property
    def parity_passed(self) -> bool | None:
        parity = self.manifest.parity
        return None if parity is None else parity.passed


# One record per model family (``GraphContract.name``): what a build does differently for it.
BUILD_STEPS: dict[str, ModelSteps] = {"sam": SAM_STEPS, "sam2": SAM2_STEPS}


def _build_engines(
    staging: Path, plans: PlanRequest | None, on_step: Callable[[str], None], why_none: str | None = None,
) -> tuple[dict, dict[str, str]]:
    """Build both plans (the same code as ``samexport engines``) as ``plans`` (the request checked
    at the door) asks, if this machine can; else say why not for each engine (``why_none``: why
    there is no request: ``--no-engines``, or the model family gets none)."""
    if plans is None:
        return {}, {name: why_none for name in ENGINE_NAMES}

    if plans.flavour == "tensorrt":
        availability = tensorrt_availability()
        if not availability:
            return {}, {name: availability.reason for name in ENGINE_NAMES}
    engines = build_plans(staging, staging, plans, plugins=tensorrt_plugins_for(plans.attention), on_step=on_step)
    return engines, {}


def _verify_built_engines(staging: Path, manifest: Manifest, builder: str, on_step: Callable[[str], None]) -> Manifest:
    """Run the plans the build made on the references it stored, as ``samexport engines`` does:
    plans that fail are not kept (the artifact keeps its graphs; ``skipped_engines`` says why)."""

    if manifest.references is None:
        return manifest.replace(engines_verification=verdict_record(manifest, UNVERIFIED, reason="built without references"))
    if runs(BUILDERS[builder], tensorrt_runner):
        on_step("running the new plans on the stored PyTorch references")
    try:
        verdict = plan_check(flavour=BUILDERS[builder])(staging, manifest)
    except VerificationError as exc:
        discard_plans(staging, manifest.engines)
        return manifest.replace(engines={}, skipped_engines={name: str(exc) for name in ENGINE_NAMES})
    return manifest.replace(engines_verification=verdict)


def _runnable_graphs(staging: Path, attention: str) -> Path:
    """A folder whose graphs ONNX Runtime can run: ``staging`` itself, or for plugin graphs a
    copy of it with every plugin node replaced by its reference math in plain ONNX ops."""
    if attention != "plugin":
        return staging
    import onnx

    from samexport.plugins.onnx_node import inline_reference

    folder = staging / ".parity"
    folder.mkdir(exist_ok=True)
    onnx.save(inline_reference(onnx.load(str(staging / C.ENCODER_ONNX))), str(folder / C.ENCODER_ONNX))
    shutil.copyfile(staging / C.DECODER_ONNX, folder / C.DECODER_ONNX)
    return folder


def build(
    variant: ModelVariant | str,
    *,
    checkpoint: Path | str | None = None,
    output: Path | str | None = None,
    precision: Precision = "fp32",
    calib_dir: Path | str | None = None,
    int8_target: Int8Target = "tensorrt",
    engine_config: BuildConfig | None = None,
    engines: EngineRequest = "auto",
    engine_builder: str = "tensorrt",
    attention: str = "plain",
    opset: int | None = None,
    download: bool = True,
    parity: bool = True,
    references: bool = True,
    on_step: Callable[[str], None] = lambda message: None,
) -> BuildResult:
    """Export ``variant`` from ``checkpoint`` into an artifact directory.

    Args:
        variant: registry name or alias (``"vit_b"``, ``"vit_t"``, ``"sam2.1_hiera_tiny"``) or a
            record of :data:`samexport.variants.MODELS`; its family's :data:`BUILD_STEPS` do the
            model-dependent steps.
        checkpoint: official-format ``.pth``; ``None`` looks in the cache and downloads the
            official file if it is missing (and ``download`` is true).
        output: artifact directory; default ``engines/<variant>-<precision>``.
        precision: numeric format of the graphs the engines are built from.
        calib_dir: folder of calibration images, required for ``int8``.
        int8_target: the runtime the ``int8`` Q/DQ placement is tuned for: ``tensorrt`` (Q/DQ on
            MatMul/Conv inputs only; TensorRT fuses them), ``onnxruntime`` (outputs quantized
            too, so ONNX Runtime's CPU provider runs integer kernels) or ``openvino`` (inputs
            only, 8-bit weights, FP32 graph); see ``samexport.precision.recipes.RECIPES``.
        engine_config: TensorRT build settings (profiles, workspace, ...); default ``BuildConfig()``.
        engines: ``auto`` builds engines where TensorRT and a GPU are available, ``require``
            fails the build (before writing anything) where they are not, ``skip`` never builds.
        engine_builder: ``tensorrt``, or ``tensorrt-rtx`` for test builds without a GPU (plans the
            runtime refuses; see ``samexport.engines.artifact``).
        attention: how the encoder's attention is exported: ``plain``, ``fused-pattern``,
            ``onnx-attention`` or ``plugin`` (see ``samexport.export.attention``).
        opset: ONNX opset (default: 18, or 23 for ``onnx-attention``).
        parity: run a short parity check against the torch model (one image, a few prompts;
            ~25 s on vit_b) and record it in the manifest.
        references: store the PyTorch FP32 outputs on the reference set in the artifact
            (``samexport.parity.references``; two images, ~40 s on vit_b on 2 CPU cores), which
            ``samexport verify`` and ``samexport engines`` check any backend against, without torch.
        on_step: called with a one-line description before each stage.

    The directory is assembled in a staging folder and renamed into place when complete. An
    existing ``output`` is replaced only when it is a samexport artifact; anything else (a file, a
    folder of the user's, the current folder, a mount point) is refused before any work
    (``samexport.staging.check_output_destination``).
    """
    variant = get_model(variant)
    steps = BUILD_STEPS[variant.contract.name]
    if precision not in PRECISIONS:
        raise SamExportError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    opset = opset or C.default_opset(attention)
    checked = steps.check_request(
        variant, precision=precision, attention=attention, opset=opset, int8_target=int8_target, calib_dir=calib_dir
    )
    engine_config = engine_config or BuildConfig()
    if engines == "require" and steps.no_engines:
        raise SamExportError(f"TensorRT engines were required but cannot be built: {steps.no_engines}")
    plans = None  # the engine request, checked here once (the builders check it no more)
    if engines != "skip" and not steps.no_engines:
        if engine_builder not in BUILDERS:
            raise SamExportError(f"unknown engine builder {engine_builder!r}; valid: {', '.join(BUILDERS)}")
        plans = check_engine_request(attention, engine_config, BUILDERS[engine_builder], variant.contract)
        if engines == "require":
            if BUILDERS[engine_builder] == "tensorrt_rtx":
                load_tensorrt("tensorrt_rtx")
            else:
                availability = tensorrt_availability()
                if not availability:
                    raise SamExportError(f"TensorRT engines were required but cannot be built: {availability.reason}")
    destination = Path(output) if output else default_artifact_dir(variant.name, precision)
    check_output_destination(destination, check_replaceable_artifact)  # before the checkpoint is hashed, loaded and exported

    found = resolve_checkpoint(variant, checkpoint, download_missing=download)
    checkpoint, checkpoint_sha = found.path, found.sha256
    if checkpoint_sha is None:  # a file the user gave (a cached or downloaded one is hashed already)
        on_step(f"hashing {checkpoint}")
        checkpoint_sha = sha256_file(checkpoint)
    # One file per recipe, so alternating tensorrt and onnxruntime builds do not recalibrate.
    calib_cache = default_cache_dir() / "calibration" / f"{variant.name}-{checkpoint_sha[:16]}-{int8_target}.json"
    if precision == "int8":
        check_calibration_cache(calib_cache, replace_malformed=True)  # now, not after the export
    on_step(f"loading {variant.name} weights")
    sam = steps.load(checkpoint, variant)

    started = time.perf_counter()
    with staged_directory(destination, check_replaceable_artifact) as staging:
        graphs = steps.write_graphs(
            sam, staging, precision, opset=opset, attention=attention, calib_dir=Path(calib_dir) if calib_dir else None,
            calib_cache=calib_cache, int8_target=int8_target, on_step=on_step, **checked,
        )
        runtime = RuntimeNeeds.for_build(precision=precision, attention=attention, fp16_encoder=graphs.fp16_encoder)
        parity_report = None
        if parity:
            on_step("parity check against the PyTorch weights")
            parity_report = ParityRecord.from_dict(steps.quick_parity(
                sam, _runnable_graphs(staging, attention), precision, runtime.onnxruntime_memory_arena
            ))
        reference_record = None
        if references and steps.record_references is None:
            on_step(f"no stored references: samexport stores none for {variant.name} yet")
        elif references:
            on_step("storing the PyTorch FP32 references (2 images, the prompt suite)")
            reference_record = steps.record_references(sam, staging)
        built, skipped = _build_engines(
            staging, plans, on_step, why_none="skipped (--no-engines)" if engines == "skip" else steps.no_engines
        )
        encoder_record, decoder_record = steps.graph_records()
        manifest = Manifest(
            variant=variant.name,
            precision=precision,
            attention=attention,
            opset=opset,
            graphs=graphs,
            checkpoint=CheckpointRecord(checkpoint.name, checkpoint_sha),
            encoder=encoder_record,
            decoder=decoder_record,
            runtime=runtime,
            engine_config=engine_config.record(),
            engines=built,
            skipped_engines=skipped,
            parity=parity_report,
            references=reference_record,
            versions=package_versions("samexport", "torch", "onnx", "onnxruntime", "tensorrt", "polygraphy"),
            build_seconds=round(time.perf_counter() - started, 1),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        shutil.rmtree(staging / ".parity", ignore_errors=True)
        manifest = write_manifest(staging, manifest)
        if built:  # checked against the file records just written, as `samexport engines` does
            manifest = write_manifest(staging, _verify_built_engines(staging, manifest, engine_builder, on_step))
    return BuildResult(destination, manifest, skipped)


def add_references(artifact_dir: Path | str, checkpoint: Path | str, *, on_step: Callable[[str], None] = lambda m: None) -> Manifest:
    """Store the PyTorch references in an existing artifact (one built before samexport stored
    them, or to record them again), from the checkpoint it was built from.

    The new ``references-<sha>.npz`` is written beside the old files, the manifest (with its file
    records) replaced atomically, and only then the references the old manifest named removed:
    an interrupted run leaves the artifact as it was.

    Raises:
        SamExportError: not an artifact, a damaged one, or ``checkpoint`` is not the one the
            artifact was built from (its sha256 differs from the manifest's).
    """

    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    verify_artifact(folder, manifest)
    on_step(f"hashing {checkpoint}")
    digest = sha256_file(checkpoint)
    if manifest.checkpoint.sha256 not in (None, digest):
        raise SamExportError(
            f"{checkpoint} is not the checkpoint {folder} was built from (sha256 {digest[:12]}..., the "
            f"manifest records {manifest.checkpoint.sha256[:12]}... for {manifest.checkpoint.file})"
        )
    steps = BUILD_STEPS[manifest.contract.name]
    if steps.record_references is None:
        raise SamExportError(f"samexport stores no PyTorch references for {manifest.variant} yet")
    on_step(f"loading {manifest.variant} weights")
    sam = steps.load(checkpoint, get_model(manifest.variant))
    on_step("storing the PyTorch FP32 references (2 images, the prompt suite)")
    old = manifest.references.file if manifest.references else None
    record = steps.record_references(sam, folder)
    try:
        written = write_manifest(folder, manifest.replace(references=record))
    except BaseException:
        if record.file != old:
            (folder / record.file).unlink(missing_ok=True)
        raise
    if old and old != record.file:
        (folder / old).unlink(missing_ok=True)
    return written
