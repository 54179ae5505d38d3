"""The loop behind ``SamPredictor.decode_low_res_where``: IoU predictions for every prompt, mask
logits only for the prompts a caller needs.

With a backend that has the decoder's two halves (``Backend.has_decoder_halves``), the second
half, which makes the masks (about half of the decoder's work per prompt), runs only for those
prompts; other backends decode every prompt whole and the rows are selected.

Two calls cost more than one when nearly every prompt is needed (the image tokens, 4 MiB per
prompt, leave one graph and enter the other): in a first run without a switch (ways in a fixed
order), halves ran 0.91x and 0.95x the speed of the whole decoder with 75% and all prompts needed. So a chunk runs whole when the
chunk before it needed more than :data:`HALVES_BREAK_EVEN` of its prompts. With it
(``benchmarks/results/amg-prefilter-vit_b-cpu.json``, ``python benchmarks/amg_prefilter.py``:
vit_b decoder, ONNX Runtime CPU, 64 points, medians of 9 per-round ratios), against the whole
decoder: 1.85x faster per prompt with none needed, 1.54x with 25%, 1.12x with 50%, 1.05x with
75%, 1.00x with all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import numpy as np

from samexport import constants as C
from samexport.errors import InvalidInputError

HALVES_BREAK_EVEN = 0.6  # share of a chunk's prompts needed above which the next runs whole


def decode_where(
    backend,
    features: tuple[np.ndarray, ...],
    batch: int,
    chunks: Iterable[tuple[slice, tuple[np.ndarray, ...]]],
    needed: Callable[[np.ndarray], np.ndarray],
    locked: Callable[[], AbstractContextManager],
    share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(index, logits Ix4x256x256, iou Bx4, share) for ``batch`` prompts decoded in ``chunks``
    of (rows, the decoder's prompt inputs); ``features``: the image's, as the encoder gave them
    (the backend's ``contract.encoder_outputs``; SAM: the embedding alone); ``needed`` maps a
    chunk's Kx4 IoU predictions to K bools; ``locked()`` guards each backend call. ``share``: the
    share of the prompts needed in the chunk before the first (a previous call's last, returned).
    A backend of another contract than SAM's runs through ``run_decoder``, whose first two
    outputs are the logits and IoU predictions of every contract."""
    has_halves = bool(getattr(backend, "has_decoder_halves", False))
    sam = getattr(backend, "contract", C.SAM_GRAPHS) is C.SAM_GRAPHS
    index, logits, iou = [], [], np.empty((batch, C.NUM_MASK_TOKENS), np.float32)
    for part, inputs in chunks:
        halves = has_halves and share <= HALVES_BREAK_EVEN
        with locked():
            if halves:
                scores, mask_tokens, image_tokens = backend.decode_scores(*features, *inputs)
            elif sam:
                low_res, scores = backend.decode(*features, *inputs)
            else:
                low_res, scores = backend.run_decoder(features, *inputs)[:2]
        wanted = np.asarray(needed(scores))
        if wanted.dtype != bool or wanted.shape != (len(scores),):
            raise InvalidInputError(
                f"needed must return one bool per prompt ({len(scores)}); got {wanted.dtype} {wanted.shape}"
            )
        iou[part] = scores
        rows = np.flatnonzero(wanted)
        share = len(rows) / len(scores)
        if halves and len(rows):
            if len(rows) < len(scores):  # all rows: the tokens go on as they are, no copy
                mask_tokens, image_tokens = mask_tokens[rows], image_tokens[rows]
            with locked():
                logits.append(backend.decode_masks(mask_tokens, image_tokens))
        elif not halves:
            logits.append(low_res if len(rows) == len(scores) else low_res[rows])
        index.append(rows + part.start)
    if not logits:
        size = C.LOW_RES_MASK_SIZE
        logits.append(np.zeros((0, C.NUM_MASK_TOKENS, size, size), np.float32))
    return np.concatenate(index), np.concatenate(logits), iou, share
