"""``--attention`` export modes (tiny variant): numerics vs torch, graph structure, TensorRT-RTX builds.

Modes (``samexport.export.attention``): ``plain``, ``fused-pattern``, ``onnx-attention`` (opset 23)
and ``plugin``. The plugin graph runs in ONNX Runtime after ``inline_reference`` swaps each plugin
node for the reference math; the TensorRT plugin itself needs a GPU (tests marked ``gpu``).

Measured on the tiny variant (embedding max abs error / embedding absmax, fp32, ONNX Runtime CPU):
plain 7.4e-7, fused-pattern 7.4e-7, plugin (inlined reference) 7.4e-7, onnx-attention 8.1e-7.
"""

from __future__ import annotations

import importlib.util
import logging
import re

import numpy as np
import onnx
import pytest
from support import ATTENTION_OPSETS

torch = pytest.importorskip("torch")

from samexport import constants as C  # noqa: E402
from samexport.errors import MissingExtraError, SamExportError  # noqa: E402
from samexport.export.attention import ATTENTION_MODES, attention_mode  # noqa: E402
from samexport.export.to_onnx import export_encoder  # noqa: E402
from samexport.plugins.onnx_node import (  # noqa: E402
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    inline_reference,
    plugin_attributes,
    plugin_nodes,
)

EMBED_TOL = 2e-5  # relative to the embedding's absmax, as for the plain export (tests/export/test_to_onnx.py)
OPSET = {"plain": 18, "fused-pattern": 18, "onnx-attention": 23, "plugin": 18}
HAVE_RTX = any(importlib.util.find_spec(m) is not None for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason="TensorRT-RTX is not installed (tensorrt-rtx-cu12-bindings)")


@pytest.fixture(scope="module")
def graphs(tiny_attention_encoders) -> dict:
    """Encoder ONNX per attention mode, fp32 (exported at ``OPSET[mode]``, shared with
    ``tests/precision/test_attention_fp32.py``)."""
    assert set(tiny_attention_encoders) == set(ATTENTION_MODES) and ATTENTION_OPSETS == OPSET
    return tiny_attention_encoders


@pytest.fixture(scope="module")
def image_and_reference(tiny_sam):
    image = np.random.default_rng(0).standard_normal(C.IMAGE.shape).astype(np.float32)
    with torch.no_grad():
        reference = tiny_sam.image_encoder(torch.from_numpy(image)).numpy()
    return image, reference


def run_onnxruntime(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {C.IMAGE.name: image})[0]


def depth(sam) -> int:
    return len(sam.image_encoder.blocks)


def shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


# --- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_torch_formulations_match_plain(tiny_sam, image_and_reference, mode):
    """The swapped-in attention cores compute what the plain model does (torch, fp32)."""
    image, reference = image_and_reference
    with torch.no_grad(), attention_mode(tiny_sam.image_encoder, mode):
        got = tiny_sam.image_encoder(torch.from_numpy(image)).numpy()
    assert np.abs(got - reference).max() <= 1e-6 * np.abs(reference).max()
    assert all(block.attn.core is None for block in tiny_sam.image_encoder.blocks), "mode not restored"


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_onnxruntime_matches_torch(graphs, image_and_reference, mode):
    image, reference = image_and_reference
    model = onnx.load(str(graphs[mode]))
    if mode == "plugin":
        model = inline_reference(model)  # ONNX Runtime has no kernel for the plugin node
        assert not plugin_nodes(model)
    got = run_onnxruntime(model, image)
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= EMBED_TOL * np.abs(reference).max()


# --- structure -----------------------------------------------------------------------------------


def test_plain_graph_builds_its_bias_with_a_5d_broadcast(graphs):
    """Why fused-pattern exists: the plain bias is a 5-D broadcast add."""
    model = onnx.load(str(graphs["plain"]))
    ranks = {name: len(dims) for name, dims in shapes(model).items()}
    adds_5d = [n for n in model.graph.node if n.op_type == "Add" and ranks.get(n.output[0]) == 5]
    assert adds_5d


