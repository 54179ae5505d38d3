"""A picture of automatic masks a person can check: each mask tinted and outlined in its colour."""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
from PIL import Image

from samexport.amg import ops
from samexport.errors import require
from samexport.imageio import overlay


def mask_colours(count: int) -> np.ndarray:
    """``count x 3`` uint8 RGB colours, neighbours in the sequence far apart in hue."""
    golden = 0.618033988749895
    return np.array(
        [[round(255 * c) for c in colorsys.hsv_to_rgb((i * golden) % 1.0, 0.75, 1.0)] for i in range(count)],
        dtype=np.uint8,
    ).reshape(count, 3)


def _segmentation_mask(segmentation: Any) -> np.ndarray:
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool, copy=False)
    if isinstance(segmentation.get("counts"), list):
        return ops.rle_to_mask(segmentation)

    mask_utils = require("pycocotools.mask", "coco")
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("utf-8")}
    return mask_utils.decode(rle).astype(bool)


def draw_masks(image: np.ndarray, records: list[dict[str, Any]], alpha: float = 0.45) -> Image.Image:
    """``image`` (HxWx3 uint8 RGB) with each record's mask tinted and outlined in its own colour.

    Larger masks are drawn first so smaller ones stay visible on top. ``records`` are
    :meth:`AutomaticMaskGenerator.generate` outputs in any output mode. Drawn by
    :func:`samexport.imageio.overlay`, one mask decoded at a time.
    """
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])
    masks = (_segmentation_mask(records[i]["segmentation"]) for i in order)
    return overlay(image, masks, alpha=alpha, colours=mask_colours(len(records)), outlined=True)
