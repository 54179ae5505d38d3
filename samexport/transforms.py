"""Image, prompt and mask transforms of the official ``SamPredictor``, in NumPy and Pillow.

Frames used in this module:

- *original*: pixel coordinates of the user's image, size ``(H, W)``;
- *input* (the 1024 frame): the image resized so its longest side is ``IMAGE_SIZE`` (1024), size
  ``(h, w) = preprocess_shape(H, W)``, then zero-padded bottom/right to 1024x1024 for the encoder;
- *low-res*: the decoder's 256x256 mask logits, covering the whole padded 1024x1024 input.

Each function reproduces the corresponding official step (``ResizeLongestSide`` in
``segment_anything/utils/transforms.py``, ``Sam.preprocess`` and ``Sam.postprocess_masks`` in
``segment_anything/modeling/sam.py``) without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import numpy as np
from PIL import Image

from samexport.constants import IMAGE_SIZE, LOW_RES_MASK_SIZE, PIXEL_MEAN, PIXEL_STD
from samexport.errors import InvalidInputError
from samexport.validate import positive_int, real_array, size_pair

__all__ = [
    "MaskUpsampling",
    "chain_weights",
    "check_image",
    "postprocess_masks",
    "preprocess",
    "preprocess_shape",
    "resize_image",
    "sam_mask_upsampling",
    "to_input_frame",
    "transform_boxes",
    "transform_coords",
]

# Image.Resampling is Pillow >= 9.1; the module-level constant works on all supported versions.
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_PIXEL_MEAN = np.asarray(PIXEL_MEAN, dtype=np.float32).reshape(3, 1, 1)
_PIXEL_STD = np.asarray(PIXEL_STD, dtype=np.float32).reshape(3, 1, 1)

# Output columns per matmul in the banded final pass of postprocess_masks (see _MaskUpsampler).
# Measured on the 2-core CPU machine, 4 masks to 1500x2250, idle: 256 -> 18 ms, 512 -> 15 ms,
# 1024 -> 18 ms, one dense matmul -> 27 ms.
_COL_BLOCK = 512


def check_image(image: Any) -> np.ndarray:
    """``image`` if it is a non-empty HxWx3 uint8 array, else a ValueError saying what is wrong.

    The one image check shared by preprocessing, ``SamPredictor.set_image`` and the mask
    generator.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a numpy.ndarray (HxWx3 uint8 RGB); got {type(image).__name__}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise InvalidInputError(
            f"image must have shape HxWx3 (RGB); got grayscale shape {image.shape}: repeat it to "
            "three channels, e.g. np.repeat(image.reshape(H, W, 1), 3, axis=2)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"image must have shape HxWx3 (RGB); got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"image must have dtype uint8 (0..255); got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"image must not be empty; got shape {image.shape}")
    return image


def as_uint8_image(image: Any) -> Any:
    """``image`` with a floating dtype turned into uint8 the way the official ``set_image`` does.

    The official ``ResizeLongestSide.apply_image`` hands the array to torchvision's
    ``to_pil_image``, which computes ``(image * 255).astype(np.uint8)`` (in the image's own float
    dtype, truncating). That is only meaningful for values in [0, 1] (larger values wrap around
    silently there); here they are refused with a ValueError. Anything that is not a floating
    NumPy array is returned as it is, for :func:`check_image` to judge.
    """
    if not isinstance(image, np.ndarray) or image.dtype.kind != "f":
        return image
    if image.size and not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise InvalidInputError(
            "a float image must hold values in [0, 1] (segment_anything scales floats by 255); "
            f"got values in [{np.nanmin(image):g}, {np.nanmax(image):g}]: pass uint8 0..255 instead"
        )
    return (image * 255).astype(np.uint8)


def preprocess_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """Size ``(h, w)`` of a ``height x width`` image resized so its longest side is ``long_side``.

    Same arithmetic as the official ``ResizeLongestSide.get_preprocess_shape`` (scale in float64,
    round half up). One difference: a side the official rounds to 0 (an image more than
    ``2 * long_side`` times longer than wide) is 1 here, so such images still resize.
    """
    height = positive_int("height", height)
    width = positive_int("width", width)
    long_side = positive_int("long_side", long_side)
    scale = long_side * 1.0 / max(height, width)
    new_height = int(height * scale + 0.5)
    new_width = int(width * scale + 0.5)
    return max(new_height, 1), max(new_width, 1)


def resize_image(image: np.ndarray) -> np.ndarray:
    """Resize an RGB image so its longest side is ``IMAGE_SIZE`` (1024).

    Args:
        image: ``HxWx3`` uint8 RGB array, original frame.

    Returns:
        ``hxwx3`` uint8 array with ``(h, w) = preprocess_shape(H, W)``, byte-for-byte the official
        ``ResizeLongestSide(1024).apply_image`` (Pillow bilinear resampling, which antialiases
        when shrinking).
    """
    image = check_image(image)
    new_height, new_width = preprocess_shape(image.shape[0], image.shape[1])
    pil = Image.fromarray(np.ascontiguousarray(image))  # HxWx3 uint8 -> mode "RGB"
    return np.array(pil.resize((new_width, new_height), _BILINEAR))  # writable, as the official


def preprocess(image: np.ndarray) -> np.ndarray:
    """Turn an RGB image into the encoder input, as ``SamPredictor.set_image`` does.

    Resizes the longest side to 1024 (:func:`resize_image`), normalises with ``PIXEL_MEAN`` and
    ``PIXEL_STD`` (float32 arithmetic, as the official ``Sam.preprocess``), then zero-pads
    bottom/right, so the padding is 0 after normalisation.

    Args:
        image: ``HxWx3`` uint8 RGB array, original frame.

    Returns:
        ``1x3x1024x1024`` float32 C-contiguous array; the image occupies ``[:, :, :h, :w]`` with
        ``(h, w) = preprocess_shape(H, W)``.
    """
    resized = resize_image(image)
    height, width = resized.shape[:2]
    chw = resized.transpose(2, 0, 1).astype(np.float32)
    out = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out[0, :, :height, :width] = (chw - _PIXEL_MEAN) / _PIXEL_STD
    return out


def transform_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Map ``(x, y)`` pixel coordinates from the original frame into the 1024 input frame.

    Args:
        coords: ``...x2`` array of ``(X, Y)`` coordinates in the original frame (any real dtype).
        original_size: ``(H, W)`` of the original image.

    Returns:
        float32 array of the same shape, in the input frame: the official
        ``ResizeLongestSide.apply_coords`` (computed in float64) cast to float32, as
        ``SamPredictor.predict`` does before calling the model.
    """
    return to_input_frame(real_array("coords", coords, (..., 2), finite=False), size_pair("original_size", original_size))


def to_input_frame(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """:func:`transform_coords` for values already checked (``coords`` a real ``...x2`` array,
    ``original_size`` a pair of positive ints): what the predictor calls after checking a prompt."""
    old_height, old_width = original_size
    new_height, new_width = preprocess_shape(old_height, old_width)
    out = coords.astype(np.float64)  # always a copy
    out[..., 0] *= new_width / old_width
    out[..., 1] *= new_height / old_height
    return out.astype(np.float32)


def transform_boxes(boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Map boxes from the original frame into the 1024 input frame.

    Args:
        boxes: ``...x4`` array (usually ``Bx4`` or ``4``) of ``(X0, Y0, X1, Y1)`` corners in the
            original frame.
        original_size: ``(H, W)`` of the original image.

    Returns:
        float32 array of the same shape, in the input frame. The values equal the official
        ``ResizeLongestSide.apply_boxes`` cast to float32; unlike it, the input shape is kept
        (the official always returns ``Bx4``).
    """
    array = real_array("boxes", boxes, (..., 4), finite=False)
    corners = to_input_frame(array.reshape(*array.shape[:-1], 2, 2), size_pair("original_size", original_size))
    return corners.reshape(array.shape)


def _linear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, ...]:
    """1-D linear interpolation ``in_size -> out_size``, ``align_corners=False``, as taps.

    Returns ``(index0, index1, lambda0, lambda1)``, each of length ``out_size``: output ``i`` is
    ``lambda0[i] * x[index0[i]] + lambda1[i] * x[index1[i]]``; lambdas float32, indices int64.

    Reproduces PyTorch's CPU ``upsample_bilinear2d`` weights bit for bit: identity when the sizes
    are equal; otherwise source index ``scale * (dst + 0.5) - 0.5`` in float32 with a fused
    multiply-add (emulated exactly: the float64 product and difference of these float32 values are
    exact, then rounded once), clamped at 0; ``lambda1 = src - floor(src)``, ``lambda0 = 1 -
    lambda1`` in float32; the upper neighbour is clamped to the last input index.
    """
    if out_size == in_size:
        index = np.arange(out_size, dtype=np.int64)
        return index, index, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lambda1 = np.clip(src - index0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    lambda0 = np.float32(1.0) - lambda1
    index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
    return index0, index1, lambda0, lambda1


@lru_cache(maxsize=1)
def _low_res_to_input_taps() -> tuple[np.ndarray, ...]:
    return _linear_taps(IMAGE_SIZE, LOW_RES_MASK_SIZE)


def chain_weights(original: int, resized: int) -> np.ndarray:
    """``original x 256`` float64 matrix of one axis of ``Sam.postprocess_masks``.

    Upsample 256 -> 1024, keep the first ``resized`` samples, resample to ``original``: the
    product of the two interpolation matrices, composed tap by tap (4 products per row; each
    product of two float32 weights is exact in float64).
    """
    outer = _linear_taps(original, resized)
    inner = _low_res_to_input_taps()
    weights = np.zeros((original, LOW_RES_MASK_SIZE), dtype=np.float64)
    rows = np.arange(original)
    for index, weight in ((outer[0], outer[2]), (outer[1], outer[3])):
        for inner_index, inner_weight in ((inner[0], inner[2]), (inner[1], inner[3])):
            product = weight.astype(np.float64) * inner_weight[index].astype(np.float64)
            np.add.at(weights, (rows, inner_index[index]), product)
    return weights


@dataclass(frozen=True)
class _MaskUpsampler:
    """Precomputed ``postprocess_masks`` for one ``(input_size, original_size)`` pair.

    ``out = R @ logits @ C.T`` per mask, with ``R`` (``H x 256``) and ``C`` (``W x 256``) the
    per-axis weights; both read only the first ``used_rows`` / ``used_cols`` low-res rows/columns
    (the crop to ``input_size``). ``C`` is banded (at most 3 contiguous nonzeros per row), so
    ``C.T`` is stored as column blocks ``(c0, c1, lo, hi, C.T[lo:hi, c0:c1])``.

    The work is laid out so the number of BLAS calls does not grow with the number of masks: one
    matmul for ``R`` over all masks, then one per column block writing straight into the
    contiguous output. Each call of a multithreaded BLAS waits for its worker threads, which can
    cost a scheduler time slice when other processes hold the cores: with one matmul per mask and
    block, 4 masks to 1500x2250 took ~850 ms on the 2-core machine at load ~8, ~110 ms with this
    layout (idle: ~15 ms).
    """

    height: int
    width: int
    used_rows: int
    used_cols: int
    rows: np.ndarray  # H x used_rows float32
    col_blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]

    def __call__(self, logits: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Map ``Nx256x256`` float32 logits to ``NxHxW`` float32 logits, or with ``threshold``
        straight to ``NxHxW`` boolean masks (``logits > threshold``), one column block at a time
        so the full-size float logits never exist: a fresh 40 MB array (3 masks at 1500x2250)
        costs ~40 ms of page faults per call on the 2-core VM, more than the arithmetic."""
        count = logits.shape[0]
        cropped = logits[:, : self.used_rows, : self.used_cols]
        # used_rows x (N * used_cols): the masks side by side, so R applies in one matmul.
        side_by_side = np.ascontiguousarray(cropped.transpose(1, 0, 2))
        side_by_side = side_by_side.reshape(self.used_rows, count * self.used_cols)
        partial = (self.rows @ side_by_side).reshape(self.height, count, self.used_cols)
        # (N * H) x used_cols, mask-major, so each column block is one matmul into the output.
        partial = np.ascontiguousarray(partial.transpose(1, 0, 2))
        partial = partial.reshape(count * self.height, self.used_cols)
        if threshold is None:
            out = np.empty((count * self.height, self.width), dtype=np.float32)
            for c0, c1, lo, hi, block in self.col_blocks:
                np.matmul(partial[:, lo:hi], block, out=out[:, c0:c1])
        else:
            out = np.empty((count * self.height, self.width), dtype=bool)
            for c0, c1, lo, hi, block in self.col_blocks:
                np.greater(partial[:, lo:hi] @ block, threshold, out=out[:, c0:c1])
        return out.reshape(count, self.height, self.width)


def _support(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last nonzero column of each row."""
    nonzero = weights != 0
    first = nonzero.argmax(axis=1)
    last = weights.shape[1] - nonzero[:, ::-1].argmax(axis=1)
    return first, last


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)
    return array


