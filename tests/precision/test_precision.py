"""samexport.precision on the tiny model: FP16 islands and INT8 Q/DQ structure, numerics on ORT CPU.

The full-size (vit_b) checks live in ``tests/precision/test_precision_vit_b.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from support import (
    HELD_OUT_PHOTO,
    SAMPLE_PHOTOS,
    cosine,
    decoder_feed,
    mask_iou,
    sample_photo,
    session,
    write_calibration_folder,
)
from support.graphs import assert_fp16_structure, assert_int8_structure, fp32_compute_ops, value_types

from samexport import constants as C
from samexport.utils import sha256_file

# ---------------------------------------------------------------------------------------------
# helpers (the shared ones are in tests/support/)


# ---------------------------------------------------------------------------------------------
# FP16


@pytest.fixture(scope="session")
def tiny_fp16(tiny_onnx, tmp_path_factory) -> tuple[Path, Path]:
    from samexport.precision.fp16 import convert_to_fp16

    folder = tmp_path_factory.mktemp("fp16")
    encoder, decoder = tiny_onnx
    return convert_to_fp16(encoder, folder / "encoder.onnx"), convert_to_fp16(decoder, folder / "decoder.onnx")


@pytest.fixture(scope="session")
def tiny_embedding(tiny_onnx) -> np.ndarray:
    from samexport.transforms import preprocess

    return session(tiny_onnx[0]).run(None, {C.IMAGE.name: preprocess(sample_photo(HELD_OUT_PHOTO))})[0]


def test_fp16_structure(tiny_onnx, tiny_fp16):
    for fp32_path, fp16_path in zip(tiny_onnx, tiny_fp16):
        model = onnx.load(str(fp16_path))
        onnx.checker.check_model(model)
        assert_fp16_structure(model, onnx.load(str(fp32_path)))


def test_fp16_decoder_keeps_positional_encoding_fp32(tiny_fp16):
    """point_coords -> +0.5 -> /1024 -> *2 -1 -> @ gaussian -> *2pi -> Sin/Cos all in FP32."""
    model = onnx.load(str(tiny_fp16[1]))
    islands = fp32_compute_ops(model)
    assert islands["Sin"] == 1 and islands["Cos"] == 1 and islands["MatMul"] == 1
    first = next(n for n in model.graph.node if C.POINT_COORDS.name in n.input and n.op_type != "Shape")
    assert first.op_type == "Add"  # reads the fp32 input directly, no Cast in front


def test_fp16_islands_are_configurable(tiny_onnx, tmp_path):
    from samexport.precision.fp16 import DEFAULT_FP32_OPS, convert_to_fp16

    path = convert_to_fp16(
        tiny_onnx[0], tmp_path / "e.onnx", fp32_ops=DEFAULT_FP32_OPS - {"Softmax"}, keep_decomposed_norms_fp32=False
    )
    islands = fp32_compute_ops(onnx.load(str(path)))
    assert islands["Softmax"] == 0 and islands["LayerNormalization"] > 0
    assert islands["Sub"] == 0 and islands["Div"] == 0


def test_fp16_constant_nodes_become_fp16(tmp_path):
    """A graph with a Constant node and an initializer read in both precisions."""
    from onnx import helper

    from samexport.precision.fp16 import convert_to_fp16

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])
    w = onnx.numpy_helper.from_array(np.full((3, 3), 0.5, np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones(3, np.float32))),
        helper.make_node("Relu", ["x"], ["r"]),  # not input-fed arithmetic: the chain below is FP16
        helper.make_node("MatMul", ["r", "w"], ["m"]),
        helper.make_node("Add", ["m", "c"], ["a"]),
        helper.make_node("Pow", ["a", "w"], ["p"]),  # FP32 island reading the same weight
        helper.make_node("Softmax", ["p"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 18)], ir_version=10
    )
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    out = onnx.load(str(convert_to_fp16(src, tmp_path / "m16.onnx")))
    inits = {t.name: t.data_type for t in out.graph.initializer}
    assert inits == {"w": TensorProto.FLOAT, "w__fp16": TensorProto.FLOAT16, "c": TensorProto.FLOAT16}
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feed = {"x": np.arange(9, dtype=np.float32).reshape(3, 3) / 9}
    np.testing.assert_allclose(session(src).run(None, feed)[0], session(tmp_path / "m16.onnx").run(None, feed)[0], atol=2e-3)


def test_fp16_reads_external_data(tiny_onnx, tiny_embedding, tmp_path):
    """Graphs past 2 GB (vit_h) keep their weights in external data next to the .onnx file."""
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.transforms import preprocess

    src = tmp_path / "src" / "encoder.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(tiny_onnx[0])), str(src), save_as_external_data=True, location="encoder.onnx.data")
    out = convert_to_fp16(src, tmp_path / "out" / "encoder.onnx")
    half = session(out).run(None, {C.IMAGE.name: preprocess(sample_photo(HELD_OUT_PHOTO))})[0]
    assert cosine(tiny_embedding, half) >= 0.9999


def test_fp16_numerics_tiny(tiny_onnx, tiny_fp16, tiny_embedding):
    """Stated tolerance: embedding cosine >= 0.9999 and max abs error <= 1% of the embedding's
    max abs; decoder: mask IoU >= 0.98 per mask, IoU prediction error <= 0.01."""
    from samexport.transforms import preprocess

    image = preprocess(sample_photo(HELD_OUT_PHOTO))
    half = session(tiny_fp16[0]).run(None, {C.IMAGE.name: image})[0]
    assert half.dtype == np.float32
    assert cosine(tiny_embedding, half) >= 0.9999
    assert np.abs(half - tiny_embedding).max() <= 0.01 * np.abs(tiny_embedding).max()

    feed = decoder_feed(tiny_embedding)
    masks32, iou32 = session(tiny_onnx[1]).run(None, feed)
    masks16, iou16 = session(tiny_fp16[1]).run(None, feed)
    assert mask_iou(masks32, masks16).min() >= 0.98
    assert np.abs(iou32 - iou16).max() <= 0.01


# ---------------------------------------------------------------------------------------------
# INT8


def test_int8_structure(tiny_int8):
    model = onnx.load(str(tiny_int8[0]))
    onnx.checker.check_model(model)
    assert_int8_structure(model)
    assert [i.name for i in model.graph.input] == [C.IMAGE.name]
    assert [o.name for o in model.graph.output] == [C.IMAGE_EMBEDDINGS.name]


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_int8_tensorrt_recipe_is_fp16_between_qdq(tiny_int8, tiny_int8_ort, tiny_fp16):
    """TensorRT recipe: FP16 activations and scales around the Q/DQ, INT8 weights, the FP32 islands
    of the fp16 build and nothing more (TensorRT parses strongly typed: an FP32 op runs FP32/TF32).
    The ONNX Runtime recipe stays FP32 at the exporter's opset."""
    from samexport.export.to_onnx import DEFAULT_OPSET

    model = onnx.load(str(tiny_int8[0]))
    types = value_types(model)
    inits = {t.name: t for t in model.graph.initializer}
    assert _default_opset(model) >= 19  # float16 QuantizeLinear/DequantizeLinear
    for tensor in (*model.graph.input, *model.graph.output):
        assert tensor.type.tensor_type.elem_type == TensorProto.FLOAT, tensor.name
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for node in qdq:
        assert inits[node.input[1]].data_type == TensorProto.FLOAT16, node.name
        float_side = node.input[0] if node.op_type == "QuantizeLinear" else node.output[0]
        assert types[float_side] == TensorProto.FLOAT16, node.name
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm"):
            assert all(types[x] == TensorProto.FLOAT16 for x in node.input if x), node.name
    assert fp32_compute_ops(model) == fp32_compute_ops(onnx.load(str(tiny_fp16[0])))
    assert not [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 4096]

    ort_model = onnx.load(str(tiny_int8_ort))
    assert _default_opset(ort_model) == DEFAULT_OPSET
    ort_inits = {t.name: t for t in ort_model.graph.initializer}
    assert {ort_inits[n.input[1]].data_type for n in ort_model.graph.node if n.op_type == "QuantizeLinear"} == {
        TensorProto.FLOAT
    }


