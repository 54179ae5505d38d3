"""Stability scores, boxes and binary masks of low-res logits, upsampled only where it matters.

The official generators upsample every mask to the (crop) image size (SAM's
``Sam.postprocess_masks``, SAM 2.1's one bilinear resize) and then count pixels above
``threshold - offset``, ``threshold`` and ``threshold + offset``. Each family's upsampling is a
:class:`samexport.transforms.MaskUpsampling` (its per-axis weights and its batched form). Upsampling is a product
``R @ logits @ C.T`` whose rows of ``R`` and ``C`` are non-negative and sum to 1, so every
upsampled pixel is a convex combination of the few low-res logits in its support. A pixel whose
support lies entirely at or below ``t - margin`` is therefore below ``t``: only the output window
fed by low-res logits above the lowest threshold can hold a counted pixel. :class:`MaskMeasurer`
computes the upsampled logits in that window only and reads every decision off them, so the
stability score, box and mask are those of the full upsampling (to float32 rounding) at a
fraction of the cost for masks smaller than the image. Masks that spread over much of the image
are upsampled whole, in batches, through the family's ``MaskUpsampling.whole``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from samexport.constants import LOW_RES_MASK_SIZE, MASK_THRESHOLD
from samexport.transforms import MaskUpsampling

# Logits this far below the lowest threshold cannot reach it after interpolation: float32
# rounding of a convex combination is ~1e-7 relative, far below this for logits up to ~1e4.
_WINDOW_MARGIN = 1e-2
# Masks whose window covers more than this fraction of the image are upsampled whole, in batches.
_WINDOW_FRACTION = 0.25
# Memory for one batch of whole upsampled masks (float32).
_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class _Axis:
    """One axis of a :class:`MaskUpsampling`: ``weights`` is ``out x 256`` float32, output ``o``
    reads low-res indices ``[first[o], last[o])`` (non-decreasing in ``o``)."""

    weights: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def build(cls, weights: np.ndarray) -> _Axis:
        if (weights < 0).any():
            raise RuntimeError("interpolation weights must be non-negative")
        nonzero = weights != 0
        first = nonzero.argmax(axis=1)
        last = weights.shape[1] - nonzero[:, ::-1].argmax(axis=1)
        if (np.diff(first) < 0).any() or (np.diff(last) < 0).any():
            raise RuntimeError("interpolation supports must be monotone")
        weights = weights.astype(np.float32)
        weights.setflags(write=False)
        return cls(weights, first, last)

    def window(self, lo: int, hi: int) -> tuple[int, int, int, int]:
        """Outputs ``[o0, o1)`` whose support meets low-res ``[lo, hi)``, and the low-res range
        ``[s0, s1)`` they read; ``o0 == o1`` when none does."""
        o0 = int(np.searchsorted(self.last, lo, side="right"))
        o1 = int(np.searchsorted(self.first, hi, side="left"))
        if o0 >= o1:
            return 0, 0, 0, 0
        return o0, o1, int(self.first[o0]), int(self.last[o1 - 1])


@lru_cache(maxsize=8)
def _axes(upsampling: MaskUpsampling) -> tuple[_Axis, _Axis]:
    rows = _Axis.build(upsampling.rows)
    cols = _Axis.build(upsampling.cols)
    cols_t = np.ascontiguousarray(cols.weights.T)  # 256 x W, the layout the column pass reads
    cols_t.setflags(write=False)
    return rows, _Axis(cols_t, cols.first, cols.last)


@dataclass(frozen=True)
class MaskPatch:
    """A binary mask stored as its bounding-box patch, bit-packed.

    ``top, left`` place the patch in the frame of the mask's image (or crop); an empty mask
    has a 0x0 patch.
    """

    top: int
    left: int
    height: int
    width: int
    bits: np.ndarray

    @classmethod
    def from_array(cls, patch: np.ndarray, top: int, left: int) -> MaskPatch:
        return cls(top, left, patch.shape[0], patch.shape[1], np.packbits(patch, axis=None))

    def array(self) -> np.ndarray:
        """The ``height x width`` bool patch."""
        flat = np.unpackbits(self.bits, count=self.height * self.width)
        return flat.reshape(self.height, self.width).astype(bool)

    def shifted(self, dy: int, dx: int) -> MaskPatch:
        """The same patch placed ``dy`` rows lower and ``dx`` columns further right."""
        return MaskPatch(self.top + dy, self.left + dx, self.height, self.width, self.bits)

    def paste(self, size: tuple[int, int], dy: int = 0, dx: int = 0) -> np.ndarray:
        """The full ``size`` (H, W) bool mask, the patch shifted by ``(dy, dx)``."""
        out = np.zeros(size, dtype=bool)
        top, left = self.top + dy, self.left + dx
        out[top : top + self.height, left : left + self.width] = self.array()
        return out


@dataclass
class Measurements:
    """Per mask: pixel counts above ``+offset`` and ``-offset``, box, and the mask itself."""

    high_counts: np.ndarray  # N int64: pixels above threshold + offset
    low_counts: np.ndarray  # N int64: pixels above threshold - offset
    boxes: np.ndarray  # Nx4 int64 (X0, Y0, X1, Y1) inclusive, zeros for an empty mask
    patches: list[MaskPatch]

    def stability_scores(self) -> np.ndarray:
        """N float32 IoUs of the masks at ``+offset`` and ``-offset`` (NaN for 0 / 0), as the
        official ``calculate_stability_score`` computes them."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.high_counts.astype(np.float32) / self.low_counts.astype(np.float32)


