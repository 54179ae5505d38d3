"""The attention plugin through NVIDIA's real ``tensorrt.plugin`` (10.9, 10.16, 11.4), without a GPU.

``register_tensorrt_plugin()`` runs against the pure-Python plugin package of each release's
``tensorrt-cu12-bindings`` wheel (see ``tests/support/trt_bindings.py``); then the test makes the calls
TensorRT's builder makes for one plugin node of a vit_b encoder: create the plugin from fields
typed as the creator declares them (one-element 1-D arrays, as the ONNX parser passes node
attributes), output types and shapes, format combinations, and the ahead-of-time kernel with its
launch parameters. The PTX must assemble with ``ptxas`` for Jetson Orin (sm_87) and Hopper (sm_90).
"""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest
from support import trt_bindings

from samexport.constants import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from samexport.plugins.onnx_node import PLUGIN_ATTRIBUTES

pytest.importorskip("triton")
# Every test runs on NVIDIA's bindings, downloaded from the package index on first use (cached).
pytestmark = pytest.mark.network

VIT_B_HEADS, VIT_B_HEAD_DIM = 12, 64
# vit_b at 1024x1024: windowed blocks see 25 windows (64x64 grid padded to 70x70) of 14x14 tokens.
BLOCKS = {
    "window-14x14": {"grid": (14, 14), "batch_heads": 25 * VIT_B_HEADS},
    "global-64x64": {"grid": (64, 64), "batch_heads": VIT_B_HEADS},
}
TARGETS = ("sm_87", "sm_90")


@pytest.fixture(params=trt_bindings.PLUGIN_RELEASES)
def trt(request, monkeypatch):
    """The stand-in ``tensorrt`` of one release with NVIDIA's real ``tensorrt.plugin`` under it."""
    try:
        trt_bindings.bindings_dir(request.param)
    except trt_bindings.BindingsUnavailable as exc:
        pytest.skip(str(exc))
    from samexport.plugins import tensorrt_plugin

    monkeypatch.setattr(tensorrt_plugin, "_registered", False)
    with trt_bindings.fake_tensorrt(request.param) as module:
        yield module


def _register(trt, monkeypatch, target: str):
    from samexport.plugins import tensorrt_plugin

    monkeypatch.setattr(tensorrt_plugin, "_building_target", lambda: (target, None))
    tensorrt_plugin.register_tensorrt_plugin()
    creator = trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    assert creator is not None, "no creator registered under the ONNX node's name, version and namespace"
    return creator