@pytest.fixture(scope="session")
def tiny_int8_ort(tiny_onnx, calib_dir, tmp_path_factory) -> Path:
    """int8 encoder with the ONNX Runtime recipe (outputs of the quantized ops quantized too)."""
    from samexport.precision.int8 import quantize_encoder_int8
    from samexport.precision.recipes import recipe_for

    folder = tmp_path_factory.mktemp("int8_ort")
    return quantize_encoder_int8(tiny_onnx[0], folder / "encoder.onnx", calib_dir, recipe=recipe_for("onnxruntime"))


def test_int8_onnxruntime_recipe_quantizes_outputs(tiny_int8_ort, tmp_path):
    """Every quantized MatMul/Conv output goes through Q/DQ, and ORT CPU runs every MatMul as QLinearMatMul."""
    import onnxruntime as ort

    model = onnx.load(str(tiny_int8_ort))
    onnx.checker.check_model(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node.op_type)
    quantized = [
        n for n in model.graph.node
        if n.op_type in ("MatMul", "Conv", "Gemm") and producer.get(n.input[0]) is not None
        and producer[n.input[0]].op_type == "DequantizeLinear"
    ]
    assert quantized
    for node in quantized:
        assert consumers[node.output[0]] == ["QuantizeLinear"], node.name

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_int8_ort), options, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert fused["QLinearMatMul"] == sum(n.op_type == "MatMul" for n in quantized)


