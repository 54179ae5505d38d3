"""``SAM2AutomaticMaskGenerator``: the official SAM 2.1 generator's options and defaults over
``SAM2ImagePredictor``; the algorithm is :class:`~samexport.amg.generator.AutomaticMaskGenerator`'s.
And ``generator_class``: each family's generator by graph contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samexport import constants as C
from samexport.amg.generator import AutomaticMaskGenerator, OutputMode, _check_number
from samexport.errors import SamExportError
from samexport.runtime.predictors import open_predictor
from samexport.runtime.sam2_predictor import SAM2ImagePredictor


class SAM2AutomaticMaskGenerator(AutomaticMaskGenerator):
    """Masks for everything in an image on SAM 2.1, like the official
    ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``: its arguments, order and
    defaults (``pred_iou_thresh=0.8``, ``mask_threshold``), over :class:`~samexport.SAM2ImagePredictor`.
    The algorithm is :class:`AutomaticMaskGenerator`'s: the official SAM 2.1 generator is SAM's
    with SAM 2.1's predictor (prompts normalised by the crop's size, masks upsampled by one
    bilinear resize) and ``mask_threshold`` for the stability score and the masks.

    Args:
        model: a SAM 2.1 artifact directory, a backend of SAM 2.1's contract, or a
            :class:`~samexport.SAM2ImagePredictor`.
        mask_threshold: the logit above which a pixel is in a mask (stability score, masks, boxes).
        use_m2m, multimask_output: only the official defaults (False, True) are implemented;
            others are refused.
        min_mask_region_area: must be 0 (the official's hole filling is not implemented).
        The others: as :class:`AutomaticMaskGenerator`.
    """

    def __init__(
        self,
        model: SAM2ImagePredictor | Path | str | Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        *,
        progress: bool = False,
    ) -> None:
        if use_m2m or not multimask_output:
            raise SamExportError(
                "SAM2AutomaticMaskGenerator: use_m2m=True and multimask_output=False are not "
                "implemented in samexport; leave them at the official defaults (False, True)"
            )
        _check_number("mask_threshold", mask_threshold, -np.inf)
        predictor = open_predictor(model)
        if not isinstance(predictor, SAM2ImagePredictor):
            raise SamExportError(
                "SAM2AutomaticMaskGenerator runs SAM 2.1 (samexport build --variant sam2.1_hiera_tiny); "
                "this model is SAM or MobileSAM: use samexport.SamAutomaticMaskGenerator"
            )
        super().__init__(
            predictor, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
            min_mask_region_area=min_mask_region_area, output_mode=output_mode, progress=progress,
        )
        self.mask_threshold = float(mask_threshold)


def generator_class(contract: C.GraphContract) -> type[AutomaticMaskGenerator]:
    """The mask generator with the official options and defaults of a model family:
    :class:`SAM2AutomaticMaskGenerator` for SAM 2.1's graph contract, else
    :class:`AutomaticMaskGenerator` (SAM, MobileSAM)."""
    return SAM2AutomaticMaskGenerator if contract is C.SAM2_GRAPHS else AutomaticMaskGenerator
