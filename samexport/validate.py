"""Checks on what users pass in: arrays, sizes, point labels.

One home for each check, so every entry point (the transforms, the predictor, the mask
generator) refuses the same bad input with the same message: an
:class:`~samexport.errors.InvalidInputError` (a ``ValueError``) naming the argument.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from samexport import constants as C
from samexport.errors import InvalidInputError

Shape = tuple[Any, ...]  # ints, None (any size), or a leading ... (any leading dimensions)


def _shape_text(shape: Shape) -> str:
    return "x".join("..." if s is Ellipsis else "N" if s is None else str(s) for s in shape)


def _fits(got: tuple[int, ...], shape: Shape) -> bool:
    if shape and shape[0] is Ellipsis:
        tail = shape[1:]
        return len(got) >= max(1, len(tail)) and _fits(got[len(got) - len(tail):], tail)
    return len(got) == len(shape) and all(want is None or g == want for g, want in zip(got, shape))


def real_array(name: str, value: Any, shape: Shape, *, finite: bool = True) -> np.ndarray:
    """``value`` as a NumPy array of real numbers with the given shape (its own dtype kept).

    Args:
        name: the argument's name, for the message.
        shape: wanted sizes, ``None`` for any size; a leading ``...`` allows any number of
            leading dimensions (at least one dimension in all).
        finite: also refuse NaN and infinite values.
    """
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise InvalidInputError(f"{name} must be a rectangular array of real numbers; {exc}") from exc
    if array.dtype.kind not in "iuf" or not _fits(array.shape, shape):
        raise InvalidInputError(
            f"{name} must be a real array of shape {_shape_text(shape)}; got {array.dtype} {array.shape}"
        )
    if finite and not np.isfinite(array).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return array


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (any integral type, not bool)."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be an int; got {value!r}")
    try:
        number = operator.index(value)  # ints, NumPy and 0-d torch integers; not 2.5
    except TypeError:
        raise InvalidInputError(f"{name} must be an int; got {value!r}") from None
    if number < 1:
        raise InvalidInputError(f"{name} must be positive; got {value!r}")
    return number


def size_pair(name: str, size: Any) -> tuple[int, int]:
    """``size`` as ``(H, W)`` of positive ints."""
    try:
        values = tuple(size)
    except TypeError:
        values = ()
    if len(values) != 2:
        raise InvalidInputError(f"{name} must be a pair (H, W); got {size!r}")
    return positive_int(f"{name}[0]", values[0]), positive_int(f"{name}[1]", values[1])


def image_size(name: str, size: Any) -> tuple[int, int]:
    """``size`` as ``(H, W)`` of positive ints whose product is at most
    :data:`samexport.constants.MAX_IMAGE_PIXELS` (the largest image samexport reads): a size given
    with a stored embedding is what ``predict`` allocates full-size masks for."""
    height, width = size_pair(name, size)
    if height * width > C.MAX_IMAGE_PIXELS:
        raise InvalidInputError(
            f"{name} {(height, width)} is {height * width / 1e6:.0f} MP, over samexport's limit of "
            f"{C.MAX_IMAGE_PIXELS / 1e6:.0f} MP ({C.MAX_IMAGE_PIXELS} pixels): each full-size mask would "
            f"take {height * width / 2**30:.0f} GiB; give the image's real size (H, W)"
        )
    return height, width


def check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` if every one is in :data:`samexport.constants.LABEL_VALUES`."""
    unknown = labels[~np.isin(labels, C.LABEL_VALUES)]
    if unknown.size:
        raise InvalidInputError(
            f"point_labels must be 1 (foreground), 0 (background), -1 (padding, ignored) or 2 / 3 "
            f"(box top-left / bottom-right corner); got {unknown[0]:g}"
        )
    return labels
