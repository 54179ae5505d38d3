"""A picture of automatic masks a person can check: each mask tinted and outlined in its colour."""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
from PIL import Image

from samexport.amg import ops


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
    from samexport.errors import require

    mask_utils = require("pycocotools.mask", "coco")
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("utf-8")}
    return mask_utils.decode(rle).astype(bool)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1)
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside


def draw_masks(image: np.ndarray, records: list[dict[str, Any]], alpha: float = 0.45) -> Image.Image:
    """``image`` (HxWx3 uint8 RGB) with each record's mask tinted and outlined in its own colour.

    Larger masks are drawn first so smaller ones stay visible on top. ``records`` are
    :meth:`AutomaticMaskGenerator.generate` outputs in any output mode.
    """
    canvas = image.astype(np.float32)
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])
    colours = mask_colours(len(records)).astype(np.float32)
    for rank, i in enumerate(order):
        mask = _segmentation_mask(records[i]["segmentation"])
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colours[rank]
        canvas[_outline(mask)] = colours[rank]
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