def test_float_tail_leaves_the_last_quantizable_nodes_in_float(tiny_onnx, calib_dir, tmp_path):
    """``Int8Recipe.float_tail``: the last N nodes the recipe would quantize get no Q/DQ, the
    others still do; and only those N are left out."""
    import dataclasses

    from samexport.precision.int8 import quantize_encoder_int8, quantized_nodes
    from samexport.precision.recipes import recipe_for

    recipe = dataclasses.replace(recipe_for("onnxruntime"), float_tail=2)
    candidates = [n.name for n in quantized_nodes(onnx.load(str(tiny_onnx[0])), recipe_for("onnxruntime"))]
    assert [n.name for n in quantized_nodes(onnx.load(str(tiny_onnx[0])), recipe)] == candidates[:-2]
    model = onnx.load(str(quantize_encoder_int8(tiny_onnx[0], tmp_path / "encoder.onnx", calib_dir, recipe=recipe)))
    producer = {o: n for n in model.graph.node for o in n.output}
    fed_by_dq = {
        n.name for n in model.graph.node
        if n.op_type in recipe.op_types and producer.get(n.input[0]) is not None
        and producer[n.input[0]].op_type == "DequantizeLinear"
    }
    assert fed_by_dq == set(candidates[:-2])


def test_tinyvit_keeps_its_output_side_in_float_for_onnxruntime_only():
    from samexport.precision.recipes import TINY_VIT_ONNXRUNTIME_FLOAT_TAIL, recipe_for
    from samexport.variants import VARIANTS

    tiny_vit, vit = VARIANTS["mobile_sam"].family, VARIANTS["vit_b"].family
    assert recipe_for("onnxruntime", tiny_vit).float_tail == TINY_VIT_ONNXRUNTIME_FLOAT_TAIL == 6
    assert recipe_for("tensorrt", tiny_vit) == recipe_for("tensorrt")
    assert recipe_for("onnxruntime", vit) == recipe_for("onnxruntime")


def test_quantizer_keywords_bind_to_the_installed_qdq_quantizer():
    """The keywords samexport passes to ONNX Runtime's ``QDQQuantizer`` are the installed
    signature's parameter names, every required one given; onnxruntime 1.17's signature (``mode,
    static`` after ``reduce_range``, which a positional call would shift into) does not take them."""
    import inspect

    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from samexport.precision.int8 import quantizer_arguments
    from samexport.precision.recipes import RECIPES

    for recipe in RECIPES.values():
        arguments = quantizer_arguments(object(), {"x": 1.0}, recipe, ["node"])
        bound = inspect.signature(QDQQuantizer.__init__).bind(None, **arguments)
        assert set(bound.arguments) == {"self", *arguments}

    def init_1_17_3(self, model, per_channel, reduce_range, mode, static, weight_qType, activation_qType,
                    tensors_range, nodes_to_quantize, nodes_to_exclude, op_types_to_quantize, extra_options=None):
        """``QDQQuantizer.__init__`` of onnxruntime 1.17.3 (onnxruntime/quantization/qdq_quantizer.py)."""

    with pytest.raises(TypeError, match="mode"):
        inspect.signature(init_1_17_3).bind(None, **arguments)


