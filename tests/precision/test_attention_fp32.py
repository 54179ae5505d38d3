"""The safe FP16 form (``samexport.precision.attention_fp32``): attention core in FP32 between FP16
projections.

What is shown:
- the graph really holds the core in FP32 (types after ONNX shape inference): every MatMul of two
  activations, the bias add and the softmax are FP32, every projection stays FP16 (INT8 Q/DQ on
  the INT8 graph), with one Cast in per projection output read by the core and one Cast out;
- numerics in true FP16 (``onnx.reference``, NumPy's float16): an attention whose logits pass the
  FP16 range gives NaN in the plain FP16 graph and the reference result in the safe form;
- parity against PyTorch (ONNX Runtime CPU) for tiny (three attention modes), mobile_sam and
  vit_b (slow) at the fp16 tolerances of ``tests/precision/test_precision.py``, at least as good as the plain FP16
  graph. ONNX Runtime's CPU provider has no FP16 MatMul kernel on x86 and runs those nodes in FP32
  behind inserted Casts, so on CPU the two forms agree closely; the difference is TensorRT's;
- a TensorRT-RTX build of the safe form parses and builds.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import ATTENTION_OPSETS, HELD_OUT_PHOTO, cosine, needs_rtx, sample_photo
from support.graphs import classify_matmuls, value_types

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.precision.attention_fp32 import upcast_attention
from samexport.precision.fp16 import convert_to_fp16

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
OPSET = {"plain": 18, "fused-pattern": 18, "onnx-attention": 23, "plugin": 18}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_forms(tiny_sam, tiny_attention_encoders, tmp_path_factory) -> dict:
    """mode -> (fp32, fp16, safe) encoder graphs of the tiny variant (fp32: exported at
    ``OPSET[mode]``, shared with ``tests/export/test_attention.py``)."""
    pytest.importorskip("torch")
    assert ATTENTION_OPSETS == OPSET
    folder = tmp_path_factory.mktemp("attention-fp32")
    forms = {}
    for mode in ("plain", "fused-pattern", "onnx-attention", "plugin"):
        fp32 = tiny_attention_encoders[mode]
        fp16 = convert_to_fp16(fp32, folder / f"{mode}-fp16.onnx", fp32_ops=tiny_sam.variant.fp32_ops)
        safe = None
        if mode != "plugin":
            upcast_attention(fp16, folder / f"{mode}-safe.onnx")
            safe = folder / f"{mode}-safe.onnx"
        forms[mode] = (fp32, fp16, safe)
    return forms


def torch_embedding(sam, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return sam.image_encoder(torch.from_numpy(image)).numpy()


def run_encoder(path, image: np.ndarray) -> np.ndarray:
    """One ONNX Runtime CPU run, without the memory arena (as samexport opens fp16 graphs: with it
    the vit_b fp16 encoder grew past 18 GiB), the session freed after."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {C.IMAGE.name: image})[0]


