"""The fused attention as one ONNX node that TensorRT's ONNX parser imports as a plugin.

TensorRT's parser imports a node it has no built-in importer for as a plugin when a plugin creator
is registered under the node's op type (the plugin name), its ``plugin_version`` attribute (default
"1") and its ``plugin_namespace`` attribute (default ""; TensorRT >= 10.10 also reads the namespace
from the node's domain). A bool ``aot`` attribute asks for the plugin's ahead-of-time
implementation (compiled kernel baked into the engine, no Python at inference). The parser strips
those three; every other attribute is handed to the plugin as a field.

The node, in domain ``samexport`` (so the graph stays valid ONNX)::

    SamRelPosAttention(q, k, v, rel_h, rel_w) -> out
        q, k, v   BHxNxD   float32 or float16, N = grid_h * grid_w tokens in row-major grid order
        rel_h     BHxNxH   q . R_h per query and key row (unscaled q), H = grid_h
        rel_w     BHxNxW   q . R_w per query and key column, W = grid_w
        out       BHxNxD   softmax(q k^T * scale + rel_h[.., m // W] + rel_w[.., m % W]) v
        attributes: grid_h, grid_w, head_dim (int), scale (float),
                    plugin_version="1", plugin_namespace="samexport", aot=1

The boundary is the attention core: the qkv projection, the two small rel-pos einsums and the
output projection stay ordinary ONNX ops that TensorRT fuses well; the node replaces exactly the
part that would otherwise materialise a BHxNxN bias.

This module defines the torch custom op that carries the node through ``torch.onnx.export`` (its
eager implementation is the pure-torch reference) and :func:`inline_reference`, which replaces
every plugin node with the reference math in plain ONNX ops so ONNX Runtime can check the graph.
"""

from __future__ import annotations

import onnx
import torch
from onnx import helper

# The names live in the torch-free constants module so the TensorRT plugin registers without torch.
from samexport.constants import PLUGIN_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from samexport.plugins.attention_reference import reference_rel_pos_attention

# The plugin's own attributes (TensorRT plugin fields), in the order the node carries them.
PLUGIN_ATTRIBUTES = ("grid_h", "grid_w", "head_dim", "scale")
# Attributes the TensorRT parser consumes itself.
PARSER_ATTRIBUTES = ("plugin_version", "plugin_namespace", "aot")


@torch.library.custom_op("samexport::rel_pos_attention", mutates_args=())
def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    grid_h: int,
    grid_w: int,
    scale: float,
) -> torch.Tensor:
    """The plugin node as a torch op: BHxNxD q, k, v, BHxNxH rel_h, BHxNxW rel_w -> BHxNxD.

    Eager implementation: :func:`reference_rel_pos_attention` op for op in the inputs' dtype, so a
    model using it computes exactly what the plain ``Attention`` does.
    """
    out = reference_rel_pos_attention(
        q, k, v, rel_h, rel_w, grid_hw=(grid_h, grid_w), scale=scale, compute_dtype=None
    )
    return out.contiguous()


