"""NumPy building blocks of automatic mask generation: point grids, crop boxes, NMS, RLE.

Each function reproduces one helper of the official ``segment_anything/utils/amg.py`` (or
``torchvision.ops.batched_nms`` as the official generator calls it) without torch.

Frames: boxes are ``(X0, Y0, X1, Y1)`` with *inclusive* pixel indices, as the official
``batched_mask_to_box`` makes them (a one-pixel mask has box ``(x, y, x, y)``); a crop box is
``(X0, Y0, X1, Y1)`` with exclusive ``X1, Y1`` (the slice ``image[Y0:Y1, X0:X1]``).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Literal

import numpy as np

from samexport.errors import InvalidInputError, require

__all__ = [
    "box_near_crop_edge",
    "build_layer_point_grids",
    "build_point_grid",
    "coco_encode_mask",
    "generate_crop_boxes",
    "mask_to_box",
    "mask_to_rle",
    "nms",
    "remove_small_regions",
    "rle_to_mask",
]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n^2 x 2`` float64 (X, Y) points evenly spaced in [0, 1], cell centres, rows of X first."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # xs varies along a row, as the official tiles it
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalised grid per crop layer; layer ``i`` has ``int(n / scale**i)`` points a side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (X0, Y0, X1, Y1), exclusive ends) and their layer: the whole image (layer 0),
    then ``(2**i)**2`` overlapping crops in layer ``i``, in the official order."""
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        x_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        y_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x_starts, y_starts):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression with ``torchvision.ops.nms`` semantics on CPU.

    Boxes are visited by decreasing score, ties in input order (torchvision sorts stably); a box
    is dropped when its IoU with a kept box is ``> iou_threshold``. Areas are ``(x1 - x0) *
    (y1 - y0)`` and the IoU is computed in float32 in torchvision's order of operations, so
    integer boxes give bit-identical decisions (an IoU of 0/0 never suppresses).

    Args:
        boxes: Nx4 (X0, Y0, X1, Y1) boxes, any real dtype (computed in float32).
        scores: N scores, higher is kept first.
        iou_threshold: suppress above this IoU.

    Returns:
        int64 indices of the kept boxes, by decreasing score (ties in input order), as
        ``torchvision.ops.batched_nms`` with one category returns them for up to 1000 boxes
        (above that torchvision orders equal scores arbitrarily; the kept set is the same).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = (np.ascontiguousarray(boxes[order, i]) for i in range(4))
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    zero = np.float32(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(order[i])
            rest = slice(i + 1, None)
            width = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            height = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = width * height
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest] |= iou > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def box_near_crop_edge(
    boxes: np.ndarray, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> np.ndarray:
    """N bools: a box (in the image frame) lies within ``atol`` pixels of an edge of the crop
    that is not also an edge of the image, as the official ``is_box_near_crop_edge``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float64)) <= atol
    near_image = np.abs(boxes - np.asarray(image_box, np.float64)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """(X0, Y0, X1, Y1) inclusive int64 box of an HxW bool mask; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(4, dtype=np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of an HxW bool mask: ``{"size": [H, W], "counts": [...]}``.

    Runs alternate 0s and 1s over the mask in column-major order, starting with a (possibly
    empty) run of 0s; the same lists as the official ``mask_to_rle_pytorch``.
    """
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [height, width], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """HxW bool mask from an uncompressed RLE made by :func:`mask_to_rle`."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != height * width:
        raise InvalidInputError(f"RLE counts sum to {flat.size}, expected {height}x{width}")
    return flat.reshape(width, height).T.copy()


def coco_encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE (``pycocotools``) of an HxW bool mask, counts as a str for JSON.

    Raises:
        MissingExtraError: ``pycocotools`` is not installed (extra ``coco``).
    """
    mask_utils = require("pycocotools.mask", "coco")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def remove_small_regions(
    mask: np.ndarray, area_threshold: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill holes (``"holes"``) or drop islands (``"islands"``) smaller than ``area_threshold``
    pixels, 8-connected, as the official ``remove_small_regions`` (which uses OpenCV).

    With ``"islands"``, if every island is small the largest one is kept (first in raster order
    on ties). A "hole" is any background region, including one touching the image border.

    Returns:
        (HxW bool mask, whether it changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands'; got {mode!r}")
    from scipy import ndimage  # a base dependency; imported here as it takes ~0.2 s
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    regions, count = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < area_threshold) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        labels = np.concatenate([[0], small])
    else:
        labels = np.setdiff1d(np.arange(1, count + 1), small)
        if labels.size == 0:
            labels = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, labels), True
