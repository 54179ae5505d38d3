"""Image and prompt transforms of the official ``SAM2ImagePredictor``, in NumPy (no torch).

SAM 2.1 does not keep the aspect ratio: the whole image is resized to 1024x1024 (no padding), so
the *input* frame stretches each axis by its own factor. Reproduced from ``sam2/utils/transforms.py``
(``SAM2Transforms``) and ``SAM2ImagePredictor._prep_prompts`` / ``_predict``:

- image: ``ToTensor`` (uint8 -> float32 on [0, 1]), torchvision ``Resize((1024, 1024))`` (bilinear
  with antialiasing, on the float tensor), ``Normalize`` with ImageNet mean and std;
- points and boxes: divided by (W, H) of the original image (``normalize_coords=True``), times 1024;
- prompts: a box becomes two points labelled 2 and 3 placed *before* the clicks, and the prompt
  encoder appends one padding point (label -1) whenever points are given.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from samexport.constants import IMAGE_SIZE, LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PADDING
from samexport.errors import InvalidInputError
from samexport.transforms import check_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "antialiased_weights", "preprocess_sam2", "sam2_prompt_points"]


@lru_cache(maxsize=8)
def antialiased_weights(out_size: int, in_size: int) -> np.ndarray:
    """``out_size x in_size`` float32 matrix of PyTorch's ``interpolate(mode="bilinear",
    antialias=True, align_corners=False)`` along one axis (what torchvision's ``Resize`` runs on
    tensors).

    A triangle filter centred at ``scale * (i + 0.5)`` with ``scale = in / out``, widened to
    ``scale`` input pixels when shrinking (antialiasing) and 1 pixel when enlarging (then plain
    bilinear with clamped edges), each row normalised to sum 1: the weights of PyTorch's
    antialiased CPU kernel (``UpSampleKernel.cpp``), so the resize is two float32 matmuls and
    needs no torch.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((taps - centre + 0.5) * inv))
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0 else w
    return weights.astype(np.float32)


def preprocess_sam2(image: np.ndarray) -> np.ndarray:
    """The encoder input for an image, as ``SAM2ImagePredictor.set_image`` makes it.

    Args:
        image: HxWx3 uint8 RGB.

    Returns:
        1x3x1024x1024 float32: the whole image resized to 1024x1024, normalised with
        :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` on [0, 1].
    """
    image = check_image(image)
    height, width = image.shape[:2]
    rows = antialiased_weights(IMAGE_SIZE, height)
    cols = antialiased_weights(IMAGE_SIZE, width)
    pixels = image.astype(np.float32) / np.float32(255.0)
    out = np.empty((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for c in range(3):
        resized = rows @ (pixels[:, :, c] @ cols.T)
        out[0, c] = (resized - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
    return out


def _coords_to_input(coords: np.ndarray, original_size: tuple[int, int], normalize: bool) -> np.ndarray:
    """...x2 (x, y) -> the 1024x1024 input frame: divided by (W, H) when ``normalize`` (pixel
    coordinates of the original image), else taken as already on [0, 1]; times 1024."""
    coords = np.asarray(coords, dtype=np.float32)
    if normalize:
        height, width = original_size
        coords = coords / np.asarray([width, height], dtype=np.float32)
    return coords * np.float32(IMAGE_SIZE)


def sam2_prompt_points(
    original_size: tuple[int, int],
    *,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    normalize_coords: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's points for prompts in the official predictor's arguments.

    Args:
        original_size: (H, W) of the image.
        point_coords: Nx2 or BxNx2 (x, y), pixels of the original image (or [0, 1] when
            ``normalize_coords`` is False); point_labels: N or BxN (1 foreground, 0 background).
        box: 4 or Bx4 XYXY, same frame as the points.

    Returns:
        (coords BxMx2 float32 in the 1024 input frame, labels BxM float32): box corners (labels
        2, 3) first, then the clicks, then one padding point (label -1, at (0, 0)) when there are
        any points or a box; M is 0 (no sparse prompt) when there are neither.
    """
    parts_xy, parts_label = [], []
    if box is not None:
        corners = _coords_to_input(np.asarray(box, np.float32).reshape(-1, 2, 2), original_size, normalize_coords)
        parts_xy.append(corners)
        parts_label.append(np.tile(np.float32([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]), (len(corners), 1)))
    if point_coords is not None:
        if point_labels is None:
            raise InvalidInputError("point_labels must be given with point_coords")
        xy = _coords_to_input(point_coords, original_size, normalize_coords)
        labels = np.asarray(point_labels, dtype=np.float32)
        if xy.ndim == 2:
            xy, labels = xy[None], labels[None]
        if xy.shape[:2] != labels.shape:
            raise InvalidInputError(f"point_coords {xy.shape} and point_labels {labels.shape} disagree")
        parts_xy.append(xy)
        parts_label.append(labels)
    if not parts_xy:
        return np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.float32)
    batch = max(len(p) for p in parts_xy)
    if any(len(p) not in (1, batch) for p in parts_xy):
        raise InvalidInputError("box and point_coords have different prompt batch sizes")
    parts_xy = [np.broadcast_to(p, (batch, *p.shape[1:])) for p in parts_xy]
    parts_label = [np.broadcast_to(p, (batch, *p.shape[1:])) for p in parts_label]
    parts_xy.append(np.zeros((batch, 1, 2), np.float32))
    parts_label.append(np.full((batch, 1), LABEL_PADDING, np.float32))
    return np.concatenate(parts_xy, axis=1), np.concatenate(parts_label, axis=1)