def test_int8_onnxruntime_integer_kernels_match_qdq_reference(tiny_int8_ort):
    """ORT's fused integer kernels (QLinearConv/QLinearMatMul) compute what the Q/DQ graph says.

    On x86 CPUs without VNNI those kernels sum pairs of uint8 x int8 products in int16, which
    saturates with 8-bit weights (tiny: cosine 0.983 fused vs 0.9996 unfused on an AVX2 EPYC);
    the recipe's 7-bit weights rule that out. The weight bound is checked on every CPU, the
    fused-vs-unfused agreement is what fails on a CPU that saturates. The two paths round
    differently, so they agree only to about int8 noise (cosine 0.9997 here, not 1).
    """
    import onnxruntime as ort

    from samexport.transforms import preprocess

    model = onnx.load(str(tiny_int8_ort))
    inits = {t.name: t for t in model.graph.initializer}
    weights = [
        onnx.numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64

    feed = {C.IMAGE.name: preprocess(sample_photo(HELD_OUT_PHOTO))}
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = level
        run = ort.InferenceSession(str(tiny_int8_ort), options, providers=["CPUExecutionProvider"]).run
        outputs.append(run(None, feed)[0])
    assert cosine(*outputs) >= 0.999


@pytest.mark.parametrize("encoder", ["tiny_int8", "tiny_int8_ort"])
def test_int8_accuracy_tiny(encoder, tiny_onnx, tiny_embedding, request):
    """Held-out photo, both recipes. Stated tolerance: embedding cosine >= 0.995, mean mask IoU >= 0.9."""
    from samexport.transforms import preprocess

    path = request.getfixturevalue(encoder)
    path = path[0] if isinstance(path, tuple) else path
    out = session(path).run(None, {C.IMAGE.name: preprocess(sample_photo(HELD_OUT_PHOTO))})[0]
    assert cosine(tiny_embedding, out) >= 0.995
    decoder = session(tiny_onnx[1])
    reference, _ = decoder.run(None, decoder_feed(tiny_embedding))
    quantized, _ = decoder.run(None, decoder_feed(out))
    assert mask_iou(reference, quantized).mean() >= 0.9


def test_calibration_cache_is_reused_and_keyed(tiny_onnx, tiny_int8, calib_dir, tmp_path, monkeypatch):
    from samexport.precision import int8

    cache = tiny_int8[1]
    stored = json.loads(cache.read_text())
    assert stored["key"]["model_sha256"] == sha256_file(tiny_onnx[0])
    assert [name for name, _ in stored["key"]["images"]] == sorted(f"{n}.png" for n in SAMPLE_PHOTOS)
    assert stored["ranges"] and all(v > 0 for v in stored["ranges"].values())

    def no_calibration(*args, **kwargs):
        raise AssertionError("recalibrated although the cache matches")

    monkeypatch.setattr(int8, "collect_ranges", no_calibration)
    again = int8.quantize_encoder_int8(tiny_onnx[0], tmp_path / "again.onnx", calib_dir, cache_path=cache)
    assert onnx.load(str(again)).graph == onnx.load(str(tiny_int8[0])).graph

    # Another image set misses the cache.
    fewer = write_calibration_folder(tmp_path / "fewer", SAMPLE_PHOTOS[:2])
    with pytest.raises(AssertionError, match="recalibrated"):
        int8.quantize_encoder_int8(tiny_onnx[0], tmp_path / "other.onnx", fewer, cache_path=cache)


def test_a_build_checks_the_calibration_inputs_once(tiny_onnx, tiny_int8, calib_dir, tmp_path, monkeypatch):
    """``samexport build`` checks the images and the cache at its door (``_check_sam_request``,
    ``pipeline.build``) and quantizes with what it checked: the checked entry point checks nothing
    again, and gives the graph the public one gives."""
    from samexport import build_steps
    from samexport.precision import calibration, int8
    from samexport.precision.recipes import Int8Recipe
    from samexport.variants import get_model

    checked = build_steps._check_sam_request(
        get_model("tiny"), precision="int8", attention="plain", opset=17, int8_target="onnxruntime", calib_dir=calib_dir,
    )
    assert checked["calibration_images"] == calibration.list_images(calib_dir, checked["recipe"].max_images)

    def checked_again(*args, **kwargs):
        raise AssertionError("checked again")

    for module in (int8, calibration):
        monkeypatch.setattr(module, "check_calibration_images", checked_again)
        monkeypatch.setattr(module, "check_calibration_cache", checked_again)
    monkeypatch.setattr(calibration, "read_image", checked_again)  # no image decoded: the cache matches
    again = int8.quantize_checked_encoder_int8(  # tiny_int8's recipe: the default
        tiny_onnx[0], tmp_path / "again.onnx", calibration.list_images(calib_dir), cache_path=tiny_int8[1],
        recipe=Int8Recipe(),
    )
    assert onnx.load(str(again)).graph == onnx.load(str(tiny_int8[0])).graph
    with pytest.raises(AssertionError, match="checked again"):  # the public door does check
        int8.quantize_encoder_int8(tiny_onnx[0], tmp_path / "door.onnx", calib_dir, cache_path=tiny_int8[1])


def test_calibration_folder_errors(tiny_onnx, tmp_path):
    from samexport.errors import SamExportError
    from samexport.precision.int8 import quantize_encoder_int8

    with pytest.raises(SamExportError, match="not found"):
        quantize_encoder_int8(tiny_onnx[0], tmp_path / "e.onnx", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SamExportError, match="no images"):
        quantize_encoder_int8(tiny_onnx[0], tmp_path / "e.onnx", tmp_path / "empty")


@pytest.mark.parametrize("content", ["[]", "null", "{not json", '{"key": {}, "ranges": {"x": "big"}}'])
def test_malformed_calibration_cache_is_named(tiny_onnx, calib_dir, tmp_path, content):
    from samexport.errors import SamExportError
    from samexport.precision.int8 import quantize_encoder_int8

    cache = tmp_path / "calibration.json"
    cache.write_text(content)
    with pytest.raises(SamExportError, match=rf"calibration cache {cache} is malformed .*delete it to recalibrate"):
        quantize_encoder_int8(tiny_onnx[0], tmp_path / "e.onnx", calib_dir, cache_path=cache)
    assert cache.read_text() == content


def test_unreadable_calibration_image_is_named(tiny_onnx, tmp_path):
    from samexport.errors import SamExportError
    from samexport.precision.int8 import quantize_encoder_int8

    folder = write_calibration_folder(tmp_path / "calib", SAMPLE_PHOTOS[:2])
    (folder / "zz_broken.png").write_bytes((folder / f"{SAMPLE_PHOTOS[0]}.png").read_bytes()[:2000])
    with pytest.raises(SamExportError, match=r"calibration image .*zz_broken.png cannot be read"):
        quantize_encoder_int8(tiny_onnx[0], tmp_path / "e.onnx", folder)
    assert not (tmp_path / "e.onnx").exists()


@pytest.mark.parametrize(("scale", "raises"), [(1e-3, False), (1e-9, True)])
def test_int8_fp16_scales_never_underflow_to_zero(scale, raises, tmp_path):
    """A Q/DQ scale that becomes 0 in FP16 would divide by zero: refused, a normal one converts."""
    from onnx import helper, numpy_helper

    from samexport.errors import SamExportError
    from samexport.precision.int8 import qdq_to_fp16

    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
        helper.make_node("MatMul", ["dq", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits,
    )
    src = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    if raises:
        with pytest.raises(SamExportError, match="underflow"):
            qdq_to_fp16(src, tmp_path / "out.onnx")
        return
    x = np.array([[0.01, -0.02, 0.05, 0.1]], np.float32)
    y = session(qdq_to_fp16(src, tmp_path / "out.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.clip(np.round(x / scale), -128, 127) * scale, rtol=1e-3)
