"""Commands that make and describe artifacts: ``build``, ``engines``, ``info`` and
``export-official-decoder``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from samexport.artifacts import read_manifest
from samexport.cli.errors import clean_errors
from samexport.cli.options import engine_options
from samexport.engine_records import EngineVerification
from samexport.engines.fallback import FP32_ATTENTION_FORM
from samexport.errors import SamExportError
from samexport.parity.engines import build_verified_engines
from samexport.pipeline import build as run_build
from samexport.runtime.backends import describe_auto
from samexport.variants import variants_help


@clean_errors
@engine_options
def build(
    variant: Annotated[str, typer.Option(help=f"Model variant: {variants_help()}.")] = "vit_b",
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Official-format .pth checkpoint. Default: the cache, downloading if missing."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Artifact directory. Default: engines/<variant>-<precision>.")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graphs and engines (LayerNorm, Softmax, reductions stay FP32).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ encoder (needs --calib-dir) with an FP16 decoder.")] = False,
    calib_dir: Annotated[
        Path | None, typer.Option(help="Folder of photos to calibrate INT8 on (up to 64 are used; cached).")
    ] = None,
    int8_for: Annotated[
        Literal["tensorrt", "onnxruntime", "openvino"] | None,
        typer.Option(
            "--int8-for",
            help="Which runtime the INT8 Q/DQ placement is tuned for: tensorrt (Q/DQ on MatMul/Conv "
            "inputs only; TensorRT fuses them), onnxruntime (outputs quantized too, so ONNX Runtime's "
            "CPU provider uses integer kernels; 7-bit weights) or openvino (inputs only, 8-bit weights, "
            "FP32 graph: CPUs with VNNI or AMX). Default: tensorrt.",
        ),
    ] = None,
    engines: Annotated[
        bool | None,
        typer.Option(
            "--engines/--no-engines",
            help="--engines: fail unless TensorRT engines can be built here; --no-engines: ONNX only. "
            "Default: build engines where TensorRT and a GPU are available.",
        ),
    ] = None,
    attention: Annotated[
        str,
        typer.Option(
            help="How the image encoder's attention is exported: plain (the torch graph); fused-pattern "
            "(TensorRT's MHA-fusion form, any TensorRT incl. 10.3 / JetPack 6); onnx-attention (ONNX "
            "Attention op, opset 23, TensorRT >= 10.14); plugin (fused Triton kernel as a TensorRT "
            "plugin, TensorRT >= 10.9; not yet run on a GPU)."
        ),
    ] = "plain",
    opset: Annotated[
        int | None, typer.Option(help="ONNX opset version (17 or newer). Default: 18, or 23 for onnx-attention.", min=17)
    ] = None,
    parity: Annotated[
        bool, typer.Option(help="Check the graphs against the PyTorch weights on one image and record it.")
    ] = True,
    download: Annotated[
        bool, typer.Option(help="Download the official checkpoint when it is not in the cache.")
    ] = True,
    engine_config=None,
) -> None:
    """Export SAM to ONNX (and TensorRT engines where possible) into an artifact directory."""

    if fp16 and int8:
        raise SamExportError("choose one of --fp16 and --int8")
    if calib_dir is not None and not int8:
        raise SamExportError("--calib-dir is only used with --int8")
    if int8_for is not None and not int8:
        raise SamExportError("--int8-for is only used with --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    result = run_build(
        variant, checkpoint=checkpoint, output=output, precision=precision, calib_dir=calib_dir,
        int8_target=int8_for or "tensorrt",
        engine_config=engine_config, engines={None: "auto", True: "require", False: "skip"}[engines],
        attention=attention, opset=opset, parity=parity, download=download,
        on_step=lambda message: typer.echo(f"- {message}", err=True),
    )
    typer.echo(f"wrote {result.artifact_dir}")
    for engine, reason in result.skipped_engines.items():
        typer.echo(f"not built: {engine} engine: {reason}")
    for engine, reason in result.manifest.skipped_engines.items():
        if engine not in result.skipped_engines:  # built, then refused by verification
            typer.echo(f"not kept: {engine} engine: {reason}")
    if result.manifest.engines:
        typer.echo(f"engines verification: {verification_line(result.manifest.engines_verification)}")
    parity_report = result.manifest.parity
    if parity_report is not None:
        verdict = "passed" if parity_report.passed else "FAILED"
        figures = parity_report.summary
        typer.echo(
            f"parity vs PyTorch ({precision} tolerances): {verdict}: embedding cosine "
            f"{figures['embedding_cosine']:.6f}, mask IoU min {figures.get('mask_iou_min', float('nan')):.4f}, "
            f"IoU-score error {figures.get('iou_score_max_abs', float('nan')):.2e}"
        )
        if not parity_report.passed:
            raise SamExportError(f"parity check failed; the artifacts in {result.artifact_dir} do not match the PyTorch weights")


@clean_errors
@engine_options
def engines(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build` (built anywhere).")],
    builder: Annotated[
        Literal["tensorrt", "tensorrt-rtx"],
        typer.Option(
            help="tensorrt: plans for this GPU and TensorRT release. tensorrt-rtx: TensorRT-RTX test "
            "builds without a GPU (prove the graphs build; the runtime refuses such plans)."
        ),
    ] = "tensorrt",
    verify: Annotated[
        bool,
        typer.Option(
            help="Run the new plans on the PyTorch references stored in the artifact and keep them only "
            "when they pass (--no-verify: keep them unchecked, recorded as unverified)."
        ),
    ] = True,
    fallback: Annotated[
        bool,
        typer.Option(
            "--fallback",
            help="When the plans fail verification, build them again from the FP32 attention form of the "
            "FP16/INT8 encoder (attention core in FP32 between FP16 projections, derived here; needs onnx), "
            "verify those and keep them if they pass. The manifest records which form the plans came from.",
        ),
    ] = False,
    engine_config=None,
) -> None:
    """Build encoder.plan and decoder.plan for this device from an existing artifact (no torch needed).

    The new plans run on the artifact's stored PyTorch references first; plans outside the
    precision's tolerances are not kept. The manifest is updated atomically once both plans are
    built and verified: a failed or interrupted run leaves the artifact as it was.
    """
    manifest = build_verified_engines(
        artifact_dir, engine_config, builder=builder, verify=verify, fallback=fallback,
        on_step=lambda message: typer.echo(f"- {message}", err=True),
    )
    for name in manifest.engines:
        record = manifest.engine(name)
        where = record.gpu or "no GPU"
        kind = " (test build: the runtime refuses it)" if record.test_build else ""
        typer.echo(
            f"wrote {Path(artifact_dir) / record.plan}: {record.plan_bytes / 2**20:.1f} MiB, "
            f"{record.tensorrt_module} {record.tensorrt_version} on {where}{kind}"
        )
    typer.echo(f"verification: {verification_line(manifest.engines_verification)}")


def verification_line(verdict: EngineVerification | None) -> str:
    """One line for the plans' ``engines_verification`` (what `engines` and `info` print)."""
    if verdict is None:
        return "none recorded (plans built before samexport verified them, or no plans)"
    if not verdict.passed:
        return verdict.status
    figures = verdict.summary or {}
    return (
        f"passed on {verdict.gpu} (compute capability {verdict.compute_capability}), "
        f"{verdict.tensorrt_module} {verdict.tensorrt_version}, attention {verdict.attention}"
        f"{' (FP32 attention form, --fallback)' if verdict.encoder_form == FP32_ATTENTION_FORM else ''}, "
        f"{verdict.precision} tolerances: embedding cosine {figures.get('embedding_cosine', float('nan')):.6f}, "
        f"mask IoU min {figures.get('mask_iou_min', float('nan')):.4f}, IoU-score error {figures.get('iou_score_max_abs', float('nan')):.2e}"
    )


