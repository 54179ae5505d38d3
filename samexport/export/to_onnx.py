"""Torch SAM -> ``encoder.onnx`` and ``decoder.onnx`` with torch's dynamo exporter.

The dynamo exporter exports vit_b in ~30 s at ~2 GB peak memory; the legacy TorchScript exporter
needs ~9.5 GB and runs out of memory on vit_h, so it is not used. Graphs whose weights pass the
2 GB protobuf limit (vit_h) are written with ONNX external data next to the ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import onnx.utils
import torch

from samexport import constants as C
from samexport.export.attention import AttentionMode, CheckedAttention, attention_mode, check_attention_mode
from samexport.export.wrappers import DecoderGraph, DecoderSplitGraph, EncoderGraph
from samexport.models import Sam

DEFAULT_OPSET = C.DEFAULT_OPSET
PROTOBUF_LIMIT = 2**31 - 1
# torch.export needs example sizes that are not 0 or 1 to treat an axis as dynamic.
EXAMPLE_PROMPTS, EXAMPLE_POINTS = 2, 3


def _names(specs: tuple[C.TensorSpec, ...]) -> list[str]:
    return [s.name for s in specs]


def _save(program, path: Path, *, expected_inputs: list[str], expected_outputs: list[str]) -> Path:
    """Write an ONNXProgram, with external data only when the weights need it; check the names."""
    model = program.model_proto
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    external = size > PROTOBUF_LIMIT - (64 << 20)
    program.save(str(path), external_data=external)
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != expected_inputs or outputs != expected_outputs:
        raise RuntimeError(
            f"exported {path.name} has inputs {inputs} / outputs {outputs}, "
            f"expected {expected_inputs} / {expected_outputs}"
        )
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress and warnings for every export; keep them for errors."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)


def export_encoder(
    sam: Sam, path: Path | str, *, opset: int = DEFAULT_OPSET, attention: AttentionMode | CheckedAttention = "plain"
) -> Path:
    """Export the image encoder: ``image`` 1x3x1024x1024 -> ``image_embeddings`` 1x256x64x64.

    ``attention`` picks how attention is written (see ``samexport.export.attention``):
    ``"plain"``, ``"fused-pattern"``, ``"onnx-attention"`` (needs ``opset >= 23``) or ``"plugin"``,
    as far as they apply to the encoder's family (another is a ``SamExportError``); or the
    :class:`~samexport.export.attention.CheckedAttention` a caller already checked for this
    model's family, whose opset is then the one written (``opset`` is not read). The family
    may rewrite the encoder for export first (TinyViT: BatchNorm folded into the convolutions);
    ``sam`` itself is not changed.
    """
    family = sam.family
    if not isinstance(attention, CheckedAttention):
        attention = check_attention_mode(attention, opset, family)
    opset = attention.opset
    path = Path(path)
    image = torch.zeros(C.IMAGE.shape)
    encoder = family.export_encoder_module(sam.image_encoder)
    with torch.no_grad(), _quiet_exporter(), attention_mode(encoder, attention, family) as extra:
        program = torch.onnx.export(
            EncoderGraph(image_encoder=encoder).eval(),
            (image,),
            dynamo=True,
            opset_version=opset,
            input_names=_names(C.ENCODER_INPUTS),
            output_names=_names(C.ENCODER_OUTPUTS),
            external_data=False,
            **extra,
        )
    return _save(
        program, path,
        expected_inputs=_names(C.ENCODER_INPUTS), expected_outputs=_names(C.ENCODER_OUTPUTS),
    )


def _decoder_example(batch: int = EXAMPLE_PROMPTS) -> tuple[torch.Tensor, ...]:
    """Example decoder inputs with M = B (see :func:`_untie_mask_axis`)."""
    size = C.LOW_RES_MASK_SIZE
    return (
        torch.randn(C.IMAGE_EMBEDDINGS.shape),
        torch.rand(batch, EXAMPLE_POINTS, 2) * C.IMAGE_SIZE,
        torch.ones(batch, EXAMPLE_POINTS),
        torch.zeros(batch, 1, size, size),
        torch.zeros(batch),
    )


def _prompt_axes() -> tuple[torch.export.Dim, torch.export.Dim]:
    return torch.export.Dim(C.PROMPT_BATCH, min=1, max=4096), torch.export.Dim(C.NUM_POINTS, min=1, max=1024)


def _trace(module: torch.nn.Module, args, inputs, outputs, dynamic_shapes, opset: int):
    """``module`` as an ONNXProgram (in memory) with the contract's input and output names."""
    with torch.no_grad(), _quiet_exporter():
        return torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=opset,
            input_names=_names(inputs),
            output_names=_names(outputs),
            dynamic_shapes=dynamic_shapes,
            external_data=False,
        )


