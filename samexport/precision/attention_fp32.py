"""FP16 encoder graph -> the same graph with each attention core in FP32 (the safe FP16 form).

TensorRT's fused FP16 attention is where the known SAM-family failures are (NVIDIA/TensorRT#4837:
a SAM-family ViT's top score 0.933 -> 0.045 in FP16, exact in FP32, fixed by breaking the fusion;
#4723: FP16 ViTs wrong on 10.3). TensorRT 11.3 documents the remedy: upcast query, key and value
to FP32 around the attention (``IAttention`` or the primitive graph) to get FP32 accumulation.
:func:`upcast_attention` writes that form: the projections (``qkv``, ``proj``) stay FP16 (or INT8
Q/DQ), and everything between them runs in FP32: ``q @ k^T``, the scale, the bias (SAM's decomposed
relative-position bias, TinyViT's bias table), the softmax and ``attn @ v``, with one ``Cast`` to
float after the projection that feeds the core and one ``Cast`` back to half in front of the
projection that reads it.

It works on the FP16 graph itself, with the ``onnx`` package only (no torch, no onnxscript), so
``samexport engines --fallback`` derives it on the device instead of the artifact carrying a second
encoder graph: for vit_b that second graph would be 185 MB (as big as the artifact's FP16
encoder.onnx; the whole artifact is 206 MB), while deriving it took 9.7 s (median of 3, on a
2-core VM under heavy load), small beside a TensorRT build (benchmarks/fp32_attention.py). The
weights it reads inside the core (the relative-position tables, the scale) are the FP16 graph's,
cast up: the same values the plain FP16 graph computes with.

How a core is found, per ``Softmax`` or ONNX ``Attention`` node (the anchor): grow a region over
float tensors, backwards and forwards, stopping at *boundaries*: a ``MatMul``/``Gemm`` with a 2-D
constant weight (a projection; also through ``DequantizeLinear``/``Cast`` of an initializer), the
``Add`` of its bias, ``QuantizeLinear``/``DequantizeLinear`` (INT8 Q/DQ stays with the projection
it quantizes, so ``DQ -> MatMul`` still fuses), graph inputs and constants. The relative-position
``Einsum``\\ s multiply by a 3-D table, so they are inside. Each region must hold exactly one
anchor; anything else (a region running into another block) is an error, never a guess.

An ONNX ``Attention`` node (``--attention onnx-attention``) is written out as its primitive graph
(``Mul(q, scale) -> MatMul(k^T) -> Add(mask) -> Softmax -> MatMul(v)``) in FP32: TensorRT's
importer builds ``IAttention`` from it, and TensorRT-RTX 1.7 has no FP32 kernel for that layer
(the build fails), while the primitive graph builds everywhere from 10.3 on. Plugin nodes (``--attention
plugin``) are refused: the plugin is samexport's own kernel, which already accumulates in FP32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samexport.errors import SamExportError
from samexport.precision.fp16 import save_retyped_graph

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FORM = "fp32-attention"  # the name ``samexport engines --fallback`` records for this form
_ANCHORS = {"Softmax", "Attention"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_STANDARD_DOMAINS = {"", "ai.onnx"}
# Attention attributes the primitive rewrite reproduces, with the values it supports.
_ATTENTION_DEFAULTS = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


@dataclass(frozen=True)
class UpcastReport:
    """What :func:`upcast_attention` changed.

    Attributes:
        cores: attention cores moved to FP32 (one per encoder block).
        fp32_nodes: nodes of those cores (after the rewrite of ``Attention`` nodes).
        casts_in: ``Cast`` to float inserted where an FP16 tensor enters a core.
        casts_out: ``Cast`` to half inserted where a core's result leaves it.
        attention_ops: ONNX ``Attention`` nodes written out as their primitive graph.
        seconds: wall time, load and save included.
    """

    cores: int
    fp32_nodes: int
    casts_in: int
    casts_out: int
    attention_ops: int
    seconds: float


def upcast_attention(src: Path | str, dst: Path | str) -> UpcastReport:
    """Write ``src`` (an FP16 or INT8-on-FP16 encoder graph) to ``dst`` with every attention core
    in FP32 between its FP16 projections.

    Raises:
        SamExportError: the graph has plugin or other custom nodes, no attention core in FP16
            (an FP32 graph: nothing to do), an attention core that cannot be delimited, or an
            ``Attention`` node with options the rewrite does not reproduce.
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in _STANDARD_DOMAINS})
    if custom:
        raise SamExportError(
            f"{src.name} holds custom nodes ({', '.join(custom)}): the FP32 attention form applies to "
            "plain, fused-pattern and onnx-attention encoders (the attention plugin already accumulates in FP32)"
        )
    model = onnx.shape_inference.infer_shapes(model)
    onnx.load_external_data_for_model(model, str(src.parent))
    graph = model.graph
    nodes = list(graph.node)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = _constant_tensors(graph, nodes)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info if v.type.tensor_type.HasField("shape")}
    ranks.update({t.name: len(t.dims) for t in graph.initializer})
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    boundary = {id(n) for n in nodes if _is_projection(n, producer, constants, ranks)}
    boundary |= {id(n) for n in nodes if n.op_type == "Add" and _adds_a_bias(n, producer, boundary, constants)}
    boundary |= {id(n) for n in nodes if n.op_type in _QDQ}

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) in (FLOAT, HALF)

    graph_outputs = {o.name for o in graph.output}
    cores: list[set[int]] = []
    in_a_core: set[int] = set()
    for anchor in (n for n in nodes if n.op_type in _ANCHORS):
        if id(anchor) in in_a_core:
            continue
        region, stack = {id(anchor)}, [anchor]
        while stack:
            node = stack.pop()
            near = [producer.get(x) for x in node.input if is_float(x) and x not in constants]
            near += [c for x in node.output if is_float(x) for c in consumers.get(x, [])]
            for other in near:
                if other is not None and id(other) not in boundary and id(other) not in region:
                    region.add(id(other))
                    stack.append(other)
        anchors = [n.name or n.op_type for n in nodes if id(n) in region and n.op_type in _ANCHORS]
        if len(anchors) != 1:
            raise SamExportError(
                f"{src.name}: cannot delimit the attention core around {anchor.name!r}: its region between "
                f"projections holds {len(anchors)} attention nodes ({', '.join(anchors[:4])})"
            )
        if any(out in graph_outputs for n in nodes if id(n) in region for out in n.output):
            raise SamExportError(f"{src.name}: the attention core around {anchor.name!r} ends in a graph output")
        cores.append(region)
        in_a_core |= region
    half_cores = [c for c in cores if any(types.get(x) == HALF for n in nodes if id(n) in c for x in n.output)]
    if not half_cores:
        raise SamExportError(
            f"{src.name} has no attention core in FP16 ({len(cores)} found, all FP32 already): the FP32 "
            "attention form is for fp16 and int8-on-fp16 encoders"
        )

    # Re-emit: Cast(float) on each half tensor entering a core, Cast(half) on each core result
    # read outside it, Casts inside a core dropped (they only moved the softmax island).
    rename: dict[str, str] = {}  # a core Cast's output -> its input (the Cast is dropped)
    cast_in: dict[str, str] = {}
    cast_out: dict[str, str] = {}
    emitted: list[onnx.NodeProto] = []
    for node in nodes:
        inside = id(node) in in_a_core
        for i, name in enumerate(node.input):
            name = rename.get(name, name)
            node.input[i] = name
            if inside and types.get(name) == HALF and not _produced_in(name, producer, in_a_core):
                if name not in cast_in:
                    cast_in[name] = f"{name}__attn_fp32"
                    emitted.append(helper.make_node("Cast", [name], [cast_in[name]], name=cast_in[name], to=FLOAT))
                node.input[i] = cast_in[name]
            elif not inside and name in cast_out:
                node.input[i] = cast_out[name]
        if inside and node.op_type == "Cast" and is_float(node.output[0]):
            if any(id(c) not in in_a_core for c in consumers.get(node.output[0], [])):
                raise SamExportError(f"{src.name}: {node.name!r} inside an attention core is read outside it")
            rename[node.output[0]] = node.input[0]
            continue
        if inside:
            _retype_attributes(node)
        emitted.append(node)
        if inside:
            for name in node.output:
                readers_outside = [c for c in consumers.get(name, []) if id(c) not in in_a_core]
                if types.get(name) == HALF and readers_outside:
                    cast_out[name] = f"{name}__attn_fp16"
                    emitted.append(helper.make_node("Cast", [name], [cast_out[name]], name=cast_out[name], to=HALF))

    attention_ops = 0
    final: list[onnx.NodeProto] = []
    for node in emitted:
        if node.op_type == "Attention" and id(node) in in_a_core:
            final.extend(_primitive_attention(node, src.name, graph))
            attention_ops += 1
        else:
            final.append(node)
    fp32_nodes = sum(1 for n in emitted if id(n) in in_a_core) + 4 * attention_ops
    del graph.node[:]
    graph.node.extend(final)
    save_retyped_graph(model, dst)
    return UpcastReport(
        cores=len(half_cores), fp32_nodes=fp32_nodes, casts_in=len(cast_in), casts_out=len(cast_out),
        attention_ops=attention_ops, seconds=round(time.perf_counter() - start, 3),
    )


