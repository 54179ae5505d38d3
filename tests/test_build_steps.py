"""``samexport build`` for a second model family: SAM 2.1 through its ``ModelSteps`` record.

The artifact ``samexport.build("sam2.1_hiera_tiny", ...)`` makes is read back: its manifest records
the family's graph contract (the encoder's three outputs, the decoder's seven inputs and three
outputs), a passing quick parity check against the PyTorch weights and its stored references
(format 2, SAM 2.1's features: tests/parity/test_sam2_verify.py), and says why it has no engines
where this machine cannot build them; each runtime door opens it or refuses it by that contract
(its TensorRT engines: tests/engines/test_sam2_engines.py).
What SAM 2.1 cannot build yet is refused before any work.
"""

from __future__ import annotations

import pytest

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.engines import tensorrt_availability
from samexport.errors import SamExportError
from samexport.pipeline import BUILD_STEPS, build
from samexport.variants import MODELS, SAM2_VARIANTS, VARIANTS, get_model, get_variant


def test_one_registry_with_a_contract_per_family():
    assert set(MODELS) == set(VARIANTS) | set(SAM2_VARIANTS)
    assert {m.contract.name for m in MODELS.values()} == set(BUILD_STEPS) == set(C.GRAPH_CONTRACTS)
    assert get_model("vit_t") is VARIANTS["mobile_sam"] and get_model("sam2.1_hiera_small") is SAM2_VARIANTS["sam2.1_hiera_small"]
    assert C.SAM2_GRAPHS.decoder_inputs == C.SAM2_DECODER_INPUTS and C.SAM_GRAPHS.decoder_inputs == C.DECODER_INPUTS
    with pytest.raises(SamExportError, match="unknown variant 'sam3'; valid variants: vit_b.*sam2.1_hiera_large"):
        get_model("sam3")
    with pytest.raises(SamExportError, match="sam2.1_hiera_tiny is a SAM 2.1 model: use samexport.SAM2ImagePredictor"):
        get_variant("sam2.1_hiera_tiny")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int4"}, "unknown precision 'int4'"),
        ({"precision": "int8", "calib_dir": ".", "int8_target": "tensorrt-llm"}, "unknown int8 target .tensorrt-llm.; valid: tensorrt, onnxruntime, openvino"),
        ({"precision": "int8"}, "int8 needs calibration images: pass --calib-dir"),
        ({"precision": "int8", "int8_target": "openvino"}, "int8 needs calibration images: pass --calib-dir"),
        ({"attention": "plugin"}, "--attention plugin does not apply to SAM 2.1"),
        ({"engines": "require", "engine_builder": "tensorrt-llm"}, "unknown engine builder 'tensorrt-llm'"),
    ],
)
def test_sam2_build_refuses_before_any_work(tmp_path, kwargs, message):
    output = tmp_path / "out"
    with pytest.raises(SamExportError, match=message):
        build("sam2.1_hiera_tiny", checkpoint=tmp_path / "not-read.pt", output=output, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sam2_artifact_records_its_contract(sam2_tiny_artifact):
    manifest = read_manifest(sam2_tiny_artifact)
    assert manifest.variant == "sam2.1_hiera_tiny" and manifest.contract is C.SAM2_GRAPHS
    assert (manifest.graphs.encoder, manifest.graphs.decoder, manifest.graphs.fp16_encoder) == ("fp32", "fp32", False)
    assert [o.name for o in manifest.encoder.outputs] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    assert [i.name for i in manifest.decoder.inputs] == [s.name for s in C.SAM2_DECODER_INPUTS]
    assert [o.name for o in manifest.decoder.outputs] == ["low_res_masks", "iou_predictions", "object_score_logits"]
    assert manifest.decoder_halves() is None
    assert manifest.references.contract == "sam2" and manifest.references.format == 2
    assert set(manifest.files) == {C.ENCODER_ONNX, C.DECODER_ONNX, manifest.references.file}
    availability = tensorrt_availability()
    if availability:  # a GPU with TensorRT: the build made the plans, as for SAM
        assert set(manifest.engines) == {"encoder", "decoder"} and manifest.skipped_engines == {}
    else:  # why not, as for SAM: the machine's, not the family's
        assert manifest.engines == {} and manifest.skipped_engines == {"encoder": availability.reason, "decoder": availability.reason}
    parity = manifest.parity
    assert parity.passed, parity
    summary = parity.summary  # ONNX Runtime CPU vs eager PyTorch, fp32
    assert summary["embedding_rel_max_abs"] < 1e-4 and summary["logits_rel_max_abs"] < 1e-4, summary
    assert summary["mask_iou_min"] > 0.999, summary


@pytest.mark.slow
def test_sam2_artifact_opens_only_through_its_contract(sam2_tiny_artifact):
    import samexport
    from samexport.runtime.backends import open_backend

    backend = open_backend(sam2_tiny_artifact, "onnxruntime-cpu")
    assert backend.contract is C.SAM2_GRAPHS
    assert isinstance(samexport.SAM2ImagePredictor(sam2_tiny_artifact).backend.contract, C.GraphContract)
    with pytest.raises(SamExportError, match="holds the SAM 2.1 model sam2.1_hiera_tiny: open it with samexport.SAM2ImagePredictor"):
        samexport.SamPredictor(sam2_tiny_artifact)
    if not read_manifest(sam2_tiny_artifact).engines:
        with pytest.raises(SamExportError, match="has no TensorRT encoder or decoder engine .*samexport engines"):
            open_backend(sam2_tiny_artifact, "tensorrt")


@pytest.mark.slow
def test_sam2_fp16_build_passes_fp16_parity(sam2_tiny_checkpoint, tmp_path):
    """``--fp16`` for SAM 2.1: both graphs FP16 (FP32 islands), the build's parity check against
    the PyTorch weights at the fp16 tolerances, recorded in the manifest."""
    from collections import Counter

    import onnx
    from support.graphs import fp32_compute_ops

    result = build("sam2.1_hiera_tiny", checkpoint=sam2_tiny_checkpoint, output=tmp_path / "fp16", precision="fp16")
    manifest = result.manifest
    graphs = manifest.graphs
    assert manifest.precision == "fp16" and (graphs.encoder, graphs.decoder, graphs.fp16_encoder) == ("fp16", "fp16", True)
    assert manifest.parity.passed and manifest.parity.precision == "fp16", manifest.parity
    assert manifest.parity.summary["embedding_cosine"] > 0.9999, manifest.parity.summary
    encoder = onnx.load(str(result.artifact_dir / C.ENCODER_ONNX), load_external_data=False)
    weights = encoder.graph.initializer
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights) > len(weights) // 2
    # The FP32 islands are the variant record's op types, every node of them, and nothing else
    # (Hiera: the 24 LayerNormalization and 12 Softmax nodes; docs/sam2.md).
    islands, ops = fp32_compute_ops(encoder), Counter(n.op_type for n in encoder.graph.node)
    assert islands == {op: ops[op] for op in ops if op in SAM2_VARIANTS["sam2.1_hiera_tiny"].fp32_ops}, islands