@lru_cache(maxsize=16)
def _mask_upsampler(input_size: tuple[int, int], original_size: tuple[int, int]) -> _MaskUpsampler:
    rows = chain_weights(original_size[0], input_size[0])
    cols = chain_weights(original_size[1], input_size[1])
    used_rows = int(_support(rows)[1].max())
    first, last = _support(cols)
    blocks = []
    for c0 in range(0, cols.shape[0], _COL_BLOCK):
        c1 = min(c0 + _COL_BLOCK, cols.shape[0])
        lo, hi = int(first[c0:c1].min()), int(last[c0:c1].max())
        blocks.append((c0, c1, lo, hi, _frozen(cols[c0:c1, lo:hi].T)))
    return _MaskUpsampler(
        height=original_size[0],
        width=original_size[1],
        used_rows=used_rows,
        used_cols=int(last.max()),
        rows=_frozen(rows[:, :used_rows]),
        col_blocks=tuple(blocks),
    )


def postprocess_masks(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    *,
    threshold: float | None = None,
) -> np.ndarray:
    """Upscale decoder mask logits to the original image, as the official ``Sam.postprocess_masks``.

    The official recipe (bilinear 256 -> 1024, ``align_corners=False``; crop ``[:h, :w]``; bilinear
    to ``(H, W)``, ``align_corners=False``) is linear and separable, so each axis is one banded
    matrix, built once per ``(input_size, original_size)`` (a few ms; the 16 most recent pairs are
    cached), then applied with a few float32 matmuls, as many for 1 mask as for 100. The
    interpolation weights equal PyTorch's bit for bit; the float32 results differ from the
    official torch path only by rounding (~1e-6 of the logit scale; thresholded masks agree
    except for logits within rounding of ``MASK_THRESHOLD``).

    Args:
        low_res_logits: ``...x256x256`` floating array of mask logits in the low-res frame (e.g.
            ``Bx4x256x256`` from the decoder); any number of leading dims, computed in float32.
        input_size: ``(h, w)`` of the resized image in the 1024 frame,
            ``preprocess_shape(H, W)``; each side at most 1024.
        original_size: ``(H, W)`` of the original image.
        threshold: if given, return boolean masks ``logits > threshold`` (e.g.
            ``MASK_THRESHOLD``), computed block by block without materialising the float logits;
            the decisions equal thresholding the float result.

    Returns:
        ``...xHxW`` float32 mask logits in the original frame, or boolean masks with ``threshold``.
    """
    if not isinstance(low_res_logits, np.ndarray):
        raise InvalidInputError(
            f"low_res_logits must be a numpy.ndarray; got {type(low_res_logits).__name__}"
        )
    expected = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
    if low_res_logits.ndim < 2 or low_res_logits.shape[-2:] != expected:
        raise InvalidInputError(
            f"low_res_logits must have shape ...x{LOW_RES_MASK_SIZE}x{LOW_RES_MASK_SIZE}; "
            f"got shape {low_res_logits.shape}"
        )
    if low_res_logits.dtype.kind != "f":
        raise InvalidInputError(
            f"low_res_logits must be a floating array; got dtype {low_res_logits.dtype}"
        )
    input_size = size_pair("input_size", input_size)
    if max(input_size) > IMAGE_SIZE:
        raise InvalidInputError(f"input_size sides must be at most {IMAGE_SIZE}; got {input_size}")
    original_size = size_pair("original_size", original_size)

    leading = low_res_logits.shape[:-2]
    # contiguous: the matmuls below are ~4x slower on a strided view (e.g. masks[:, 1:])
    logits = np.ascontiguousarray(low_res_logits.reshape(-1, *expected), dtype=np.float32)
    if logits.shape[0] == 0:
        return np.zeros((*leading, *original_size), dtype=np.float32 if threshold is None else bool)
    out = _mask_upsampler(input_size, original_size)(logits, threshold)
    return out.reshape(*leading, *original_size)


