"""The peer baseline: the decoder as the official segment-anything recipe exports it.

``scripts/export_onnx_model.py`` of facebookresearch/segment-anything wraps the model in
``segment_anything.utils.onnx.SamOnnxModel`` (prompt encoder + mask decoder + upsampling of the
mask logits to ``orig_im_size`` inside the graph) and exports it with the TorchScript exporter,
opset 17, constant folding, dynamic ``num_points``, a batch of one prompt, and by default all four
masks (``--return-single-mask`` keeps the best one). :func:`export_official_decoder` repeats
those settings (``dynamo=False`` selects that exporter in torch >= 2.9), so our decoder plus
NumPy postprocessing can be timed against it in the same process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from samexport.errors import require
from samexport.variants import Variant, get_variant

OFFICIAL_OPSET = 17  # the official script's default
OFFICIAL_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def official_sam(variant: Variant | str, state_dict: dict | None = None):
    """The official model of ``variant`` (``segment_anything`` for SAM's ViTs, ``mobile_sam``
    for MobileSAM: the encoder family says which), with ``state_dict`` if given (an
    official-layout checkpoint) or its default random initialisation."""
    variant = get_variant(variant)
    return variant.family.official_sam(variant.encoder, state_dict)


def export_official_decoder(
    sam, path: Path | str, *, return_single_mask: bool = False, opset: int = OFFICIAL_OPSET
) -> Path:
    """Export ``SamOnnxModel(sam)`` to ``path`` exactly as the official script does.

    Args:
        sam: an official ``segment_anything.modeling.Sam``.
        path: the ``.onnx`` file to write.
        return_single_mask: the script's ``--return-single-mask`` (default off: four masks).
        opset: the script's ``--opset`` (default 17).
    """
    torch = require("torch", "torch")
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(model=sam, return_single_mask=return_single_mask)
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    mask_input_size = [4 * x for x in embed_size]
    dummy_inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *mask_input_size, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    _ = model(**dummy_inputs)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(dummy_inputs.values()),
            str(path),
            export_params=True,
            verbose=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(dummy_inputs.keys()),
            output_names=list(OFFICIAL_OUTPUTS),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
    return path


class OfficialDecoder:
    """An official-recipe decoder on ONNX Runtime CPU, fed like the official notebook does."""

    def __init__(self, path: Path | str, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict_point(
        self, image_embeddings: np.ndarray, point_xy_1024: np.ndarray, original_size: tuple[int, int]
    ) -> list[np.ndarray]:
        """One foreground point (already in the 1024 frame) plus the padding point the official
        notebook appends; no mask input. Returns (masks at ``original_size``, scores, low-res)."""
        coords = np.concatenate([point_xy_1024.reshape(1, 1, 2), np.zeros((1, 1, 2))], axis=1)
        feed = {
            "image_embeddings": image_embeddings,
            "point_coords": coords.astype(np.float32),
            "point_labels": np.array([[1, -1]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(original_size, np.float32),
        }
        return self.session.run(list(OFFICIAL_OUTPUTS), feed)