def _norm_softmax_graph(path) -> None:
    """image 1x4 -> MatMul -> Relu -> LayerNormalization -> Softmax, fp32 weights: a stand-in graph
    (the Relu keeps the MatMul out of the input-fed chain the converter keeps in FP32)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [
        numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["image", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["n"], axis=-1),
        helper.make_node("Softmax", ["n"], ["out"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "stand_in", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("islands", [None, frozenset({"Softmax"})])
def test_sam2_fp16_build_keeps_the_variants_fp32_islands(islands, tmp_path, monkeypatch):
    """``--fp16`` for SAM 2.1 converts the encoder with the variant record's FP32 islands
    (``Sam2Variant.fp32_ops``: the record itself, and a record given another set) and the decoder
    with the default set; the exporters are replaced by a stand-in graph."""
    import dataclasses

    import onnx
    from support.graphs import fp32_compute_ops

    from samexport.build_steps import SAM2_STEPS
    from samexport.export import sam2_onnx
    from samexport.precision import DEFAULT_FP32_OPS

    monkeypatch.setattr(sam2_onnx, "export_sam2_encoder", lambda model, path, opset: _norm_softmax_graph(path))
    monkeypatch.setattr(sam2_onnx, "export_sam2_decoder", lambda model, path, opset: _norm_softmax_graph(path))
    variant = SAM2_VARIANTS["sam2.1_hiera_tiny"]
    if islands is not None:
        variant = dataclasses.replace(variant, fp32_ops=islands)
    checked = SAM2_STEPS.check_request(
        variant, precision="fp16", attention="plain", opset=18, int8_target="tensorrt", calib_dir=None
    )
    graphs = SAM2_STEPS.write_graphs(None, tmp_path, "fp16", opset=18, on_step=lambda _: None, **checked)
    assert (graphs.encoder, graphs.decoder, graphs.fp16_encoder) == ("fp16", "fp16", True)
    expected = {"LayerNormalization", "Softmax"} & variant.fp32_ops
    assert set(fp32_compute_ops(onnx.load(str(tmp_path / C.ENCODER_ONNX)))) == expected
    assert set(fp32_compute_ops(onnx.load(str(tmp_path / C.DECODER_ONNX)))) == {"LayerNormalization", "Softmax"} & DEFAULT_FP32_OPS