def _constant_tensors(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Names of tensors computed from initializers alone (nodes are in topological order)."""
    constants = {t.name for t in graph.initializer}
    for node in nodes:
        if node.op_type == "Constant" or (node.input and all(not x or x in constants for x in node.input)):
            constants.update(node.output)
    return constants


def _is_projection(node, producer, constants, ranks) -> bool:
    """A MatMul/Gemm by a 2-D constant weight (a Linear layer), the weight possibly dequantized."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in constants:
        return False
    weight = node.input[1]
    while weight in producer and producer[weight].op_type in ("DequantizeLinear", "Cast", "Transpose"):
        weight = producer[weight].input[0]
    return ranks.get(weight) == 2


def _adds_a_bias(node, producer, boundary, constants) -> bool:
    """``Add(projection output, constant)``: the bias of a Linear layer belongs to it."""
    a, b = node.input
    for x, y in ((a, b), (b, a)):
        if x in producer and id(producer[x]) in boundary and y in constants:
            return True
    return False


def _produced_in(name: str, producer, region: set[int]) -> bool:
    return name in producer and id(producer[name]) in region


def _retype_attributes(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == HALF:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))


def _primitive_attention(node: onnx.NodeProto, source: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """ONNX ``Attention`` (4-D q, k, v, an additive float mask, ``scale``) as its primitive graph."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unsupported = {k: v for k, v in attrs.items() if k != "scale" and _ATTENTION_DEFAULTS.get(k, object()) != v}
    if unsupported or len(node.output) != 1 or not 3 <= len(node.input) <= 4:
        raise SamExportError(
            f"{source}: Attention node {node.name!r} has options the FP32 attention form does not "
            f"reproduce ({unsupported or f'{len(node.input)} inputs, {len(node.output)} outputs'})"
        )
    q, k, v, *mask = node.input
    base = node.name or node.output[0]
    out = node.output[0]
    scale_name = f"{base}__scale"
    made = [
        helper.make_node("Mul", [q, scale_name], [f"{base}__q_scaled"], name=f"{base}__q_scaled"),
        helper.make_node("Transpose", [k], [f"{base}__k_t"], name=f"{base}__k_t", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [f"{base}__q_scaled", f"{base}__k_t"], [f"{base}__logits"], name=f"{base}__logits"),
    ]
    logits = f"{base}__logits"
    if mask and mask[0]:
        made.append(helper.make_node("Add", [logits, mask[0]], [f"{base}__biased"], name=f"{base}__biased"))
        logits = f"{base}__biased"
    made += [
        helper.make_node("Softmax", [logits], [f"{base}__probs"], name=f"{base}__probs", axis=-1),
        helper.make_node("MatMul", [f"{base}__probs", v], [out], name=f"{base}__out"),
    ]
    if "scale" not in attrs:
        raise SamExportError(f"{source}: Attention node {node.name!r} has no scale attribute (samexport always writes one)")
    graph.initializer.append(numpy_helper.from_array(np.asarray(attrs["scale"], dtype=np.float32), scale_name))
    return made
