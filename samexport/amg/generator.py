"""``AutomaticMaskGenerator``: the official ``SamAutomaticMaskGenerator`` over ``SamPredictor``
(SAM 2.1's official options over it: ``samexport.amg.sam2_generator``).

Same algorithm and outputs as ``segment_anything.SamAutomaticMaskGenerator`` (and, on a SAM 2.1
artifact, ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``, which differs only in its
predictor: prompt transform, mask upsampling, defaults), run differently:

- a batch of grid points is one call to the batched decoder (``SamPredictor.decode_low_res_where``);
- the predicted-IoU filter runs on the decoder's scores before any mask is made: with the
  decoder's two halves (artifacts that have ``decoder_scores.onnx``), only prompts with a
  multimask output over ``pred_iou_thresh`` go through the second half, which makes the masks;
- the stability score, box and mask of each survivor are computed at the crop's resolution but
  only in the window its low-res logits can reach (:mod:`samexport.amg.measure`), and kept as a
  bit-packed box patch instead of a full-size mask;
- NMS is NumPy with ``torchvision.ops.batched_nms`` decisions; full-size masks (and RLEs) are
  made only for the masks that are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from samexport import constants as C
from samexport.amg import ops
from samexport.amg.measure import MaskMeasurer, MaskPatch
from samexport.compat import SamModel
from samexport.constants import LABEL_FOREGROUND, MAX_CROP_N_LAYERS
from samexport.errors import InvalidInputError, NoImageSetError, SamExportError, require
from samexport.runtime.backends import Backend
from samexport.runtime.decode_budget import prompts_per_call
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.predictors import open_predictor
from samexport.runtime.prompts import even_chunks
from samexport.runtime.sam2_predictor import SAM2ImagePredictor
from samexport.transforms import check_image

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class _Masks:
    """Candidate masks and their data, in the image frame once :meth:`uncrop` has run."""

    iou: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # inclusive
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    patches: list[MaskPatch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.patches)

    def take(self, index: np.ndarray) -> _Masks:
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return _Masks(
            self.iou[index], self.stability[index], self.boxes[index], self.points[index],
            self.crop_boxes[index], [self.patches[i] for i in index],
        )

    @staticmethod
    def concat(parts: list[_Masks]) -> _Masks:
        if not parts:
            return _Masks()
        return _Masks(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in
              ("iou", "stability", "boxes", "points", "crop_boxes")),
            [patch for p in parts for patch in p.patches],
        )


# Memory one grid point costs in a batch (RSS growth, ONNX Runtime CPU fp32, 300x400 image, every
# mask kept: benchmarks/decode_memory.py amg): the decoder call's, with its two halves' outputs
# (the image tokens, 4 MiB a point), plus the batch's logits and their measurement: 2250 MiB at
# 38-39 points a piece, ~56 MiB a point over the decoder's fixed part; rounded up.
GENERATOR_BYTES_PER_POINT = 60 << 20


def _check_number(name: str, value: Any, low: float, high: float = np.inf, *, integer: bool = False,
                  high_open: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
        raise InvalidInputError(f"{name} must be {'an int' if integer else 'a number'}; got {value!r}")
    too_high = value >= high if high_open else value > high
    if not np.isfinite(value) or value < low or too_high:
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise InvalidInputError(f"{name} must be in {bound}; got {value!r}")


class AutomaticMaskGenerator:
    """Masks for everything in an image, like ``segment_anything.SamAutomaticMaskGenerator``.

    A grid of foreground points (per crop) is decoded in batches; masks are kept when their
    predicted IoU is ``> pred_iou_thresh`` and their stability score ``>= stability_score_thresh``,
    then de-duplicated by box NMS within each crop and across crops (smaller crops win).

    Args:
        model: what the official takes as ``model`` (a :class:`~samexport.SamModel` from
            ``samexport.sam_model_registry[...]`` or ``samexport.load``), or a
            :class:`~samexport.SamPredictor` or :class:`~samexport.SAM2ImagePredictor`, or
            anything they accept (an artifact directory, a backend; SAM 2.1's run on
            ``SAM2ImagePredictor``, :func:`~samexport.runtime.predictors.open_predictor`). A given predictor's current image is
            replaced while generating. ``predictor=`` is accepted as another name for it.
        points_per_side: grid points along each side of the image (``points_per_side**2`` in
            all); ``None`` when ``point_grids`` is given.
        points_per_batch: prompts per decoder call; larger is faster on a GPU, uses more memory.
        pred_iou_thresh: keep masks whose predicted IoU is above this, in [0, 1] (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this, in [0, 1]
            (0 disables).
        stability_score_offset: the stability score is the IoU of the masks thresholded at
            ``+offset`` and ``-offset`` logits; ``>= 0``.
        box_nms_thresh: box IoU above which NMS drops a duplicate within a crop, in [0, 1].
        crop_n_layers: extra layers of crops; layer ``i`` has ``(2**i)**2`` crops. At most
            :data:`samexport.constants.MAX_CROP_N_LAYERS` (3: 85 crops), and no more than leave
            every crop of the image at least a pixel wide.
        crop_nms_thresh: box IoU for NMS between crops, in [0, 1].
        crop_overlap_ratio: overlap of layer-1 crops as a fraction of the short image side,
            in [0, 1) (later layers overlap less).
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / factor**i`` points
            a side.
        point_grids: explicit normalised Nx2 (X, Y) grids in [0, 1], one per crop layer;
            exclusive with ``points_per_side``.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
            pixels, then NMS again (needs scipy).
        output_mode: ``"binary_mask"`` (HxW bool array), ``"uncompressed_rle"`` (dict with
            ``size`` and ``counts`` list) or ``"coco_rle"`` (compressed, needs pycocotools).
        progress: show a progress bar over decoder batches.
    """

    def __init__(
        self,
        model: SamModel | SamPredictor | Path | str | Backend | None = None,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
        *,
        progress: bool = False,
        predictor: SamPredictor | Path | str | Backend | None = None,
    ) -> None:
        if (model is None) == (predictor is None):
            raise InvalidInputError("give the model (or predictor=) to generate masks with, once")
        model = model if predictor is None else predictor
        _check_number("points_per_batch", points_per_batch, 1, integer=True)
        _check_number("pred_iou_thresh", pred_iou_thresh, 0.0, 1.0)
        _check_number("stability_score_thresh", stability_score_thresh, 0.0, 1.0)
        _check_number("stability_score_offset", stability_score_offset, 0.0)
        _check_number("box_nms_thresh", box_nms_thresh, 0.0, 1.0)
        _check_number("crop_n_layers", crop_n_layers, 0, integer=True)
        if crop_n_layers > MAX_CROP_N_LAYERS:
            crops = sum(4**i for i in range(crop_n_layers + 1))
            raise InvalidInputError(
                f"crop_n_layers must be at most {MAX_CROP_N_LAYERS}; got {crop_n_layers}: layer i "
                f"adds 4**i crops, each running the whole point grid, so {crop_n_layers} layers "
                f"would encode and decode {crops} crops"
            )
        _check_number("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0)
        _check_number("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, high_open=True)
        _check_number("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1, integer=True)
        _check_number("min_mask_region_area", min_mask_region_area, 0)
        if output_mode not in OUTPUT_MODES:
            raise InvalidInputError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        self.point_grids = self._point_grids(
            points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor
        )
        if output_mode == "coco_rle":
            require("pycocotools.mask", "coco")

        self.predictor = open_predictor(model)
        if min_mask_region_area > 0 and isinstance(self.predictor, SAM2ImagePredictor):
            raise SamExportError(
                "min_mask_region_area > 0 is not implemented for SAM 2.1 (the official generator "
                "also fills holes in its predictor's masks, max_hole_area); leave it at 0"
            )
        self.mask_threshold = float(getattr(self.predictor, "mask_threshold", C.MASK_THRESHOLD))
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress = progress

    @staticmethod
    def _point_grids(points_per_side, point_grids, crop_n_layers, factor) -> list[np.ndarray]:
        if (points_per_side is None) == (point_grids is None):
            raise InvalidInputError("give exactly one of points_per_side and point_grids")
        if point_grids is None:
            _check_number("points_per_side", points_per_side, 1, integer=True)
            smallest = int(points_per_side / factor**crop_n_layers)
            if smallest < 1:
                raise InvalidInputError(
                    f"points_per_side={points_per_side} leaves no points in crop layer "
                    f"{crop_n_layers} (points_per_side / crop_n_points_downscale_factor**layer < 1)"
                )
            return ops.build_layer_point_grids(points_per_side, crop_n_layers, factor)
        grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        if len(grids) != crop_n_layers + 1:
            raise InvalidInputError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}); got {len(grids)}")
        for i, grid in enumerate(grids):
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                raise InvalidInputError(f"point_grids[{i}] must be a non-empty Nx2 array; got shape {grid.shape}")
            if not (np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()):
                raise InvalidInputError(f"point_grids[{i}] must hold normalised coordinates in [0, 1]")
        return grids

    # -- generation ------------------------------------------------------------------------

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an image, as the official ``SamAutomaticMaskGenerator.generate``.

        Args:
            image: HxWx3 uint8 RGB array.

        Returns:
            One record per mask: ``segmentation`` (per ``output_mode``), ``area`` (int pixels),
            ``bbox`` (X, Y, W, H ints, inclusive pixel box), ``predicted_iou`` (float),
            ``point_coords`` ([[X, Y]] prompt in image pixels), ``stability_score`` (float),
            ``crop_box`` (X, Y, W, H of the crop that produced it).
        """
        image = check_image(image)
        return self._records(self._generate_masks(image, image.shape[:2]), image.shape[:2])

    def generate_embedded(self) -> list[dict[str, Any]]:
        """The records :meth:`generate` gives, for the image whose embedding the predictor already
        holds (``set_image`` or ``set_embedding``, e.g. from a cache), without running the encoder
        again. The predictor keeps its image.

        Raises:
            InvalidInputError: ``crop_n_layers > 0`` (each crop is encoded from the pixels: use
                :meth:`generate`).
            NoImageSetError: the predictor holds no image.
        """
        if self.crop_n_layers:
            raise InvalidInputError(
                f"generate_embedded needs crop_n_layers=0 (got {self.crop_n_layers}): crops are encoded "
                "from the pixels, so give the image to generate()"
            )
        if not self.predictor.is_image_set:
            raise NoImageSetError("no image is set: call set_image or set_embedding on the predictor first")
        size = tuple(self.predictor.original_size)
        return self._records(self._generate_masks(None, size), size)

    def _records(self, masks: _Masks, size: tuple[int, int]) -> list[dict[str, Any]]:
        if self.min_mask_region_area > 0:
            masks = self._remove_small_regions(masks, size)
        return [self._record(masks, i, size) for i in range(len(masks))]

    def _generate_masks(self, image: np.ndarray | None, size: tuple[int, int]) -> _Masks:
        """``image`` None: the one crop (the whole image) is the predictor's current embedding."""
        from tqdm.auto import tqdm

        crop_boxes, layers = self._crop_boxes(size)
        batches = sum(-(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layers)
        parts = []
        with tqdm(total=batches, disable=not self.progress, desc="segment-all", unit="batch") as bar:
            for i, (crop_box, layer) in enumerate(zip(crop_boxes, layers)):
                bar.set_postfix_str(f"crop {i + 1}/{len(crop_boxes)}")
                parts.append(self._process_crop(image, size, crop_box, layer, bar))
        masks = _Masks.concat(parts)
        if len(crop_boxes) > 1 and len(masks):
            # Prefer masks from smaller crops: scores 1 / crop area, float32 as the official.
            widths = (masks.crop_boxes[:, 2] - masks.crop_boxes[:, 0]).astype(np.float32)
            heights = (masks.crop_boxes[:, 3] - masks.crop_boxes[:, 1]).astype(np.float32)
            scores = np.float32(1.0) / (widths * heights)
            masks = masks.take(ops.nms(masks.boxes, scores, self.crop_nms_thresh))
        return masks

    def _crop_boxes(self, size: tuple[int, int]) -> tuple[list[list[int]], list[int]]:
        """``ops.generate_crop_boxes`` for an HxW ``size``, or an error naming the most crop
        layers this image allows when a crop would be empty (small images, deep layers)."""

        def all_have_pixels(boxes: list[list[int]]) -> bool:
            return all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in boxes)

        boxes, layers = ops.generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
        if all_have_pixels(boxes):
            return boxes, layers
        fits = max(n for n in range(self.crop_n_layers)
                   if all_have_pixels(ops.generate_crop_boxes(size, n, self.crop_overlap_ratio)[0]))
        raise InvalidInputError(
            f"crop_n_layers={self.crop_n_layers} is too many for a {size[0]}x{size[1]} image: some "
            f"crops would have no pixels; use crop_n_layers <= {fits} for it"
        )

    def _process_crop(
        self, image: np.ndarray | None, size: tuple[int, int], crop_box: list[int], layer: int, bar
    ) -> _Masks:
        x0, y0, x1, y1 = crop_box
        if image is not None:
            self.predictor.set_image(image[y0:y1, x0:x1])
        crop_size = (y1 - y0, x1 - x0)
        measurer = MaskMeasurer(self.predictor.mask_upsampling(), self.stability_score_offset, self.mask_threshold)
        points = self.point_grids[layer] * np.array(crop_size, dtype=np.float64)[::-1]
        parts = []
        # A batch goes to the predictor in equal pieces within its decode budget: the logits of
        # a batch (1 MiB per point) and their measurements are held at once, so 576 points per
        # batch held 6 GB where the budget was 2 GiB. The masks are those of whole batches.
        limit = min(
            self.predictor.max_prompts_per_call,
            prompts_per_call(self.predictor.decode_budget_bytes, GENERATOR_BYTES_PER_POINT),
        )
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            for piece in even_chunks(len(batch), limit):
                parts.append(self._process_batch(batch[piece], measurer, crop_box, size))
            bar.update(1)
        if image is not None:
            self.predictor.reset_image()
        masks = _Masks.concat(parts)
        masks = masks.take(ops.nms(masks.boxes, masks.iou, self.box_nms_thresh))
        # Back to the image frame.
        masks.boxes = masks.boxes + np.array([x0, y0, x0, y0], np.int64)
        masks.points = masks.points + np.array([x0, y0], np.float64)
        masks.crop_boxes = np.tile(np.array(crop_box, np.int64), (len(masks), 1))
        masks.patches = [patch.shifted(y0, x0) for patch in masks.patches]
        return masks

    def _process_batch(
        self, points: np.ndarray, measurer: MaskMeasurer, crop_box: list[int], image_size: tuple[int, int]
    ) -> _Masks:
        labels = np.full((len(points), 1), LABEL_FOREGROUND, np.float32)
        threshold = self.pred_iou_thresh

        def can_pass(iou: np.ndarray) -> np.ndarray:  # a multimask output over the threshold
            return (iou[:, 1:] > threshold).any(axis=1) if threshold > 0 else np.ones(len(iou), bool)

        index, logits, iou = self.predictor.decode_low_res_where(can_pass, points[:, None, :], labels)
        iou, logits = iou[index, 1:].reshape(-1), logits[:, 1:].reshape(-1, *logits.shape[2:])  # multimask
        points = np.repeat(points[index], 3, axis=0)
        keep = np.flatnonzero(iou > threshold) if threshold > 0 else np.arange(len(iou))
        measured = measurer.measure(logits[keep])
        masks = _Masks(
            iou[keep], measured.stability_scores(), measured.boxes, points[keep],
            np.zeros((len(keep), 4), np.int64), measured.patches,
        )
        if self.stability_score_thresh > 0:
            masks = masks.take(masks.stability >= self.stability_score_thresh)
        x0, y0 = crop_box[:2]
        in_image = masks.boxes + np.array([x0, y0, x0, y0])
        height, width = image_size
        return masks.take(~ops.box_near_crop_edge(in_image, crop_box, [0, 0, width, height]))

    def _remove_small_regions(self, masks: _Masks, size: tuple[int, int]) -> _Masks:
        """Fill small holes, drop small islands, then NMS again preferring unchanged masks."""
        area = self.min_mask_region_area
        scores, boxes, patches = np.ones(len(masks), np.float32), masks.boxes.copy(), list(masks.patches)
        for i, patch in enumerate(masks.patches):
            mask, holes_changed = ops.remove_small_regions(patch.paste(size), area, "holes")
            mask, islands_changed = ops.remove_small_regions(mask, area, "islands")
            if holes_changed or islands_changed:
                scores[i] = 0.0
                boxes[i] = ops.mask_to_box(mask)
                x0, y0, x1, y1 = (int(v) for v in boxes[i])
                patches[i] = MaskPatch.from_array(mask[y0 : y1 + 1, x0 : x1 + 1], y0, x0)
        keep = ops.nms(boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        masks.boxes, masks.patches = boxes, patches
        return masks.take(keep)

    def _record(self, masks: _Masks, i: int, size: tuple[int, int]) -> dict[str, Any]:
        mask = masks.patches[i].paste(size)
        if self.output_mode == "binary_mask":
            segmentation: Any = mask
        elif self.output_mode == "uncompressed_rle":
            segmentation = ops.mask_to_rle(mask)
        else:
            segmentation = ops.coco_encode_mask(mask)
        x0, y0, x1, y1 = (int(v) for v in masks.boxes[i])
        cx0, cy0, cx1, cy1 = (int(v) for v in masks.crop_boxes[i])
        return {
            "segmentation": segmentation,
            "area": int(np.count_nonzero(mask)),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(masks.iou[i]),
            "point_coords": [[float(v) for v in masks.points[i]]],
            "stability_score": float(masks.stability[i]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        }
