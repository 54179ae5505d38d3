"""Prompts turned into decoder inputs: :func:`check_prompts` / :func:`check_prompt` check what a
user passes to ``SamPredictor`` (once, at the door), :func:`prompt_batch` orders the checked
arrays as the official prompt encoder does."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.errors import InvalidInputError, PromptWarning
from samexport.validate import check_labels, real_array


class PromptBatch(NamedTuple):
    """Decoder inputs for B prompts, in the 1024 frame (shapes in ``constants.DECODER_INPUTS``)."""

    coords: np.ndarray  # BxNx2 float32
    labels: np.ndarray  # BxN float32
    mask_input: np.ndarray  # Mx1x256x256 float32, M = B, or 1 shared by the B prompts
    has_mask_input: np.ndarray  # M float32


def host_array(value: Any) -> np.ndarray | None:
    """A torch tensor (any device) or array-like as a NumPy array; ``None`` stays ``None``."""
    if value is None:
        return None
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _float32(name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    return real_array(name, value, shape).astype(np.float32)


def _caller_level() -> int:
    """``stacklevel`` for ``warnings.warn`` called in this module's functions naming the first frame
    outside samexport (the user's line), so the default filter shows a warning once per place in
    the user's code. (Python 3.12's ``skip_file_prefixes`` does this; samexport supports 3.10.)"""
    import sys

    frame, level = sys._getframe(2), 2  # the function that called warnings.warn
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "samexport":
        frame, level = frame.f_back, level + 1
    return level


def _warn_outside(xy: np.ndarray, original_size: tuple[int, int] | None) -> None:
    """A :class:`PromptWarning` if a point (Kx2, X then Y) lies outside the image: ``0..W`` x
    ``0..H`` of ``original_size``, or the 1024 frame when it is ``None`` (edges included: a box's
    x2 = W is the image's right edge)."""
    height, width = original_size if original_size is not None else (C.IMAGE_SIZE, C.IMAGE_SIZE)
    if xy.size and ((xy < 0).any() or (xy[:, 0] > width).any() or (xy[:, 1] > height).any()):
        warnings.warn(
            "a point or box corner lies outside the image (coordinates are (X, Y) pixels, 0..W and "
            "0..H of the image given to set_image); it is used as given, as segment_anything does",
            PromptWarning, stacklevel=_caller_level(),
        )


class CheckedPrompts(NamedTuple):
    """Prompt arrays checked at the door (:func:`check_prompts`, :func:`check_prompt`): float32,
    finite, in batch form, the labels known; ``None`` where not given. :func:`prompt_batch` takes
    them without checking again."""

    coords: np.ndarray | None  # BxNx2, (X, Y) in the frame the caller gave
    labels: np.ndarray | None  # BxN
    boxes: np.ndarray | None  # Bx4
    mask_input: np.ndarray | None  # Mx1x256x256


def _checked(coords: Any, labels: Any, boxes: Any, mask_input: Any, names: tuple[str, ...], single: bool) -> CheckedPrompts:
    if (coords is None) != (labels is None):
        raise InvalidInputError("point_coords and point_labels must be given together")
    size = C.LOW_RES_MASK_SIZE
    batch = () if single else (None,)  # a single prompt is a batch of one, without the axis
    if coords is not None:
        coords = _float32(names[0], coords, (*batch, None, 2))
        labels = _float32(names[1], labels, (*batch, None))
    if boxes is not None:
        boxes = _float32(names[2], np.asarray(boxes).reshape(-1) if single else boxes, (*batch, 4))
    if mask_input is not None:
        mask_input = _float32(names[3], mask_input, (*batch, 1, size, size))
    if single:
        coords, labels, boxes, mask_input = (None if a is None else a[None] for a in (coords, labels, boxes, mask_input))
    if coords is not None:
        if labels.shape != coords.shape[:2]:
            raise InvalidInputError(f"point_labels shape {labels.shape} does not match point_coords {coords.shape}")
        check_labels(labels)
    return CheckedPrompts(coords, labels, boxes, mask_input)


def check_prompts(point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any) -> CheckedPrompts:
    """Check a batch of B prompts (``SamPredictor.predict_batch``'s arguments: point_coords BxNx2,
    point_labels BxN, boxes Bx4, mask_input Bx1x256x256 (or 1x...), any may be None).

    Raises:
        InvalidInputError: naming the argument that is not a finite real array of its shape, a
            label outside ``constants.LABEL_VALUES``, or points without labels.
    """
    return _checked(point_coords, point_labels, boxes, mask_input, ("point_coords", "point_labels", "boxes", "mask_input"), False)


def check_prompt(point_coords: Any, point_labels: Any, box: Any, mask_input: Any) -> CheckedPrompts:
    """Check one prompt (``SamPredictor.predict``'s arguments: point_coords Nx2, point_labels N,
    box 4, mask_input 1x256x256) and give it as a batch of one (:func:`check_prompts`)."""
    return _checked(point_coords, point_labels, box, mask_input, ("point_coords", "point_labels", "box", "mask_input"), True)


def prompt_batch(
    prompts: CheckedPrompts,
    original_size: tuple[int, int] | None,
    no_mask_input: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> PromptBatch:
    """Decoder inputs as the official prompt encoder orders them: points, then box corners
    (labels 2, 3); points without a box get one padding point (label -1); no points and no box:
    no sparse prompt at all (N = 0), B from ``mask_input`` or 1.

    Args:
        prompts: the checked prompts (:func:`check_prompts`).
        original_size: the frame the points and boxes are in, ``None`` when already in the 1024
            frame.
        no_mask_input: ``B -> (mask_input, has_mask_input)`` of zeros, for prompts without a
            mask (M = B, or M = 1 where the backend shares one across the batch).

    Raises:
        InvalidInputError: the points, boxes and masks give different batch sizes, or none.
    """
    coords, labels, boxes, masks = prompts
    parts_xy, parts_label = [], []
    if coords is not None:
        _warn_outside(coords[labels != C.LABEL_PADDING], original_size)
        if original_size is not None:
            coords = transforms.to_input_frame(coords, original_size)
        parts_xy.append(coords)
        parts_label.append(labels)
    if boxes is not None:
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            warnings.warn(
                "a box has x2 < x1 or y2 < y1; boxes are (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2. "
                "It is used as given, as segment_anything does, which gives other masks than the same "
                "box with its corners in order",
                PromptWarning, stacklevel=_caller_level(),
            )
        _warn_outside(boxes.reshape(-1, 2), original_size)
        if original_size is not None:
            boxes = transforms.to_input_frame(boxes.reshape(-1, 2, 2), original_size).reshape(boxes.shape)
        parts_xy.append(boxes.reshape(-1, 2, 2))
        corners = np.float32([C.LABEL_BOX_TOP_LEFT, C.LABEL_BOX_BOTTOM_RIGHT])
        parts_label.append(np.broadcast_to(corners, (len(boxes), 2)))
    elif parts_xy:
        parts_xy.append(np.zeros((parts_xy[0].shape[0], 1, 2), np.float32))
        parts_label.append(np.full((parts_xy[0].shape[0], 1), C.LABEL_PADDING, np.float32))
    if not parts_xy:  # no sparse prompt
        batch = masks.shape[0] if masks is not None else 1
        parts_xy.append(np.zeros((batch, 0, 2), np.float32))
        parts_label.append(np.zeros((batch, 0), np.float32))
    if len({p.shape[0] for p in parts_xy}) != 1:
        raise InvalidInputError(f"point_coords has {parts_xy[0].shape[0]} prompts but boxes has {parts_xy[1].shape[0]}")
    batch = parts_xy[0].shape[0]
    if batch == 0:
        raise InvalidInputError("the prompt batch is empty")
    if masks is None:
        masks, has_mask = no_mask_input(batch)
    else:
        if masks.shape[0] != batch:
            raise InvalidInputError(f"mask_input has {masks.shape[0]} prompts but the points/boxes have {batch}")
        has_mask = np.ones(batch, np.float32)
    coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
    labels = np.ascontiguousarray(np.concatenate(parts_label, axis=1), dtype=np.float32)
    return PromptBatch(coords, labels, masks, has_mask)


def even_chunks(batch: int, limit: int) -> list[slice]:
    """Slices of ``range(batch)`` of at most ``limit`` each, sizes within one of each other."""
    count = math.ceil(batch / limit)
    base, extra = divmod(batch, count)
    bounds = np.cumsum([0] + [base + 1] * extra + [base] * (count - extra))
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]