def assert_parity(sam, fp16_path, safe_path) -> dict:
    """fp16 tolerances of tests/precision/test_precision.py (cosine >= 0.9999, max error <= 1% of the absmax) on
    two photos, and the safe form's errors no larger than the plain FP16 graph's (5% slack:
    different but equivalent rounding)."""
    from samexport.transforms import preprocess

    figures = {}
    for photo in (HELD_OUT_PHOTO, "coffee"):
        image = preprocess(sample_photo(photo))
        reference = torch_embedding(sam, image)
        scale = np.abs(reference).max()
        plain, safe = (run_encoder(path, image) for path in (fp16_path, safe_path))
        assert cosine(reference, safe) >= 0.9999
        assert np.abs(safe - reference).max() <= 0.01 * scale
        assert np.abs(safe - reference).max() <= 1.05 * np.abs(plain - reference).max()
        assert np.abs(safe - reference).mean() <= 1.05 * np.abs(plain - reference).mean()
        figures[photo] = (cosine(reference, safe), np.abs(safe - reference).max() / scale)
    return figures


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "fused-pattern", "onnx-attention"])
def test_attention_core_is_fp32(tiny_sam, tiny_forms, mode):
    depth = len(tiny_sam.image_encoder.blocks)
    _, fp16_path, safe_path = tiny_forms[mode]
    plain, safe = onnx.load(str(fp16_path)), onnx.load(str(safe_path))
    onnx.checker.check_model(safe)
    plain_types, types = value_types(plain), value_types(safe)

    projections, products = classify_matmuls(safe)
    assert len(products) == 2 * depth, "q @ k^T and attn @ v per block"
    assert all(types[x] == FLOAT for n in products for x in (*n.input, *n.output))
    assert all(types[n.input[0]] == HALF and types[n.output[0]] == HALF for n in projections)
    for node in safe.graph.node:
        if node.op_type in ("Softmax", "Einsum"):
            assert all(types[x] == FLOAT for x in (*node.input, *node.output)), node.name
    assert not [n for n in safe.graph.node if n.op_type == "Attention"]
    if mode != "onnx-attention":  # the same products are FP16 in the plain FP16 graph
        _, plain_products = classify_matmuls(plain)
        assert len(plain_products) == 2 * depth
        assert all(plain_types[n.output[0]] == HALF for n in plain_products)

    # Exactly one Cast to half per block, and it feeds the output projection.
    producer = {o: n for n in safe.graph.node for o in n.output}
    outs = [n for n in safe.graph.node if n.op_type == "Cast" and n.name.endswith("__attn_fp16")]
    assert len(outs) == depth
    consumers = {n.output[0]: [c for c in safe.graph.node if n.output[0] in c.input] for n in outs}
    assert all(len(c) == 1 and c[0] in projections for c in consumers.values())
    # One Cast to float on the qkv projection's output per block (plus the constants it reads).
    ins = [n for n in safe.graph.node if n.op_type == "Cast" and n.name.endswith("__attn_fp32")]
    fed_by_projection = [n for n in ins if n.input[0] in producer and producer[n.input[0]].op_type == "Add"]
    assert len(fed_by_projection) == depth
    assert [i.name for i in safe.graph.input] == [C.IMAGE.name] and types[C.IMAGE_EMBEDDINGS.name] == FLOAT


def test_int8_on_fp16_keeps_its_quantization(tiny_int8, tmp_path):
    """The Q/DQ stay with the projections they quantize (DQ -> MatMul, no Cast between), the
    attention products become FP32."""
    src = tiny_int8[0]
    report = upcast_attention(src, tmp_path / "encoder.onnx")
    model, before = onnx.load(str(tmp_path / "encoder.onnx")), onnx.load(str(src))
    types = value_types(model)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(model, "QuantizeLinear") == count(before, "QuantizeLinear") > 0
    assert count(model, "DequantizeLinear") == count(before, "DequantizeLinear")
    producer = {o: n for n in model.graph.node for o in n.output}
    projections, products = classify_matmuls(model)
    assert report.cores == len(products) // 2 > 0
    assert all(types[x] == FLOAT for n in products for x in (*n.input, *n.output))
    quantized = [n for n in projections if producer[n.input[0]].op_type == "DequantizeLinear"]
    assert quantized and all(types[n.input[0]] == HALF for n in quantized)


def test_refusals(tiny_forms, tmp_path):
    fp32, _, _ = tiny_forms["plain"]
    with pytest.raises(SamExportError, match="no attention core in FP16"):
        upcast_attention(fp32, tmp_path / "x.onnx")
    with pytest.raises(SamExportError, match="custom nodes .*SamRelPosAttention"):
        upcast_attention(tiny_forms["plugin"][1], tmp_path / "y.onnx")
    assert not list(tmp_path.iterdir()), "nothing written on refusal"


# --- numerics in true FP16 -----------------------------------------------------------------------