@clean_errors
def info(artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")]) -> None:
    """Print an artifact directory's manifest, and what `--backend auto` runs it on here
    (``auto_backend_here``: e.g. ``openvino-cpu-f32+onnxruntime-cpu``, encoder + decoder)."""
    manifest = read_manifest(artifact_dir)
    typer.echo(json.dumps({**manifest.to_dict(), "auto_backend_here": describe_auto(artifact_dir, manifest)}, indent=2))


@clean_errors
def export_official_decoder(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    output: Annotated[Path, typer.Option(help="The .onnx file to write.")] = Path("sam_decoder_official.onnx"),
    return_single_mask: Annotated[
        bool, typer.Option(help="One mask per prompt, chosen as segment_anything's export does (else all four).")
    ] = True,
    use_stability_score: Annotated[bool, typer.Option(help="Report stability scores instead of predicted IoUs.")] = False,
) -> None:
    """Write the decoder in segment_anything's ONNX interface (orig_im_size input, masks at the
    image size) for ONNX Runtime tools built on it. Not for TensorRT: build engines from the
    artifact's decoder.onnx."""
    # Imported here, not at the top: samexport.export is the workstation's export code (torch),
    # and the device-side commands of this module (`engines`, `verify` beside it) must run
    # without loading it (tests/parity/test_verify.py checks sys.modules).
    from samexport.export.official_onnx import export_official_decoder as export

    path = export(artifact_dir, output, return_single_mask=return_single_mask,
                  use_stability_score=use_stability_score)
    typer.echo(f"wrote {path} (segment_anything ONNX interface, for ONNX Runtime; not for TensorRT)")