class MaskMeasurer:
    """Measure decoder masks of one image (or crop) at its own resolution.

    Args:
        upsampling: how the masks reach the image (or crop) they are for: the predictor's
            ``mask_upsampling()`` (SAM: ``transforms.sam_mask_upsampling(input_size,
            original_size)``; SAM 2.1: ``sam2_transforms.sam2_mask_upsampling(original_size)``).
        stability_offset: logit offset of the stability score (>= 0).
        threshold: the logit above which a pixel is in the mask (0.0, both families' default).
    """

    def __init__(self, upsampling: MaskUpsampling, stability_offset: float, threshold: float = MASK_THRESHOLD) -> None:
        self.upsampling = upsampling
        self.original_size = upsampling.original_size
        self.rows, self.cols = _axes(upsampling)
        self.threshold = float(threshold)
        self.high = self.threshold + stability_offset
        self.low = self.threshold - stability_offset
        self.floor = min(self.high, self.low, self.threshold) - _WINDOW_MARGIN

    def window(self, logits: np.ndarray) -> tuple[int, int, int, int, int, int, int, int] | None:
        """``(y0, y1, r0, r1, x0, x1, c0, c1)``: the output rows/columns of one 256x256 mask that
        can exceed the lowest threshold and the low-res rows/columns they read; ``None`` if none."""
        rows_active = np.flatnonzero((logits > self.floor).any(axis=1))
        if rows_active.size == 0:
            return None
        band = logits[rows_active[0] : rows_active[-1] + 1] > self.floor
        cols_active = np.flatnonzero(band.any(axis=0))
        y0, y1, r0, r1 = self.rows.window(int(rows_active[0]), int(rows_active[-1]) + 1)
        x0, x1, c0, c1 = self.cols.window(int(cols_active[0]), int(cols_active[-1]) + 1)
        if y0 == y1 or x0 == x1:
            return None
        return y0, y1, r0, r1, x0, x1, c0, c1

    def measure(self, logits: np.ndarray) -> Measurements:
        """Counts, boxes and masks of ``Nx256x256`` float32 low-res logits.

        Masks whose window is small are upsampled in their window, one mask at a time (small
        matmuls, mostly under BLAS's threading threshold); the others through the batched
        ``upsampling.whole`` in chunks of bounded memory: a multithreaded BLAS call per mask
        costs a thread handoff each, measured 20x slower per mask on the busy 2-core machine.
        """
        size = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
        if logits.ndim != 3 or logits.shape[1:] != size:
            raise ValueError(f"logits must be Nx256x256; got {logits.shape}")
        count = logits.shape[0]
        result = Measurements(
            np.zeros(count, np.int64), np.zeros(count, np.int64), np.zeros((count, 4), np.int64),
            [MaskPatch.from_array(np.zeros((0, 0), bool), 0, 0) for _ in range(count)],
        )
        height, width = self.original_size
        large = []
        for i in range(count):
            window = self.window(logits[i])
            if window is None:
                continue
            y0, y1, r0, r1, x0, x1, c0, c1 = window
            if (y1 - y0) * (x1 - x0) > _WINDOW_FRACTION * height * width:
                large.append(i)
                continue
            partial = logits[i, r0:r1, c0:c1] @ self.cols.weights[c0:c1, x0:x1]
            self._read(result, i, y0, x0, self.rows.weights[y0:y1, r0:r1] @ partial)
        chunk = max(1, _CHUNK_BYTES // (4 * height * width))
        for start in range(0, len(large), chunk):
            index = large[start : start + chunk]
            upsampled = self.upsampling.whole(logits[index])
            for i, mask in zip(index, upsampled):
                self._read(result, i, 0, 0, mask)
        return result

    def _read(self, result: Measurements, i: int, top: int, left: int, upsampled: np.ndarray) -> None:
        """Fill mask ``i`` of ``result`` from its upsampled logits, placed at ``(top, left)``."""
        result.high_counts[i] = np.count_nonzero(upsampled > self.high)
        result.low_counts[i] = np.count_nonzero(upsampled > self.low)
        foreground = upsampled > self.threshold
        rows = np.flatnonzero(foreground.any(axis=1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(foreground.any(axis=0))
        ya, yb, xa, xb = rows[0], rows[-1], cols[0], cols[-1]
        result.boxes[i] = (left + xa, top + ya, left + xb, top + yb)
        result.patches[i] = MaskPatch.from_array(foreground[ya : yb + 1, xa : xb + 1], top + ya, left + xa)
