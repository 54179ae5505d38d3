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

from samexport.constants import IMAGE_SIZE, LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PADDING, LOW_RES_MASK_SIZE
from samexport.errors import InvalidInputError
from samexport.transforms import MaskUpsampling, _linear_taps, check_image

# The official image predictor's single-mask fallback (build_sam2's apply_postprocessing): with one
# mask asked for, token 0 unless its stability score is below the threshold. The same numbers as
# samexport.models.sam2_decoder (torch); kept here too so this module needs no torch.
STABILITY_DELTA = 0.05
STABILITY_THRESHOLD = 0.98

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "antialiased_weights",
    "postprocess_sam2_masks",
    "preprocess_sam2",
    "sam2_mask_upsampling",
    "sam2_prompt_points",
    "select_sam2_masks",
]


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
    support = max(scale, 1.0)
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


@lru_cache(maxsize=16)
def _upsample_weights(out_size: int, in_size: int) -> np.ndarray:
    """``out_size x in_size`` float32 matrix of PyTorch's bilinear ``interpolate``
    (``align_corners=False``, no antialiasing) along one axis, from the bit-exact taps of
    :mod:`samexport.transforms`."""
    index0, index1, lambda0, lambda1 = _linear_taps(out_size, in_size)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, index0), lambda0)
    np.add.at(weights, (rows, index1), lambda1)
    weights.setflags(write=False)
    return weights


def postprocess_sam2_masks(
    low_res_logits: np.ndarray, original_size: tuple[int, int], *, threshold: float | None = None
) -> np.ndarray:
    """Low-resolution mask logits -> the original image's size, as ``SAM2Transforms.postprocess_masks``
    with the predictor's defaults (no hole or sprinkle filling): one bilinear resize of the whole
    256x256 map to HxW (no crop: the input frame is the whole image).

    Args:
        low_res_logits: ...x256x256 float32.
        original_size: (H, W).
        threshold: None for logits; else boolean masks ``logits > threshold`` (the predictor's
            ``mask_threshold``, 0.0).

    Returns:
        ...xHxW float32 logits, or bool masks.
    """
    logits = np.asarray(low_res_logits, dtype=np.float32)
    if logits.ndim < 2 or logits.shape[-2:] != (256, 256):
        raise InvalidInputError(f"low_res_logits must be ...x256x256, got shape {logits.shape}")
    height, width = original_size
    rows = _upsample_weights(int(height), logits.shape[-2])
    cols = _upsample_weights(int(width), logits.shape[-1])
    out = rows @ logits @ cols.T
    return out if threshold is None else out > threshold


def select_sam2_masks(
    masks: np.ndarray, iou: np.ndarray, *, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The official predictor's output masks from the decoder's four tokens, in NumPy (the torch
    twin is :func:`samexport.models.sam2_decoder.select_masks`).

    Args:
        masks: Bx4x256x256 logits; iou: Bx4.
        multimask_output: True: tokens 1..3. False: token 0 where its mask's stability score (IoU
            of the masks at logit > +0.05 and > -0.05; 1 when both are empty) is at least 0.98,
            else the multimask token with the highest predicted IoU.

    Returns:
        (Bx3x256x256, Bx3) or (Bx1x256x256, Bx1).
    """
    if multimask_output:
        return masks[:, 1:], iou[:, 1:]
    flat = masks[:, 0].reshape(len(masks), -1)
    inner = np.count_nonzero(flat > STABILITY_DELTA, axis=1)
    outer = np.count_nonzero(flat > -STABILITY_DELTA, axis=1)
    stability = np.where(outer > 0, inner / np.maximum(outer, 1), 1.0).astype(np.float32)
    stable = stability >= np.float32(STABILITY_THRESHOLD)
    token = np.where(stable, 0, 1 + iou[:, 1:].argmax(axis=1))
    rows = np.arange(len(masks))
    return masks[rows, token][:, None], iou[rows, token][:, None]


@lru_cache(maxsize=8)
def sam2_mask_upsampling(original_size: tuple[int, int]) -> MaskUpsampling:
    """SAM 2.1's :class:`~samexport.transforms.MaskUpsampling` for an HxW image: one bilinear
    resize of the whole 256x256 map (:func:`postprocess_sam2_masks`)."""
    height, width = (int(v) for v in original_size)

    def whole(logits: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return postprocess_sam2_masks(logits, (height, width), threshold=threshold)

    return MaskUpsampling(_upsample_weights(height, LOW_RES_MASK_SIZE), _upsample_weights(width, LOW_RES_MASK_SIZE), whole)
