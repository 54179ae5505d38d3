"""What ``samexport build`` does differently per model family, as one record per family.

:func:`samexport.pipeline.build` owns what every build shares (the destination check, the
checkpoint's hash, the staging folder, the manifest, the engines); a :class:`ModelSteps` record
gives the steps that depend on the model: checking the request, loading the checkpoint, writing
the graphs, the quick parity check, the stored references and the graph records of the manifest.
SAM's record is :data:`SAM_STEPS`, SAM 2.1's :data:`SAM2_STEPS`; :data:`samexport.pipeline.BUILD_STEPS`
keys them by family.

SAM 2.1 today: fp32 and fp16 graphs (encoder and decoder; the fp16 encoder keeps the FP32 islands
of its variant record, ``Sam2Variant.fp32_ops``, see docs/sam2.md), int8 encoders for every recipe
(``--int8-for tensorrt`` / ``onnxruntime`` / ``openvino``), the quick parity check, the stored
PyTorch references (what ``samexport verify`` checks) and TensorRT engines through SAM's code path
(profiles and plan tensors by the graph contract, ``samexport.engines``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samexport import constants as C
from samexport.checkpoint import load_sam
from samexport.errors import SamExportError
from samexport.parity import quick_parity
from samexport.parity.references import record_references
from samexport.parity.sam2 import sam2_quick_parity
from samexport.precision.calibration import check_calibration_images
from samexport.precision.recipes import Int8Recipe, Int8Target, recipe_for
from samexport.records import GraphPrecisions, GraphRecord, ReferencesRecord
from samexport.runtime.sam2_torch import Sam2TorchBackend
from samexport.runtime.torch_backend import TorchBackend
from samexport.sam2_checkpoint import load_sam2
from samexport.variants import Variant

if TYPE_CHECKING:
    from samexport.export.attention import CheckedAttention
    from samexport.models import Sam

Precision = C.Precision


@dataclass(frozen=True)
class ModelSteps:
    """The model-dependent steps of a build.

    Attributes:
        check_request: ``(variant, precision=, attention=, opset=, int8_target=, calib_dir=) -> dict``;
            raises :class:`SamExportError` for what this family cannot build, before any work, and
            returns the checked values ``write_graphs`` takes as keywords (so nothing is checked twice).
        load: ``(checkpoint path, variant) -> model`` (the torch model, eval mode).
        write_graphs: ``(model, staging, precision, *, opset, attention, calib_dir, calib_cache,
            int8_target, on_step) -> GraphPrecisions`` (the manifest's ``graphs``).
        quick_parity: ``(model, folder, precision, memory_arena) -> dict`` (``ParityReport.to_dict``).
        record_references: ``(model, staging) -> ReferencesRecord``, or ``None`` where the family stores none yet.
        graph_records: ``() -> (encoder record, decoder record)`` of the manifest.
        no_engines: why this family gets no TensorRT engines, or ``None`` when it does.
    """

    check_request: Callable[..., dict]
    load: Callable[[Path, Any], Any]
    write_graphs: Callable[..., GraphPrecisions]
    quick_parity: Callable[[Any, Path, str, bool], dict]
    record_references: Callable[[Any, Path], ReferencesRecord] | None
    graph_records: Callable[[], tuple[GraphRecord, GraphRecord]]
    no_engines: str | None = None


def graph_record(name: str, inputs: tuple[C.TensorSpec, ...], outputs: tuple[C.TensorSpec, ...]) -> GraphRecord:
    """A graph's manifest record: its file and tensor specs."""
    return GraphRecord(name, tuple(inputs), tuple(outputs))


def _check_sam_request(
    variant: Variant, *, precision: Precision, attention: str, opset: int, int8_target: str, calib_dir: Path | str | None,
) -> dict:
    """What SAM's family cannot build, refused before any work; returns the checked values
    :func:`_write_graphs` takes (``checked_attention``, ``recipe``, ``calibration_images``), so it
    checks nothing again."""
    from samexport.export.attention import check_attention_mode

    checked = {
        "checked_attention": check_attention_mode(attention, opset, variant.family), "recipe": None,
        "calibration_images": None,
    }
    if attention == "plugin" and precision == "int8":
        raise SamExportError(
            "--int8 with --attention plugin is not supported: calibration runs the encoder in ONNX "
            "Runtime, which has no kernel for the plugin node; use --attention fused-pattern"
        )
    if precision == "int8":
        if calib_dir is None:
            raise SamExportError("int8 needs calibration images: pass --calib-dir DIR (a folder of photos)")
        recipe = recipe_for(int8_target, variant.family)  # an unknown target fails now, listing the valid ones
        # Fail now, not after the export, if the folder has no images or one cannot be decoded.
        checked["calibration_images"] = check_calibration_images(calib_dir, recipe.max_images)
        checked["recipe"] = recipe
    return checked


def _write_graphs(
    sam: Sam,
    staging: Path,
    precision: Precision,
    *,
    opset: int,
    attention: str,
    calib_dir: Path | None,
    calib_cache: Path | None,
    int8_target: Int8Target,
    on_step: Callable[[str], None],
    checked_attention: CheckedAttention,
    recipe: Int8Recipe | None,
    calibration_images: list[Path] | None,
) -> GraphPrecisions:
    """Export fp32 graphs, then convert them to ``precision``; returns what the manifest records.

    fp16: both graphs FP16 with FP32 islands. int8: the encoder INT8 Q/DQ calibrated on
    ``calib_dir`` with the recipe for ``int8_target`` (for TensorRT on the FP16 graph, with the
    same FP32 islands), the decoder FP16 (it is ~0.4% of the compute). The images
    (``calibration_images``) and the cache (``calib_cache``) were checked at the build's door.
    """
    from samexport.export.to_onnx import export_decoders, export_encoder

    encoder, decoder = staging / C.ENCODER_ONNX, staging / C.DECODER_ONNX
    if precision == "fp32":
        on_step(f"exporting {encoder.name} (opset {opset})")
        export_encoder(sam, encoder, opset=opset, attention=checked_attention)
        on_step(f"exporting {decoder.name} and its two halves, {C.DECODER_SCORES_ONNX} and {C.DECODER_MASKS_ONNX} (opset {opset})")
        export_decoders(sam, decoder, staging / C.DECODER_SCORES_ONNX, staging / C.DECODER_MASKS_ONNX, opset=opset)
        return GraphPrecisions(encoder="fp32", decoder="fp32")

    from samexport.precision.fp16 import convert_to_fp16

    work = staging / ".fp32"
    work.mkdir()
    on_step(f"exporting fp32 graphs (opset {opset})")
    export_encoder(sam, work / C.ENCODER_ONNX, opset=opset, attention=checked_attention)
    export_decoders(sam, work / C.DECODER_ONNX, work / C.DECODER_SCORES_ONNX, work / C.DECODER_MASKS_ONNX, opset=opset)
    on_step("converting the decoder to fp16 (fp32 islands kept)")
    for name in (C.DECODER_ONNX, C.DECODER_SCORES_ONNX, C.DECODER_MASKS_ONNX):
        convert_to_fp16(work / name, staging / name)
    if precision == "fp16":
        on_step("converting the encoder to fp16 (fp32 islands kept)")
        convert_to_fp16(work / C.ENCODER_ONNX, encoder, fp32_ops=sam.variant.fp32_ops)
        graphs = GraphPrecisions(encoder="fp16", decoder="fp16", fp16_encoder=True)
    else:
        from samexport.precision.int8 import quantize_checked_encoder_int8

        on_step(f"calibrating and quantizing the encoder to int8 for {int8_target} on {calib_dir}")
        quantize_checked_encoder_int8(
            work / C.ENCODER_ONNX, encoder, calibration_images, cache_path=calib_cache, recipe=recipe,
            fp32_ops=sam.variant.fp32_ops, replace_malformed_cache=True,  # the cache is samexport's own file
        )
        graphs = _int8_graphs(recipe, int8_target, calib_dir)
    shutil.rmtree(work)
    return graphs


def _int8_graphs(recipe: Int8Recipe, int8_target: str, calib_dir: Path) -> GraphPrecisions:
    """``manifest.graphs`` of an int8 build, either family: the encoder's Q/DQ on an FP16 graph (the
    TensorRT recipe) or on FP32, the decoder in FP16, and what the encoder was calibrated for and on."""
    return GraphPrecisions(
        encoder="int8 (Q/DQ) on fp16" if recipe.fp16 else "int8 (Q/DQ)", decoder="fp16", fp16_encoder=recipe.fp16,
        int8_target=int8_target, calibration_images=str(calib_dir),
    )


def _sam_graph_records() -> tuple[GraphRecord, GraphRecord]:
    encoder = graph_record(C.ENCODER_ONNX, C.ENCODER_INPUTS, C.ENCODER_OUTPUTS)
    decoder = graph_record(C.DECODER_ONNX, C.DECODER_INPUTS, C.DECODER_OUTPUTS).replace(halves={
        "scores": graph_record(C.DECODER_SCORES_ONNX, C.SCORES_INPUTS, C.SCORES_OUTPUTS),
        "masks": graph_record(C.DECODER_MASKS_ONNX, C.MASKS_INPUTS, C.MASKS_OUTPUTS),
    })
    return encoder, decoder


SAM_STEPS = ModelSteps(
    check_request=_check_sam_request,
    load=load_sam,
    write_graphs=_write_graphs,
    quick_parity=lambda sam, folder, precision, arena: quick_parity(sam, folder, precision, memory_arena=arena),
    record_references=lambda sam, staging: record_references(TorchBackend(sam), staging),
    graph_records=_sam_graph_records,
)


SAM2_PRECISIONS = ("fp32", "fp16", "int8")
# The int8 recipes built for SAM 2.1: every runtime's, as for SAM (TensorRT's: INT8 Q/DQ on the
# FP16 graph, for strongly typed engines).
SAM2_INT8_TARGETS = ("tensorrt", "onnxruntime", "openvino")


def _check_sam2_request(
    variant, *, precision: str, attention: str, int8_target: str = "tensorrt", calib_dir: Path | str | None = None, **_: Any
) -> dict:
    if precision not in SAM2_PRECISIONS:
        raise SamExportError(
            f"{variant.name}: precision {precision} is not built for SAM 2.1 yet; valid: {', '.join(SAM2_PRECISIONS)}"
        )
    if attention != "plain":
        raise SamExportError(f"--attention {attention} does not apply to SAM 2.1's Hiera encoders; modes: plain")
    if precision != "int8":  # the FP16 encoder keeps the variant's FP32 islands (its record: docs/sam2.md)
        return {"recipe": None, "calibration_images": None, "fp32_ops": variant.fp32_ops}
    recipe = recipe_for(int8_target)  # an unknown target fails now, listing the valid ones
    if int8_target not in SAM2_INT8_TARGETS:
        raise SamExportError(
            f"{variant.name}: int8 for {int8_target} is not built for SAM 2.1; pass --int8-for {' or '.join(SAM2_INT8_TARGETS)}"
        )
    if calib_dir is None:
        raise SamExportError("int8 needs calibration images: pass --calib-dir DIR (a folder of photos)")
    # Fail now, not after the export, if the folder has no images or one cannot be decoded.
    return {
        "recipe": recipe, "calibration_images": check_calibration_images(calib_dir, recipe.max_images),
        "fp32_ops": variant.fp32_ops,
    }


def _write_sam2_graphs(
    model, staging: Path, precision: str, *, opset: int, on_step: Callable[[str], None], recipe: Int8Recipe | None,
    calibration_images: list[Path] | None, fp32_ops: frozenset[str], calib_dir: Path | None = None,
    calib_cache: Path | None = None, int8_target: str = "", **_: Any,
) -> GraphPrecisions:
    """fp32: both graphs as exported. fp16: both converted with FP32 islands (the encoder with
    ``fp32_ops``, the variant's set; the decoder with the default set). int8: the encoder
    INT8 Q/DQ calibrated on ``calib_dir`` (SAM 2.1's preprocessing) with the recipe for
    ``int8_target`` (TensorRT's on the FP16 graph, with the fp16 build's FP32 islands), the
    decoder FP16, as SAM's int8 build."""
    from samexport.export.sam2_onnx import export_sam2_decoder, export_sam2_encoder

    folder = staging if precision == "fp32" else staging / ".fp32"
    folder.mkdir(exist_ok=True)
    on_step(f"exporting {C.ENCODER_ONNX} (SAM 2.1 Hiera encoder, opset {opset})")
    export_sam2_encoder(model, folder / C.ENCODER_ONNX, opset=opset)
    on_step(f"exporting {C.DECODER_ONNX} (SAM 2.1 decoder, opset {opset})")
    export_sam2_decoder(model, folder / C.DECODER_ONNX, opset=opset)
    if precision == "fp32":
        return GraphPrecisions(encoder="fp32", decoder="fp32")
    from samexport.precision.fp16 import convert_to_fp16

    if precision == "fp16":
        on_step("converting both graphs to fp16 (fp32 islands kept)")
        convert_to_fp16(folder / C.ENCODER_ONNX, staging / C.ENCODER_ONNX, fp32_ops=fp32_ops)
        convert_to_fp16(folder / C.DECODER_ONNX, staging / C.DECODER_ONNX)
        graphs = GraphPrecisions(encoder="fp16", decoder="fp16", fp16_encoder=True)
    else:
        from samexport.precision.int8 import quantize_checked_encoder_int8
        from samexport.sam2_transforms import preprocess_sam2

        on_step("converting the decoder to fp16 (fp32 islands kept)")
        convert_to_fp16(folder / C.DECODER_ONNX, staging / C.DECODER_ONNX)
        on_step(f"calibrating and quantizing the encoder to int8 for {int8_target} on {calib_dir}")
        quantize_checked_encoder_int8(
            folder / C.ENCODER_ONNX, staging / C.ENCODER_ONNX, calibration_images, cache_path=calib_cache, recipe=recipe,
            fp32_ops=fp32_ops, replace_malformed_cache=True, preprocess=preprocess_sam2,  # islands: TensorRT's recipe (FP16)
        )
        graphs = _int8_graphs(recipe, int8_target, calib_dir)
    shutil.rmtree(folder)
    return graphs


def _sam2_graph_records() -> tuple[GraphRecord, GraphRecord]:
    contract = C.SAM2_GRAPHS
    return (
        graph_record(C.ENCODER_ONNX, contract.encoder_inputs, contract.encoder_outputs),
        graph_record(C.DECODER_ONNX, contract.decoder_inputs, contract.decoder_outputs),
    )


SAM2_STEPS = ModelSteps(
    check_request=_check_sam2_request,
    load=lambda checkpoint, variant: load_sam2(checkpoint, variant).eval(),
    write_graphs=_write_sam2_graphs,
    quick_parity=lambda model, folder, precision, arena: sam2_quick_parity(model, folder, precision, memory_arena=arena),
    record_references=lambda model, staging: record_references(Sam2TorchBackend(model), staging),
    graph_records=_sam2_graph_records,
)
