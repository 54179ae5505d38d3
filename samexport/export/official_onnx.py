"""The decoder in the official ``segment_anything`` ONNX interface, for tools that consume it.

NOT FOR TENSORRT: this graph takes a float ``orig_im_size`` input and resizes and crops by sizes
computed from it at run time, which TensorRT does not parse; build engines from the artifact's own
``decoder.onnx``. This file is for ONNX Runtime clients written against Meta's
``onnx_model_example.ipynb`` or ``scripts/export_onnx_model.py`` (annotation tools, web demos).

Interface (that of ``segment_anything.utils.onnx.SamOnnxModel``):

| inputs | |
|---|---|
| ``image_embeddings`` | 1x256x64x64 float32, from ``predictor.get_image_embedding()`` |
| ``point_coords`` | BxNx2 float32, (X, Y) in the 1024 frame (``predictor.transform.apply_coords``) |
| ``point_labels`` | BxN float32: 1 foreground, 0 background, 2/3 box corners, -1 padding |
| ``mask_input`` | Bx1x256x256 float32 low-res logits |
| ``has_mask_input`` | B float32, 1 where ``mask_input`` is a prompt |
| ``orig_im_size`` | 2 float32, (H, W) of the original image |

| outputs | |
|---|---|
| ``masks`` | BxCxHxW float32 logits at the original size (threshold at 0) |
| ``iou_predictions`` | BxC float32 (stability scores with ``use_stability_score``) |
| ``low_res_masks`` | BxCx256x256 float32 |

C is 1 with ``return_single_mask`` (the official choice: token 0 for 3 or more points, else the
best-scoring multimask token), else 4. B is dynamic here (the official fixes it at 1).

Unlike the graph ``segment-anything==1.0`` exports, the crop to the resized image is computed
in the graph from ``orig_im_size`` (the official ``int(...)`` of a tensor becomes a constant
when traced, so its graph crops every image like the one it was exported with); the resized size
is ``floor(1024 / max(H, W) * (H, W) + 0.5)`` in float32, as in ``SamOnnxModel``, which equals
the predictor's float64 arithmetic for every size up to 4096 (checked exhaustively for heights up
to 600).

The graph is the artifact's ``decoder.onnx`` (same weights, same numbers) with the official
selection and upsampling appended as ONNX nodes, so no torch is needed to write it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.artifacts import read_manifest, verify_artifact
from samexport.errors import SamExportError
from samexport.staging import atomic_path

ORIG_IM_SIZE = "orig_im_size"
NOT_FOR_TENSORRT = (
    "segment_anything ONNX interface (orig_im_size input, in-graph upsampling): for ONNX Runtime; "
    "not for TensorRT, which cannot parse it (build engines from decoder.onnx)"
)
# Weight of token 0 in the official selection: score + (num_points - 2.5) * [1000, 0, 0, 0].
_SINGLE_MASK_REWEIGHT = 1000.0
_STABILITY_OFFSET = 1.0  # SamOnnxModel.stability_score_offset


def official_decoder_model(decoder, *, return_single_mask: bool = True, use_stability_score: bool = False):
    """``decoder`` (an ``onnx.ModelProto`` with samexport's decoder interface) -> a new model with
    the official interface (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(decoder)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    expected_in = [s.name for s in C.DECODER_INPUTS]
    expected_out = [s.name for s in C.DECODER_OUTPUTS]
    if [i.name for i in graph.input] != expected_in or [o.name for o in graph.output] != expected_out:
        raise SamExportError(
            f"not a samexport decoder graph: inputs {list(inputs)}, outputs {list(outputs)}; "
            f"expected {expected_in} -> {expected_out}"
        )
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise SamExportError(f"decoder tensor {value.name} is not float32; export from an fp32 artifact")

    # The decoder's own outputs become internal tensors.
    iou_all, low_all = "samexport_all_iou_predictions", "samexport_all_low_res_masks"
    renames = {C.IOU_PREDICTIONS.name: iou_all, C.LOW_RES_MASKS.name: low_all}
    for node in graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    del graph.output[:]
    graph.input.append(helper.make_tensor_value_info(ORIG_IM_SIZE, TensorProto.FLOAT, [2]))

    nodes: list = []
    constants: list = []

    def const(name: str, value) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=f"official/{out}", **attrs))
        return out

    scores = iou_all
    if use_stability_score:  # IoU of the masks thresholded at +offset and -offset (low res)
        high = node("Greater", [low_all, const("official_c_high", np.float32(C.MASK_THRESHOLD + _STABILITY_OFFSET))], "official_high")
        low = node("Greater", [low_all, const("official_c_low", np.float32(C.MASK_THRESHOLD - _STABILITY_OFFSET))], "official_low")
        axes = const("official_c_axes23", np.array([2, 3], np.int64))
        inter = node("ReduceSum", [node("Cast", [high], "official_high_f", to=TensorProto.FLOAT), axes], "official_inter", keepdims=0)
        union = node("ReduceSum", [node("Cast", [low], "official_low_f", to=TensorProto.FLOAT), axes], "official_union", keepdims=0)
        scores = node("Div", [inter, union], "official_stability")

    selected_masks, selected_scores = low_all, scores
    if return_single_mask:
        shape = node("Shape", [C.POINT_COORDS.name], "official_coords_shape")
        num_points = node("Gather", [shape, const("official_c_one", np.array(1, np.int64))], "official_num_points", axis=0)
        num_points = node("Cast", [num_points], "official_num_points_f", to=TensorProto.FLOAT)
        shift = node("Sub", [num_points, const("official_c_2_5", np.float32(2.5))], "official_shift")
        reweight = np.zeros((1, C.NUM_MASK_TOKENS), np.float32)
        reweight[0, 0] = _SINGLE_MASK_REWEIGHT
        bonus = node("Mul", [shift, const("official_c_reweight", reweight)], "official_bonus")
        ranked = node("Add", [scores, bonus], "official_ranked")
        best = node("ArgMax", [ranked], "official_best", axis=1, keepdims=1)  # B x 1
        selected_scores = node("GatherElements", [scores, best], "official_selected_scores", axis=1)
        index = node("Unsqueeze", [best, const("official_c_axes23b", np.array([2, 3], np.int64))], "official_best4")
        index = node("Expand", [index, const("official_c_mask_shape", np.array([1, 1, 256, 256], np.int64))], "official_best_index")
        selected_masks = node("GatherElements", [low_all, index], "official_selected_masks", axis=1)

    node("Identity", [selected_scores], "iou_predictions")
    node("Identity", [selected_masks], "low_res_masks")

    # Upsample 256 -> 1024, crop to the resized image, resize to the original size.
    lead = node("Slice", [node("Shape", ["low_res_masks"], "official_masks_shape"),
                          const("official_c_s0", np.array([0], np.int64)),
                          const("official_c_s2", np.array([2], np.int64))], "official_lead")
    square = const("official_c_square", np.array([C.IMAGE_SIZE, C.IMAGE_SIZE], np.int64))
    size1024 = node("Concat", [lead, square], "official_size1024", axis=0)
    resize = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    upscaled = node("Resize", ["low_res_masks", "", "", size1024], "official_upscaled", **resize)
    longest = node("ReduceMax", [ORIG_IM_SIZE], "official_longest", keepdims=1)
    scale = node("Div", [const("official_c_1024", np.float32(C.IMAGE_SIZE)), longest], "official_scale")
    resized = node("Floor", [node("Add", [node("Mul", [scale, ORIG_IM_SIZE], "official_scaled"),
                                         const("official_c_half", np.float32(0.5))], "official_rounded")],
                   "official_resized_f")
    resized = node("Cast", [resized], "official_resized", to=TensorProto.INT64)
    cropped = node("Slice", [upscaled, const("official_c_zeros", np.array([0, 0], np.int64)), resized,
                             const("official_c_axes", np.array([2, 3], np.int64))], "official_cropped")
    original = node("Cast", [ORIG_IM_SIZE], "official_original", to=TensorProto.INT64)
    size_out = node("Concat", [lead, original], "official_size_out", axis=0)
    node("Resize", [cropped, "", "", size_out], "masks", **resize)

    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    channels = 1 if return_single_mask else C.NUM_MASK_TOKENS
    batch = C.PROMPT_BATCH
    graph.output.extend([
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, [batch, channels, "height", "width"]),
        helper.make_tensor_value_info("iou_predictions", TensorProto.FLOAT, [batch, channels]),
        helper.make_tensor_value_info("low_res_masks", TensorProto.FLOAT, [batch, channels, 256, 256]),
    ])
    graph.doc_string = NOT_FOR_TENSORRT
    for key, value in (
        ("samexport.interface", "segment_anything.utils.onnx.SamOnnxModel"),
        ("samexport.return_single_mask", str(bool(return_single_mask))),
        ("samexport.use_stability_score", str(bool(use_stability_score))),
        ("samexport.tensorrt", NOT_FOR_TENSORRT),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def export_official_decoder(
    artifact_dir: Path | str,
    output: Path | str,
    *,
    return_single_mask: bool = True,
    use_stability_score: bool = False,
) -> Path:
    """Write the artifact's decoder in the official ONNX interface to ``output`` (not for TensorRT).

    Args:
        artifact_dir: an artifact directory from ``samexport build`` (its ``decoder.onnx``).
        output: the ``.onnx`` file to write (an existing file is replaced only if this function
            wrote it; any other file, and a directory, is refused).
        return_single_mask: one mask per prompt chosen as the official does, else all four.
        use_stability_score: report stability scores instead of predicted IoUs.

    Returns:
        ``output``.
    """
    import onnx

    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    output = Path(output)
    if output.is_dir():
        raise SamExportError(f"--output {output} is a directory; name the .onnx file to write")
    if output.suffix != ".onnx":
        raise SamExportError(f"--output {output} should end in .onnx")
    if output.exists() and not _written_by_us(output):
        raise SamExportError(
            f"--output {output} exists and is not an official-interface decoder samexport wrote; "
            "samexport replaces only its own files: choose another name, or move it away yourself"
        )
    verify_artifact(folder, manifest, names=[C.DECODER_ONNX])
    try:
        decoder = onnx.load(str(folder / C.DECODER_ONNX))
    except Exception as exc:  # protobuf raises its own types for a damaged file
        raise SamExportError(f"could not read {folder / C.DECODER_ONNX}: {exc}; rebuild the artifact") from exc
    model = official_decoder_model(decoder, return_single_mask=return_single_mask,
                                   use_stability_score=use_stability_score)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as partial:
        onnx.save(model, str(partial))
    return output


def _written_by_us(path: Path) -> bool:
    """Whether ``path`` is an ONNX file this module wrote (its ``samexport.interface`` metadata)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (protobuf raises its own types for a file that is not ONNX)
        return False
    return any(entry.key == "samexport.interface" for entry in model.metadata_props)