def attention_block(n_tokens=16, dim=32, seed=0, gain=200.0) -> tuple[onnx.ModelProto, dict]:
    """x -> q, k, v projections -> softmax((q * s) k^T + bias) v -> output projection, in FP32,
    with q and k weights scaled by ``gain`` so the logits pass the FP16 range (65504)."""
    rng = np.random.default_rng(seed)
    w = {name: (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32) for name in ("wq", "wk", "wv", "wo")}
    w["wq"] = w["wq"] * np.float32(gain)
    w["wk"] = w["wk"] * np.float32(gain)
    w["bias"] = rng.standard_normal((n_tokens, n_tokens)).astype(np.float32)
    w["scale"] = np.array(dim**-0.5, dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qs", "kt"], ["logits"]),
        helper.make_node("Add", ["logits", "bias"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["attn"]),
        helper.make_node("MatMul", ["attn", "wo"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", FLOAT, [1, n_tokens, dim])],
        [helper.make_tensor_value_info("y", FLOAT, [1, n_tokens, dim])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w


def reference_attention(x: np.ndarray, w: dict) -> np.ndarray:
    x = x.astype(np.float64)
    q, k, v = (x @ w[name] for name in ("wq", "wk", "wv"))
    logits = (q * w["scale"]) @ k.transpose(0, 2, 1) + w["bias"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v) @ w["wo"]


def test_logits_beyond_fp16_range(tmp_path):
    """In true FP16 arithmetic (onnx.reference runs NumPy float16), logits beyond 65504 overflow
    in the plain FP16 graph (NaN out of the softmax); the safe form computes them in FP32 and
    matches the float64 reference to FP16 resolution."""
    from onnx.reference import ReferenceEvaluator

    model, w = attention_block()
    onnx.save(model, tmp_path / "fp32.onnx")
    convert_to_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    report = upcast_attention(tmp_path / "fp16.onnx", tmp_path / "safe.onnx")
    assert (report.cores, report.casts_out) == (1, 1)
    x = np.random.default_rng(1).standard_normal((1, 16, 32)).astype(np.float32)
    q, k = x @ w["wq"], x @ w["wk"]
    assert np.abs((q * w["scale"]) @ k.transpose(0, 2, 1)).max() > 65504  # the case is real
    expected = reference_attention(x, w)

    plain = ReferenceEvaluator(str(tmp_path / "fp16.onnx")).run(None, {"x": x})[0]
    safe = ReferenceEvaluator(str(tmp_path / "safe.onnx")).run(None, {"x": x})[0]
    assert not np.isfinite(plain).all()
    assert np.isfinite(safe).all()
    assert np.abs(safe - expected).max() <= 0.01 * np.abs(expected).max()


# --- parity against PyTorch (ONNX Runtime CPU) ---------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "fused-pattern", "onnx-attention"])
def test_parity_tiny(tiny_sam, tiny_forms, mode):
    _, fp16, safe = tiny_forms[mode]
    assert_parity(tiny_sam, fp16, safe)


@pytest.mark.slow
def test_parity_mobile_sam(mobile_sam_checkpoint, mobile_sam_artifact, tmp_path_factory):
    """From the session's MobileSAM export (plain attention, opset 18, as ``tiny_forms``'s graphs)."""
    from samexport.checkpoint import load_sam

    folder = tmp_path_factory.mktemp("mobile_sam-fp32-attention")
    sam = load_sam(mobile_sam_checkpoint, "mobile_sam")
    fp16 = convert_to_fp16(mobile_sam_artifact / C.ENCODER_ONNX, folder / "plain-fp16.onnx", fp32_ops=sam.variant.fp32_ops)
    report = upcast_attention(fp16, folder / "safe.onnx")
    assert report.cores == sum(len(layer.blocks) for layer in sam.image_encoder.layers[1:])
    assert_parity(sam, fp16, folder / "safe.onnx")


@pytest.mark.slow
def test_parity_vit_b(vit_b_checkpoint, vit_b_fp16_encoder, tmp_path_factory):
    """From the session's vit_b export converted to FP16 (plain attention, opset 18, the default
    FP32 islands: what ``tiny_forms`` makes)."""
    from samexport.checkpoint import load_sam

    folder = tmp_path_factory.mktemp("vit_b-fp32-attention")
    sam = load_sam(vit_b_checkpoint, "vit_b")
    fp16 = vit_b_fp16_encoder
    report = upcast_attention(fp16, folder / "safe.onnx")
    assert report.cores == 12
    assert_parity(sam, fp16, folder / "safe.onnx")


# --- TensorRT-RTX --------------------------------------------------------------------------------


@needs_rtx
@pytest.mark.parametrize("mode", ["plain", "onnx-attention"])
def test_rtx_builds_the_safe_form(tiny_forms, mode, tmp_path):
    """Parses strongly typed and builds (the FP32 ONNX ``Attention`` op would not: RTX has no
    FP32 kernel for it, see tests/export/test_attention.py; the safe form writes it out)."""
    from samexport.engines.builder import BuildConfig, build_engine

    info = build_engine(tiny_forms[mode][2], tmp_path / "encoder.plan", BuildConfig(workspace_bytes=1 << 30), flavour="tensorrt_rtx")
    assert info.plan_bytes > 0 and (tmp_path / "encoder.plan").stat().st_size == info.plan_bytes