_LAUNCH_FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")
_FIELD_DTYPES = {"INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32, "FLOAT64": np.float64}


def _fields(trt, creator, attributes: dict):
    """The node's attributes as the ONNX parser hands them over: each converted to the type the
    creator declares for it, as a one-element 1-D array."""
    declared = {f.name: f.type.name for f in creator.field_names}
    assert list(declared) == list(PLUGIN_ATTRIBUTES)
    fields = []
    for name in PLUGIN_ATTRIBUTES:
        data = np.array([attributes[name]], dtype=_FIELD_DTYPES[declared[name]])
        fields.append(trt.PluginField(name, data, getattr(trt.PluginFieldType, declared[name])))
    return trt.PluginFieldCollection(fields)


def _desc(trt, dtype, dims):
    desc = trt.PluginTensorDesc(dtype, trt.TensorFormat.LINEAR, dims)
    return trt.DynamicPluginTensorDesc(desc, dims, dims, dims)


def _build_node(trt, creator, block: str, dtype_name: str = "HALF"):
    """Everything TensorRT's builder asks an AOT plugin for one node, in the builder's order."""
    (h, w), bh = BLOCKS[block]["grid"], BLOCKS[block]["batch_heads"]
    n, d = h * w, VIT_B_HEAD_DIM
    attributes = {"grid_h": h, "grid_w": w, "head_dim": d, "scale": d**-0.5}
    plugin = creator.create_plugin(
        PLUGIN_NAME, PLUGIN_NAMESPACE, _fields(trt, creator, attributes), trt.TensorRTPhase.BUILD,
        trt.QuickPluginCreationRequest.STRICT_AOT,
    )  # fmt: skip
    assert hasattr(plugin, "get_kernel"), "an ahead-of-time plugin was not created"
    dtype = getattr(trt.DataType, dtype_name)
    shapes = [(bh, n, d)] * 3 + [(bh, n, h), (bh, n, w)]

    out_types = plugin.get_output_data_types([dtype] * 5, [3] * 5)
    builder = trt_bindings.ExprBuilder()
    batch_heads = trt.IDimensionExpr(None, "batch_heads")  # the one dynamic axis
    inputs = [[batch_heads] + [builder.constant(s) for s in shape[1:]] for shape in shapes]
    out_shapes = plugin.get_output_shapes(inputs, [], builder)

    in_out = [_desc(trt, dtype, s) for s in shapes] + [_desc(trt, dtype, (bh, n, d))]
    formats = plugin.get_supported_format_combinations(in_out, 5)
    plugin.configure_plugin(in_out[:5], in_out[5:])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(0)

    class SymExprSetter:
        def __init__(self):
            self.nbSymExprs, self.exprs = None, {}

        def __setitem__(self, index, expr):
            self.exprs[index] = expr

    launch = type("KernelLaunchParams", (), {})()
    extra = SymExprSetter()
    plugin.get_launch_params(inputs, in_out, 5, launch, extra, builder)
    name, ptx = plugin.get_kernel([x.desc for x in in_out[:5]], [in_out[5].desc])
    return {
        "out_types": out_types,
        "out_shapes": out_shapes,
        "formats": formats,
        "tactics": tactics,
        "launch": {k: getattr(launch, k).expr for k in _LAUNCH_FIELDS},
        "extra": extra,
        "name": name,
        "ptx": ptx,
        "batch_heads": batch_heads,
    }


def test_register(trt, monkeypatch):
    """Registration passes NVIDIA's validators; fields are declared as 1-D arrays TensorRT can fill."""
    creator = _register(trt, monkeypatch, "sm_87")
    declared = {f.name: f.type for f in creator.field_names}
    assert declared == {
        "grid_h": trt.PluginFieldType.INT32,
        "grid_w": trt.PluginFieldType.INT32,
        "head_dim": trt.PluginFieldType.INT32,
        "scale": trt.PluginFieldType.FLOAT32,
    }
    import tensorrt.plugin as trtp

    definition = trtp.op.samexport.SamRelPosAttention
    assert definition.aot_impl_func is not None and definition.impl_func is None  # AOT only: no Python at inference
    assert definition.num_outputs == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("block", BLOCKS)
def test_aot_build_of_one_node(trt, monkeypatch, tmp_path, block, target):
    from samexport.plugins.attention_kernel import compile_kernel

    creator = _register(trt, monkeypatch, target)
    node = _build_node(trt, creator, block)
    h, w = BLOCKS[block]["grid"]
    n, d = h * w, VIT_B_HEAD_DIM

    assert node["out_types"] == [trt.DataType.HALF]
    (out_shape,) = node["out_shapes"]
    assert out_shape[0] is node["batch_heads"]  # the dynamic batch x heads axis passes through
    assert [e.get_constant_value() for e in out_shape[1:]] == [n, d]
    # One combination per dtype, all six tensors alike, linear.
    combos = [tuple((f.type, f.format) for f in node["formats"][i : i + 6]) for i in range(0, len(node["formats"]), 6)]
    linear = trt.TensorFormat.LINEAR
    expected = [((trt.DataType.HALF, linear),) * 6, ((trt.DataType.FLOAT, linear),) * 6]
    assert sorted(combos, key=str) == sorted(expected, key=str)
    assert node["tactics"] == []

    kernel = compile_kernel(target, grid_hw=(h, w), head_dim=d, dtype="fp16", scale=d**-0.5)
    launch = node["launch"]
    assert launch["grid_x"].get_constant_value() == math.ceil(n / kernel.block_m)
    assert launch["grid_y"] is node["batch_heads"]  # the launch grid's y axis is the symbolic batch x heads
    assert launch["grid_z"].get_constant_value() == 1
    assert launch["block_x"].get_constant_value() == kernel.threads
    assert (launch["block_y"].get_constant_value(), launch["block_z"].get_constant_value()) == (1, 1)
    assert launch["shared_mem"].get_constant_value() == kernel.shared_mem <= 48 * 1024
    assert node["extra"].nbSymExprs == 0 and not node["extra"].exprs  # no scalar kernel arguments

    ptx = node["ptx"].decode()
    assert node["name"] == kernel.name
    header = re.search(rf"\.entry {re.escape(kernel.name)}\((.*?)\)", ptx, re.DOTALL)
    params = [p for p in header.group(1).split(",") if p.strip()]
    assert len(params) == 6 and all(".u64 .ptr" in p for p in params)  # (q, k, v, rel_h, rel_w, out)

    ptxas = trt_bindings.ptxas()
    if ptxas is None:
        pytest.skip("no ptxas (Triton's bundled one is missing)")
    path = tmp_path / "kernel.ptx"
    path.write_text(ptx)
    arch = target + ("a" if target == "sm_90" else "")  # Triton emits sm_90a for Hopper
    result = subprocess.run(
        [ptxas, "--gpu-name", arch, str(path), "-o", str(tmp_path / "kernel.cubin")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_aot_fp32_node(trt, monkeypatch):
    """FP32 graphs get the IEEE-precision kernel and an FP32 output."""
    creator = _register(trt, monkeypatch, "sm_87")
    node = _build_node(trt, creator, "window-14x14", "FLOAT")
    assert node["out_types"] == [trt.DataType.FLOAT]
    assert ".f32" in node["ptx"].decode() and "mma.sync.aligned.m16n8k16" not in node["ptx"].decode()


def test_attributes_disagreeing_with_shapes_are_refused(trt, monkeypatch):
    from samexport.errors import SamExportError

    creator = _register(trt, monkeypatch, "sm_87")
    fields = _fields(trt, creator, {"grid_h": 16, "grid_w": 16, "head_dim": 64, "scale": 0.125})
    aot = trt.QuickPluginCreationRequest.STRICT_AOT
    plugin = creator.create_plugin(PLUGIN_NAME, PLUGIN_NAMESPACE, fields, trt.TensorRTPhase.BUILD, aot)
    builder = trt_bindings.ExprBuilder()
    shapes = [(12, 196, 64)] * 3 + [(12, 196, 14)] * 2
    inputs = [[builder.constant(s) for s in shape] for shape in shapes]
    plugin.get_output_data_types([trt.DataType.HALF] * 5, [3] * 5)
    plugin.get_output_shapes(inputs, [], builder)
    in_out = [_desc(trt, trt.DataType.HALF, s) for s in shapes] + [_desc(trt, trt.DataType.HALF, shapes[0])]
    plugin.get_supported_format_combinations(in_out, 5)
    plugin.configure_plugin(in_out[:5], in_out[5:])
    plugin.set_tactic(0)
    launch = type("KernelLaunchParams", (), {})()
    with pytest.raises(SamExportError, match="axis 1 is 196, attributes say 256"):
        plugin.get_launch_params(inputs, in_out, 5, launch, type("Setter", (), {})(), builder)