def _ancestors(model, name: str, stop: set[str]) -> list[onnx.NodeProto]:
    """Nodes feeding ``name`` back to (and including) the first node whose op type is in ``stop``."""
    by_output = producers(model)
    found, todo, seen = [], [name], set()
    while todo:
        node = by_output.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        if node.op_type not in stop:
            todo.extend(node.input)
    return found


def test_fused_pattern_structure(tiny_sam, graphs):
    """Per block: Mul(q, scale) -> MatMul -> Add(4-D logits, 4-D bias) -> Softmax -> MatMul(., v),
    and no tensor of rank > 4 on the bias path back to the rel-pos projections."""
    model = onnx.load(str(graphs["fused-pattern"]))
    dims = shapes(model)
    by_output = producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == depth(tiny_sam)
    for softmax in softmaxes:
        add = by_output[softmax.input[0]]
        assert add.op_type == "Add"
        assert [len(dims[x]) for x in add.input] == [4, 4]
        logits, bias = (by_output[x] for x in add.input)
        if logits.op_type != "MatMul":
            logits, bias = bias, logits
        assert logits.op_type == "MatMul"
        scaled_q = by_output[logits.input[0]]
        assert scaled_q.op_type == "Mul", "the scale must be applied to q before the first MatMul"
        assert any(
            x in initializers and onnx.numpy_helper.to_array(initializers[x]).size == 1 for x in scaled_q.input
        ), "q must be multiplied by a scalar constant"
        consumers = [n for n in model.graph.node if softmax.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["MatMul"]
        bias_path = _ancestors(model, bias.output[0], stop={"Einsum", "MatMul"})
        assert all(len(dims[out]) <= 4 for n in bias_path for out in n.output if out in dims)


def test_onnx_attention_structure(tiny_sam, graphs):
    model = onnx.load(str(graphs["onnx-attention"]))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 23
    dims = shapes(model)
    nodes = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(nodes) == depth(tiny_sam)
    assert not [n for n in model.graph.node if n.op_type == "Softmax"]
    head_dim = tiny_sam.image_encoder.blocks[0].attn.rel_pos_h.shape[1]
    for node in nodes:
        assert len(node.input) == 4, "q, k, v and the additive bias mask"
        assert [len(dims[x]) for x in node.input] == [4, 4, 4, 4]
        scale = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["scale"]
        assert scale == pytest.approx(head_dim**-0.5)


def test_plugin_structure(tiny_sam, graphs):
    """One plugin node per encoder block, TensorRT importer attributes, no attention left around it."""
    model = onnx.load(str(graphs["plugin"]))
    nodes = plugin_nodes(model)
    assert len(nodes) == depth(tiny_sam)
    assert not [n for n in model.graph.node if n.op_type in ("Softmax", "Attention")]
    assert {(o.domain, o.version) for o in model.opset_import} >= {(PLUGIN_DOMAIN, 1)}
    dims = shapes(model)
    head_dim = tiny_sam.image_encoder.blocks[0].attn.rel_pos_h.shape[1]
    grids = []
    for node in nodes:
        attrs = plugin_attributes(node)
        assert node.op_type == PLUGIN_NAME and node.domain == PLUGIN_NAMESPACE
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode()
        assert attrs["aot"] == 1 and attrs["head_dim"] == head_dim
        assert attrs["scale"] == pytest.approx(head_dim**-0.5)
        assert [a.name for a in node.attribute][:4] == ["grid_h", "grid_w", "head_dim", "scale"]
        h, w = attrs["grid_h"], attrs["grid_w"]
        q, k, v, rel_h, rel_w = (dims[x] for x in node.input)
        assert q == k == v and q[1:] == [h * w, head_dim]
        assert rel_h == q[:2] + [h] and rel_w == q[:2] + [w]
        grids.append((h, w))
    blocks = tiny_sam.image_encoder.blocks
    assert grids == [(b.window, b.window) if b.window else (64, 64) for b in blocks]


def test_attention_mode_checks(tiny_sam, tmp_path):
    with pytest.raises(SamExportError, match="opset >= 23"):
        export_encoder(tiny_sam, tmp_path / "e.onnx", opset=18, attention="onnx-attention")
    with pytest.raises(SamExportError, match="valid modes: plain, fused-pattern, onnx-attention, plugin"):
        export_encoder(tiny_sam, tmp_path / "e.onnx", attention="flash")  # type: ignore[arg-type]


# --- TensorRT-RTX (parses and builds without a GPU) ----------------------------------------------


def rtx_build(path, tmp_path):
    from samexport.engines.builder import BuildConfig, build_engine

    return build_engine(path, tmp_path / "encoder.plan", BuildConfig(workspace_bytes=1 << 30), flavour="tensorrt_rtx")


@pytest.fixture(scope="module")
def fp16_graphs(graphs, tmp_path_factory) -> dict:
    from samexport.precision.fp16 import convert_to_fp16

    folder = tmp_path_factory.mktemp("attention-fp16")
    return {mode: convert_to_fp16(path, folder / path.name) for mode, path in graphs.items()}


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_builds_fused_pattern(graphs, fp16_graphs, precision, tmp_path, caplog):
    """The fused-pattern encoder builds; RTX's builder reports each MatMul-Softmax-MatMul chain as
    a self-attention pattern (whether a fused kernel is picked can only be seen on a GPU)."""
    path = {"fp32": graphs, "fp16": fp16_graphs}[precision]["fused-pattern"]
    with caplog.at_level(logging.DEBUG, logger="samexport.engines.builder"):
        info = rtx_build(path, tmp_path)
    assert info.plan_bytes > 0
    found = set(re.findall(r"Found (\S+) to be part of self-attention pattern", caplog.text))
    assert sum(name.startswith("node_softmax") for name in found) == 2


@needs_rtx
def test_rtx_builds_onnx_attention_fp16(fp16_graphs, tmp_path):
    assert rtx_build(fp16_graphs["onnx-attention"], tmp_path).plan_bytes > 0


@needs_rtx
def test_rtx_onnx_attention_fp32(graphs, tmp_path):
    """RTX 1.7 parses opset-23 Attention into IAttention but has no fused FP32 attention kernel and
    the parser does not mark the layer decomposable, so the FP32 build fails (FP16 builds:
    test_rtx_builds_onnx_attention_fp16), with TensorRT's reason in the error. The FP32 attention
    form (samexport.precision.attention_fp32, engines --fallback) exists for this; a release that
    builds it fails here, and the advice in samexport.engines.trt_api is due for a look."""
    with pytest.raises(SamExportError, match="Attention operation was not supported by a dedicated kernel"):
        rtx_build(graphs["onnx-attention"], tmp_path)


@needs_rtx
def test_rtx_parser_routes_plugin_nodes_to_the_plugin_registry(graphs, tmp_path):
    """Without the plugin registered (RTX has no tensorrt.plugin), the parser looks the node up as a
    plugin and reports it missing: the node is recognised as a plugin, not an unknown op."""
    with pytest.raises(SamExportError) as info:
        rtx_build(graphs["plugin"], tmp_path)
    message = str(info.value)
    assert message.count(f"operator: {PLUGIN_NAME} ") == 2 and "Plugin not found" in message


# --- TensorRT plugin: kernel compile (CPU) and registration --------------------------------------


@pytest.mark.parametrize("target", ["sm_80", "sm_87", "sm_90"])
@pytest.mark.parametrize(
    ("grid_hw", "head_dim", "dtype"),
    [((14, 14), 64, "fp16"), ((64, 64), 80, "fp16"), ((14, 14), 80, "fp32")],
    ids=["window-d64-fp16", "global-d80-fp16", "window-d80-fp32"],
)
def test_plugin_kernel_entry_takes_six_pointers(target, grid_hw, head_dim, dtype):
    """The AOT plugin launches (inputs..., outputs...) with no scalars: the entry has 6 pointer params."""
    pytest.importorskip("triton")
    from samexport.plugins.attention_kernel import compile_kernel

    kernel = compile_kernel(target, grid_hw=grid_hw, head_dim=head_dim, dtype=dtype, scale=head_dim**-0.5)
    header = re.search(rf"\.entry {kernel.name}\((.*?)\)", kernel.ptx, re.DOTALL).group(1)
    params = [p for p in header.split(",") if p.strip()]
    assert len(params) == 6 and all(".u64 .ptr" in p for p in params)
    assert kernel.shared_mem <= 48 * 1024
    assert kernel.threads in (128, 256) and kernel.block_m in (32, 64, 128)


def test_plugin_version_rules():
    from samexport.engines.trt_api import supports
    from samexport.plugins.tensorrt_plugin import ptx_version_for_driver

    assert not supports("10.3.0.30", "attention plugin")  # JetPack 6
    assert not supports("10.8.0.43", "attention plugin")  # tensorrt.plugin without aot_impl
    assert all(supports(v, "attention plugin") for v in ("10.9.0.34", "10.13.3.9", "11.0.0"))
    assert ptx_version_for_driver(12020) == 82  # JetPack 6.0
    assert ptx_version_for_driver(12060) == 85
    assert ptx_version_for_driver(13000) is None
    with pytest.raises(SamExportError):
        ptx_version_for_driver(11080)


def test_register_without_tensorrt_names_the_extra():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    from samexport.plugins.tensorrt_plugin import register_tensorrt_plugin

    with pytest.raises(MissingExtraError, match="samexport\\[tensorrt\\]"):
        register_tensorrt_plugin()


def test_register_refuses_old_tensorrt(monkeypatch):
    import types

    from samexport.plugins import tensorrt_plugin

    old_tensorrt = types.SimpleNamespace(__version__="10.3.0.30")
    monkeypatch.setattr(tensorrt_plugin, "load_tensorrt", lambda flavour="tensorrt": old_tensorrt)
    monkeypatch.setattr(tensorrt_plugin, "_registered", False)
    with pytest.raises(SamExportError, match="needs TensorRT >= 10.9; this is TensorRT 10.3.0.30; .*fused-pattern"):
        tensorrt_plugin.register_tensorrt_plugin()


# --- GPU -----------------------------------------------------------------------------------------


def gpu_skip_reason() -> str | None:
    from samexport.engines import tensorrt_availability

    availability = tensorrt_availability("tensorrt")
    if not availability:
        return availability.reason
    from samexport.engines.trt_api import supports

    if not supports(availability.tensorrt_version, "attention plugin"):
        return f"TensorRT {availability.tensorrt_version} has no Python plugin API (needs >= 10.9)"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_plugin_engine_matches_fused_pattern_engine(graphs, fp16_graphs, image_and_reference, precision, tmp_path):
    """Plugin engine vs fused-pattern engine vs torch: accuracy and latency (tiny variant)."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import time

    from support import run_engine

    from samexport.engines.builder import BuildConfig, build_engine
    from samexport.plugins.tensorrt_plugin import register_tensorrt_plugin

    register_tensorrt_plugin()
    image, reference = image_and_reference
    source = {"fp32": graphs, "fp16": fp16_graphs}[precision]
    results = {}
    for mode in ("plugin", "fused-pattern"):
        plan = tmp_path / f"{mode}.plan"
        build_engine(source[mode], plan, BuildConfig())
        run_engine(plan, {C.IMAGE.name: image})  # warm-up
        start = time.perf_counter()
        out = run_engine(plan, {C.IMAGE.name: image})[C.IMAGE_EMBEDDINGS.name]
        results[mode] = (out, time.perf_counter() - start)
    tolerance = {"fp32": 1e-4, "fp16": 5e-3}[precision]  # relative to the embedding's absmax
    for mode, (out, seconds) in results.items():
        error = np.abs(out - reference).max() / np.abs(reference).max()
        print(f"{precision} {mode}: rel error {error:.2e}, {seconds * 1e3:.1f} ms (incl. copies)")
        assert error <= tolerance, mode
