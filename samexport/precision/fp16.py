"""fp32 ONNX -> strongly typed FP16 ONNX with FP32 islands around overflow-prone ops.

TensorRT 11 has no FP16 builder flag: precision lives in the graph. This module rewrites an fp32
graph so that weights and activations are FP16, except:

- nodes whose op type is in ``fp32_ops`` (LayerNormalization, Softmax, reductions, Pow, Sqrt, Exp,
  Sin/Cos, ...) run in FP32;
- decomposed normalisations, as the dynamo exporter emits ``LayerNorm2d``
  (``ReduceMean -> Sub -> Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div``), run in FP32 from the
  ``Sub`` to the ``Div`` inclusive: ``(x - mean)**2`` overflows FP16 long before ``x`` does;
- arithmetic fed only by graph inputs and weights that leads into an island stays FP32 with it:
  the prompt encoder's ``(coords + 0.5) / 1024 * 2 - 1 @ gaussian * 2pi`` before ``Sin``/``Cos``
  (FP16 has a resolution of 1 pixel at 1024, and the phases reach tens of radians);
- graph inputs and outputs keep their fp32 types, so the runtime API does not change.

A ``Cast`` is inserted wherever a tensor crosses between the two precisions (one per tensor and
direction); an initializer read in both precisions is stored twice. ``Constant`` nodes holding
floats become initializers. The result is checked with strict ONNX type inference.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samexport.precision import DEFAULT_FP32_OPS

log = logging.getLogger(__name__)

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

# Inputs that keep their type whatever precision the node runs in (index by op type).
_FIXED_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# Ops that accept any input type: never cast their inputs.
_TYPE_AGNOSTIC = {"Shape", "Size"}
# Ops a decomposed normalisation is made of, between its ``Sub`` and its ``Div``.
_NORM_BODY = {"Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div"}
# Ops an input-fed chain in front of an island may consist of.
_INPUT_FED = {"Add", "Sub", "Mul", "Div", "Neg", "MatMul"}
_FP16_MAX = float(np.finfo(np.float16).max)
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def save_retyped_graph(model: onnx.ModelProto, dst: Path) -> None:
    """Write a graph whose nodes were retyped (FP16, FP32 islands, upcast attention): the old
    shape annotations dropped and inferred again, strictly, with type checks (a mistyped edge is
    an error here, not in a runtime), then saved, with external data past 1 GiB of weights."""
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    external = sum(t.ByteSize() for t in model.graph.initializer) > _EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(dst), save_as_external_data=external, location=f"{dst.name}.data")


def convert_to_fp16(
    src: Path | str,
    dst: Path | str,
    *,
    fp32_ops: Collection[str] = DEFAULT_FP32_OPS,
    keep_decomposed_norms_fp32: bool = True,
) -> Path:
    """Write a strongly typed FP16 copy of the fp32 ONNX graph ``src`` to ``dst``.

    Args:
        src: fp32 ONNX file (external data next to it is loaded).
        dst: output path; weights go to external data only when they pass 1 GiB.
        fp32_ops: op types kept in FP32 (the islands); see :data:`DEFAULT_FP32_OPS`.
        keep_decomposed_norms_fp32: also keep ``Sub .. Div`` of decomposed normalisations in FP32.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.
    """
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)  # float weights are not needed for types
    onnx.load_external_data_for_model(model, str(src.parent))
    graph = model.graph
    _constants_to_initializers(graph)
    # One wrapper object per node, held for the whole rewrite, so ``id(node)`` is a stable key.
    graph_nodes = list(graph.node)

    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    fp32_nodes = {id(n) for n in graph_nodes if n.op_type in fp32_ops or _has_subgraph(n)}
    if keep_decomposed_norms_fp32:
        fp32_nodes |= _decomposed_norm_nodes(graph_nodes)
    fp32_nodes |= _input_fed_chains(graph, graph_nodes, fp32_nodes)

    def is_float(name: str) -> bool:
        if name and name not in types:
            raise ValueError(f"{src.name}: no type known for tensor {name!r} after shape inference")
        return bool(name) and types[name] == FLOAT

    def wanted(node: onnx.NodeProto, index: int) -> int | None:
        """Dtype ``node`` needs for its ``index``-th input, or None for 'leave as is'."""
        name = node.input[index]
        if not is_float(name) or node.op_type in _TYPE_AGNOSTIC:
            return None
        if id(node) in fp32_nodes or index in _FIXED_INPUTS.get(node.op_type, ()):
            return FLOAT
        return HALF

    half_nodes = [
        n for n in graph_nodes
        if id(n) not in fp32_nodes and any(is_float(x) for x in (*n.input, *n.output))
    ]
    half_ids = {id(n) for n in half_nodes}

    # Graph outputs produced in FP16 get a Cast back to FP32 under their original name.
    outputs = {o.name for o in graph.output}
    renamed = {}
    for node in half_nodes:
        for i, name in enumerate(node.output):
            if name in outputs and types[name] == FLOAT:
                renamed[name] = node.output[i] = f"{name}__fp16"
                types[renamed[name]] = FLOAT
    for node in graph_nodes:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]

    # New dtype of each activation: FP16 when an FP16 node produced a float.
    dtype = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    for node in graph_nodes:
        for name in node.output:
            dtype[name] = HALF if (id(node) in half_ids and types.get(name) == FLOAT) else types.get(name)
        if id(node) in half_ids:
            _retype_attributes(node)

    # Initializers: convert in place when only FP16 readers, store an FP16 copy when both.
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, set[int]] = {}
    for node in graph_nodes:
        for i, name in enumerate(node.input):
            if name in inits and (want := wanted(node, i)) is not None:
                readers.setdefault(name, set()).add(want)
    init_name = {}
    for name, wants in readers.items():
        tensor = inits[name]
        if tensor.data_type != FLOAT or wants == {FLOAT}:
            continue
        half = _to_half(numpy_helper.to_array(tensor), name)
        if wants == {HALF} and name not in outputs:
            tensor.CopyFrom(numpy_helper.from_array(half, name))
        else:
            init_name[name] = f"{name}__fp16"
            graph.initializer.append(numpy_helper.from_array(half, init_name[name]))
    for name, init in inits.items():
        dtype[name] = init.data_type

    # Re-emit the nodes, with a Cast in front of each input that arrives in the wrong precision.
    nodes, casts = [], {}
    for node in graph_nodes:
        for i, name in enumerate(node.input):
            want = wanted(node, i)
            if want is None:
                continue
            if name in inits:
                if want == HALF and name in init_name:
                    node.input[i] = init_name[name]
                continue
            if dtype[name] != want:
                key = (name, want)
                if key not in casts:
                    casts[key] = f"{name}__to_{'fp16' if want == HALF else 'fp32'}"
                    nodes.append(helper.make_node("Cast", [name], [casts[key]], name=casts[key], to=want))
                node.input[i] = casts[key]
        nodes.append(node)
    for name, half_name in renamed.items():
        nodes.append(helper.make_node("Cast", [half_name], [name], name=f"{name}__to_fp32", to=FLOAT))
    nodes = [_copy(n) for n in nodes]
    del graph_nodes, graph.node[:]
    graph.node.extend(nodes)

    save_retyped_graph(model, dst)
    return dst


def _decomposed_norm_nodes(nodes: list[onnx.NodeProto]) -> set[int]:
    """ids of ``Sub(x, ReduceMean(x)) .. Div`` chains: a normalisation written out op by op."""
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: set[int] = set()
    for sub in nodes:
        if sub.op_type != "Sub" or len(sub.input) != 2:
            continue
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        chain, stack = {id(sub)}, [sub]
        while stack:
            for out in stack.pop().output:
                for nxt in consumers.get(out, []):
                    if nxt.op_type in _NORM_BODY and id(nxt) not in chain:
                        chain.add(id(nxt))
                        if nxt.op_type != "Div":  # the Div ends the normalisation
                            stack.append(nxt)
        found |= chain
    return found


def _input_fed_chains(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], islands: set[int]) -> set[int]:
    """ids of arithmetic nodes feeding an island whose inputs are all graph inputs or weights."""
    producer = {out: n for n in nodes for out in n.output}
    leaves = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    memo: dict[int, bool] = {}

    def input_fed(node: onnx.NodeProto) -> bool:
        if id(node) not in memo:
            memo[id(node)] = node.op_type in _INPUT_FED and all(
                x in leaves or (x in producer and input_fed(producer[x])) for x in node.input if x
            )
        return memo[id(node)]

    stack = [producer[x] for n in nodes if id(n) in islands for x in n.input if x in producer]
    chain: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) not in islands and id(node) not in chain and input_fed(node):
            chain.add(id(node))
            stack.extend(producer[x] for x in node.input if x in producer)
    return chain


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn float ``Constant`` nodes into initializers so all weights are handled one way."""
    keep = []
    for node in graph.node:
        value = None
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value" and attr.t.data_type == FLOAT:
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_floats"):
                value = np.asarray(helper.get_attribute_value(attr), dtype=np.float32)
        if value is None:
            keep.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)


def _to_half(array: np.ndarray, name: str) -> np.ndarray:
    clipped = np.count_nonzero(np.abs(array) > _FP16_MAX)
    if clipped:
        log.warning("%s: %d values beyond the FP16 range clipped to +-%g", name, clipped, _FP16_MAX)
    return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Make an FP16 node whose output type comes from an attribute produce FP16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