@rel_pos_attention.register_fake
def _(q, k, v, rel_h, rel_w, grid_h, grid_w, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: the op -> the plugin node."""
    from onnxscript import values

    # The exporter's tracer needs a schema; this one describes the node without registering it.
    node = values.Op(values.Opset(PLUGIN_DOMAIN, 1), PLUGIN_NAME, _schema())

    def translate(q, k, v, rel_h, rel_w, grid_h: int, grid_w: int, scale: float):
        out = node(
            q, k, v, rel_h, rel_w,
            grid_h=grid_h,
            grid_w=grid_w,
            head_dim=q.shape[-1],
            scale=scale,
            plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE,
            aot=1,
        )  # fmt: skip
        # Write the attributes in PLUGIN_ATTRIBUTES order: TensorRT's Python plugin framework
        # hands plugin fields to the ahead-of-time implementation in the node's order.
        attributes = out.producer().attributes
        ordered = {name: attributes[name] for name in (*PLUGIN_ATTRIBUTES, *PARSER_ATTRIBUTES)}
        attributes.clear()
        attributes.update(ordered)
        return out

    return {torch.ops.samexport.rel_pos_attention.default: translate}


def _schema() -> onnx.defs.OpSchema:
    """The plugin node's ONNX schema (inputs, output, attributes), for the exporter's tracer."""
    from onnx.defs import OpSchema

    tensor = OpSchema.FormalParameter
    attr = OpSchema.Attribute
    kind = OpSchema.AttrType
    return OpSchema(
        PLUGIN_NAME,
        PLUGIN_DOMAIN,
        1,
        inputs=[tensor(name, "T") for name in ("q", "k", "v", "rel_h", "rel_w")],
        outputs=[tensor("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "q, k, v, rel_h, rel_w, out")],
        attributes=[
            attr("grid_h", kind.INT, "token grid height H"),
            attr("grid_w", kind.INT, "token grid width W"),
            attr("head_dim", kind.INT, "head size D"),
            attr("scale", kind.FLOAT, "softmax scale"),
            attr("plugin_version", kind.STRING, "TensorRT plugin version"),
            attr("plugin_namespace", kind.STRING, "TensorRT plugin namespace"),
            attr("aot", kind.INT, "1: TensorRT uses the ahead-of-time implementation"),
        ],
    )


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The plugin nodes of a graph (top level)."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_NAME and n.domain == PLUGIN_DOMAIN]


def plugin_attributes(node: onnx.NodeProto) -> dict:
    """A plugin node's attributes as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def inline_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every plugin node replaced by the reference math in plain ONNX ops.

    Per node: ``Softmax(MatMul(q * scale, k^T) + bias) @ v`` with the BHxNxN bias formed by
    broadcasting ``rel_h`` (reshaped BHxNxHx1) against ``rel_w`` (BHxNx1xW): the ONNX-op form of
    ``models.image_encoder.expand_rel_pos_bias``. Run the result in
    ONNX Runtime to check a plugin graph numerically on CPU.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    new_nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type != PLUGIN_NAME or node.domain != PLUGIN_DOMAIN:
            new_nodes.append(node)
            continue
        attrs = plugin_attributes(node)
        h, w = int(attrs["grid_h"]), int(attrs["grid_w"])
        n = h * w
        q, k, v, rel_h, rel_w = node.input
        p = f"_ref{index}_"
        graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(_np_float(attrs["scale"]), p + "scale"),
                onnx.numpy_helper.from_array(_np_int64([0, n, h, 1]), p + "shape_h"),
                onnx.numpy_helper.from_array(_np_int64([0, n, 1, w]), p + "shape_w"),
                onnx.numpy_helper.from_array(_np_int64([0, n, n]), p + "shape_bias"),
            ]
        )
        new_nodes += [
            helper.make_node("Cast", [p + "scale"], [p + "scale_t"], to=_elem_type(graph, q)),
            helper.make_node("Mul", [q, p + "scale_t"], [p + "qs"]),
            helper.make_node("Transpose", [k], [p + "kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [p + "qs", p + "kt"], [p + "logits"]),
            helper.make_node("Reshape", [rel_h, p + "shape_h"], [p + "rh"]),
            helper.make_node("Reshape", [rel_w, p + "shape_w"], [p + "rw"]),
            helper.make_node("Add", [p + "rh", p + "rw"], [p + "bias4"]),
            helper.make_node("Reshape", [p + "bias4", p + "shape_bias"], [p + "bias"]),
            helper.make_node("Add", [p + "logits", p + "bias"], [p + "scores"]),
            helper.make_node("Softmax", [p + "scores"], [p + "probs"], axis=-1),
            helper.make_node("MatMul", [p + "probs", v], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not plugin_nodes(out):
        kept = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(kept)
    return out


def _elem_type(graph: onnx.GraphProto, name: str) -> int:
    """Element type of a graph value; float32 unless the graph says otherwise."""
    for value in (*graph.value_info, *graph.input, *graph.output):
        if value.name == name and value.type.tensor_type.elem_type:
            return value.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def _np_float(value: float):
    import numpy as np

    return np.array(value, dtype=np.float32)


def _np_int64(values: list[int]):
    import numpy as np

    return np.array(values, dtype=np.int64)