def _export(module: torch.nn.Module, args, path: Path, inputs, outputs, dynamic_shapes, opset: int) -> Path:
    program = _trace(module, args, inputs, outputs, dynamic_shapes, opset)
    return _save(program, path, expected_inputs=_names(inputs), expected_outputs=_names(outputs))


def _decoder_dynamic_shapes() -> tuple:
    batch, points = _prompt_axes()
    return (None, {0: batch, 1: points}, {0: batch, 1: points}, {0: batch}, {0: batch})


def export_decoder(sam: Sam, path: Path | str, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export prompt encoder + mask decoder with dynamic prompt batch B, point count N and mask
    count M (B, or 1 for one mask input shared by every prompt).

    Inputs and outputs are ``samexport.constants.DECODER_INPUTS`` / ``DECODER_OUTPUTS``.
    """
    path = _export(
        DecoderGraph(sam), _decoder_example(), Path(path), C.DECODER_INPUTS, C.DECODER_OUTPUTS,
        _decoder_dynamic_shapes(), opset,
    )
    onnx.save(_untie_mask_axis(onnx.load(str(path))), str(path))
    return path


def export_decoders(
    sam: Sam, decoder_path: Path | str, scores_path: Path | str, masks_path: Path | str, *,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, Path, Path]:
    """Export ``decoder.onnx`` and the same decoder in two graphs, cut after the two-way
    transformer (``DecoderGraph.scores`` / ``.masks``): ``decoder_scores.onnx`` (the decoder's
    inputs -> ``C.SCORES_OUTPUTS``) and ``decoder_masks.onnx`` (``C.MASKS_INPUTS`` -> mask logits).
    The mask generator runs the second half only for the prompts that can pass its IoU threshold.

    One trace makes all three: the decoder is traced with the cut's tensors (mask tokens, image
    tokens) as extra outputs, and ONNX's own ``onnx.utils.Extractor`` cuts the three graphs from
    it. So the halves are the decoder's own nodes and weights, and a build traces the decoder
    once, not three times: ~7 CPU-seconds less on the ``tiny`` variant, whose whole build took
    ~24 (``tools/export_costs.py``; the test suite pays it at every build).
    """
    outputs = C.DECODER_OUTPUTS + (C.MASK_TOKENS, C.IMAGE_TOKENS)
    program = _trace(
        DecoderSplitGraph(sam), _decoder_example(), C.DECODER_INPUTS, outputs, _decoder_dynamic_shapes(), opset
    )
    # The decoder's weights are ~16 MB for every SAM size: no external data is ever needed here.
    extractor = onnx.utils.Extractor(program.model_proto)
    cuts = (  # (where, inputs, outputs, whether the graph takes the mask inputs)
        (Path(decoder_path), C.DECODER_INPUTS, C.DECODER_OUTPUTS, True),
        (Path(scores_path), C.SCORES_INPUTS, C.SCORES_OUTPUTS, True),
        (Path(masks_path), C.MASKS_INPUTS, C.MASKS_OUTPUTS, False),
    )
    for path, inputs, outs, takes_masks in cuts:
        graph = extractor.extract_model(_names(inputs), _names(outs))
        onnx.save(_untie_mask_axis(graph) if takes_masks else graph, str(path))
    return tuple(path for path, *_ in cuts)


def _untie_mask_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the mask inputs their own leading axis M (``C.NUM_MASKS``) in a decoder graph.

    torch.export cannot trace an axis that broadcasts at run time: an example size of 1 fixes it
    to 1, any other size must equal B. So the decoder is traced with M = B and the axis is
    renamed afterwards; ONNX broadcasting is NumPy's, decided at run time, and every op between
    the mask inputs and the first two-way block's image-to-token update broadcasts
    (``DecoderGraph``). The traced intermediate shapes (``value_info``) name B where M may now
    stand, so they are inferred again. ``tests/export/test_wrappers.py`` checks M = 1 against M = B.
    """
    untied = {C.MASK_INPUT.name, C.HAS_MASK_INPUT.name}
    for value in model.graph.input:
        if value.name in untied:
            value.type.tensor_type.shape.dim[0].dim_param = C.NUM_MASKS
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