@dataclass(frozen=True, eq=False)
class MaskUpsampling:
    """How a model family's 256x256 mask logits reach the pixels of one image (or crop): linear
    and separable, ``out = rows @ logits @ cols.T``, what the mask generator's windowed
    measurement (:class:`samexport.amg.measure.MaskMeasurer`) reads; ``whole`` upsamples a batch
    ``Nx256x256 -> NxHxW`` float32 the predictor's own way (``whole(logits, threshold=t)``: boolean
    masks ``> t``, as ``predict`` makes them). SAM's is :func:`sam_mask_upsampling`,
    SAM 2.1's ``samexport.sam2_transforms.sam2_mask_upsampling``.

    Attributes:
        rows: ``H x 256`` non-negative weights, each row summing to 1.
        cols: ``W x 256``, the same for the columns.
        whole: the batched upsampling these weights describe (``threshold`` keyword: masks).
    """

    rows: np.ndarray
    cols: np.ndarray
    whole: Callable[[np.ndarray], np.ndarray]

    @property
    def original_size(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)


@lru_cache(maxsize=8)
def sam_mask_upsampling(input_size: tuple[int, int], original_size: tuple[int, int]) -> MaskUpsampling:
    """SAM's :class:`MaskUpsampling` (``Sam.postprocess_masks``: 256 -> 1024, crop to
    ``input_size``, resize to ``original_size``) for one image."""
    input_size, original_size = tuple(input_size), tuple(original_size)
    return MaskUpsampling(
        chain_weights(original_size[0], input_size[0]), chain_weights(original_size[1], input_size[1]),
        partial(postprocess_masks, input_size=input_size, original_size=original_size),
    )
