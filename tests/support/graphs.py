"""ONNX graph structure for the precision, attention and engines tests: tensor types after shape
inference, projections against attention products, FP16 islands and INT8 Q/DQ placement."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    found = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    found.update({t.name: t.data_type for t in g.initializer})
    return found


def constants_of(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.input and all(x in names for x in node.input if x):
            names.update(node.output)
    return names


def classify_matmuls(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(projections: a constant weight, attention products: two activations)."""
    constants = constants_of(model)
    projections = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    products = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in constants and n.input[0] not in constants]
    return projections, products


def _islands(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of a converted graph that compute in FP32 (float inputs, no FP16 input)."""
    from samexport.precision.fp16 import _TYPE_AGNOSTIC

    float32, half = TensorProto.FLOAT, TensorProto.FLOAT16
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.value_info)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return [
        n for n in model.graph.node
        if n.op_type != "Cast" and n.op_type not in _TYPE_AGNOSTIC and any(types.get(x) == float32 for x in n.input)
        and not any(types.get(x) == half for x in n.input)
    ]


def fp32_compute_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in _islands(model))


def assert_fp16_structure(model: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
    """Boundaries fp32, weights fp16, islands exactly the overflow-prone ops."""
    types = value_types(model)
    for tensor in (*model.graph.input, *model.graph.output):
        assert tensor.type.tensor_type.elem_type == TensorProto.FLOAT, tensor.name
    assert [i.name for i in model.graph.input] == [i.name for i in fp32.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in fp32.graph.output]
    islands = fp32_compute_ops(model)
    original = Counter(n.op_type for n in fp32.graph.node)
    for op in ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"):
        assert islands[op] == original[op], (op, islands[op], original[op])
    # The decomposed LayerNorm2d (neck, mask upscaling): Sub .. Div in FP32 as well, plus in the
    # decoder the prompt encoder's coordinate normalisation in front of Sin/Cos.
    prompt_chain = islands["Sin"]
    assert islands["Sub"] == islands["Pow"] + prompt_chain and islands["Div"] == islands["Pow"] + prompt_chain
    heavy = {"MatMul", "Conv", "Gemm", "ConvTranspose", "Einsum", "Erf"}
    island_nodes = {n.name for n in _islands(model)}  # protobuf wrappers have no stable id()
    for node in model.graph.node:
        if node.op_type not in heavy:
            continue
        if node.name in island_nodes:  # only the prompt encoder's 2x128 gaussian projection
            assert node.op_type == "MatMul" and node.input[1].endswith("positional_encoding_gaussian_matrix")
        else:
            assert all(types[x] == TensorProto.FLOAT16 for x in node.input if x), node.name
    big_fp32 = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 4096]
    assert not big_fp32, f"large fp32 weights left: {big_fp32[:5]}"


def assert_int8_structure(model: onnx.ModelProto) -> None:
    """Q/DQ only in front of MatMul/Conv/Gemm, zero points 0, per-channel int8 weights."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert dq and q
    for node in dq:
        assert {c.op_type for c in consumers[node.output[0]]} <= {"MatMul", "Conv", "Gemm"}, node.name
    for node in (*q, *dq):
        zero_point = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Transpose", "Reshape", "Add"):
            assert all(producer[x].op_type != "DequantizeLinear" for x in node.input if x in producer), node.name
    weights = [n for n in dq if n.input[0] in inits]
    assert weights
    for node in weights:
        weight, scale = inits[node.input[0]], inits[node.input[1]]
        assert weight.data_type == TensorProto.INT8
        assert len(scale.dims) == 1 and scale.dims[0] > 1, f"{node.name}: not per-channel"
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert weight.dims[axis] == scale.dims[0]
    # Attention products (two activations) stay in float by default.
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        second = producer.get(node.input[1])
        if second is not None and second.op_type != "DequantizeLinear":
            assert producer[node.input[0]].op_type != "DequantizeLinear", node.name
