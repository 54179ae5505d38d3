"""What ``samexport build`` does differently per model family, as one record per family.

:func:`samexport.pipeline.build` owns what every build shares (the destination check, the
checkpoint's hash, the staging folder, the manifest, the engines); a :class:`ModelSteps` record
gives the steps that depend on the model: checking the request, loading the checkpoint, writing
the graphs, the quick parity check, the stored references and the graph records of the manifest.
SAM's record is in :mod:`samexport.pipeline` (its steps live there); SAM 2.1's is
:data:`SAM2_STEPS` here.

SAM 2.1 today: fp32 and fp16 graphs (encoder and decoder; the fp16 encoder keeps the default FP32
islands, see docs/sam2.md), the quick parity check; no int8, no TensorRT engines, no stored
references yet (each refused or recorded as such, never silently skipped).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.parity.sam2 import sam2_quick_parity
from samexport.sam2_checkpoint import load_sam2


@dataclass(frozen=True)
class ModelSteps:
    """The model-dependent steps of a build.

    Attributes:
        check_request: ``(variant, precision=, attention=, opset=, int8_target=, calib_dir=)``;
            raises :class:`SamExportError` for what this family cannot build, before any work.
        load: ``(checkpoint path, variant) -> model`` (the torch model, eval mode).
        write_graphs: ``(model, staging, precision, *, opset, attention, calib_dir, calib_cache,
            int8_target, on_step) -> dict`` of each graph's precision (the manifest's ``graphs``).
        quick_parity: ``(model, folder, precision, memory_arena) -> dict`` (``ParityReport.to_dict``).
        record_references: ``(model, staging) -> dict``, or ``None`` where the family stores none yet.
        graph_records: ``() -> (encoder record, decoder record)`` of the manifest.
        no_engines: why this family gets no TensorRT engines, or ``None`` when it does.
    """

    check_request: Callable[..., None]
    load: Callable[[Path, Any], Any]
    write_graphs: Callable[..., dict]
    quick_parity: Callable[[Any, Path, str, bool], dict]
    record_references: Callable[[Any, Path], dict] | None
    graph_records: Callable[[], tuple[dict, dict]]
    no_engines: str | None = None


def graph_record(name: str, inputs: tuple[C.TensorSpec, ...], outputs: tuple[C.TensorSpec, ...]) -> dict:
    """A graph's manifest record: its file and tensor specs."""
    return {"onnx": name, "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]}


SAM2_PRECISIONS = ("fp32", "fp16")


def _check_sam2_request(variant, *, precision: str, attention: str, **_: Any) -> None:
    if precision not in SAM2_PRECISIONS:
        raise SamExportError(
            f"{variant.name}: precision {precision} is not built for SAM 2.1 yet; valid: {', '.join(SAM2_PRECISIONS)}"
        )
    if attention != "plain":
        raise SamExportError(f"--attention {attention} does not apply to SAM 2.1's Hiera encoders; modes: plain")


def _write_sam2_graphs(model, staging: Path, precision: str, *, opset: int, on_step: Callable[[str], None], **_: Any) -> dict:
    """fp32: both graphs as exported. fp16: both converted with FP32 islands."""
    from samexport.export.sam2_onnx import export_sam2_decoder, export_sam2_encoder

    folder = staging if precision == "fp32" else staging / ".fp32"
    folder.mkdir(exist_ok=True)
    on_step(f"exporting {C.ENCODER_ONNX} (SAM 2.1 Hiera encoder, opset {opset})")
    export_sam2_encoder(model, folder / C.ENCODER_ONNX, opset=opset)
    on_step(f"exporting {C.DECODER_ONNX} (SAM 2.1 decoder, opset {opset})")
    export_sam2_decoder(model, folder / C.DECODER_ONNX, opset=opset)
    if precision == "fp32":
        return {"encoder": "fp32", "decoder": "fp32"}
    from samexport.precision.fp16 import convert_to_fp16

    on_step("converting both graphs to fp16 (fp32 islands kept)")
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        convert_to_fp16(folder / name, staging / name)
    shutil.rmtree(folder)
    return {"encoder": "fp16", "decoder": "fp16"}


def _sam2_graph_records() -> tuple[dict, dict]:
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
    record_references=None,
    graph_records=_sam2_graph_records,
    no_engines="samexport builds no TensorRT engines for SAM 2.1 yet (its graphs run on ONNX Runtime and OpenVINO)",
)
