"""The host-side transforms a graph contract's model family takes, chosen in one place.

Each family's graphs come with their own NumPy transforms on either side: the image into the
encoder's 1x3x1024x1024 input, and the decoder's 256x256 mask logits back to the image's pixels.
The predictors of each family call their own (``runtime.predictor``, ``runtime.sam2_predictor``);
code that holds only a contract (the stored references, ``samexport bench``, the benchmarks)
asks here, so the choice is written once:

- SAM, MobileSAM (``sam``): ``transforms.preprocess`` (longest side to 1024, normalise, pad) and
  ``transforms.sam_mask_upsampling`` (256 -> 1024, crop to the resized image, resize).
- SAM 2.1 (``sam2``): ``sam2_transforms.preprocess_sam2`` (a square 1024 resize on [0, 1],
  ImageNet statistics) and ``sam2_transforms.sam2_mask_upsampling`` (one resize of the whole map).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.sam2_transforms import preprocess_sam2, sam2_mask_upsampling
from samexport.transforms import MaskUpsampling, preprocess, preprocess_shape, sam_mask_upsampling

_PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    C.SAM_GRAPHS.name: preprocess,
    C.SAM2_GRAPHS.name: preprocess_sam2,
}
_MASK_UPSAMPLING: dict[str, Callable[[tuple[int, int]], MaskUpsampling]] = {
    C.SAM_GRAPHS.name: lambda size: sam_mask_upsampling(preprocess_shape(*size), size),
    C.SAM2_GRAPHS.name: sam2_mask_upsampling,
}


def _family(table: dict, contract: C.GraphContract):
    try:
        return table[contract.name]
    except KeyError:
        raise SamExportError(f"no host transforms for the graph contract {contract.name!r}; known: {', '.join(table)}") from None


def preprocess_for(contract: C.GraphContract) -> Callable[[np.ndarray], np.ndarray]:
    """The function turning an HxWx3 uint8 RGB image into ``contract``'s encoder input
    (1x3x1024x1024 float32), as that family's predictor does."""
    return _family(_PREPROCESS, contract)


def mask_upsampling_for(contract: C.GraphContract, original_size: tuple[int, int]) -> MaskUpsampling:
    """How ``contract``'s 256x256 mask logits reach the pixels of an image of ``original_size``
    (H, W): the :class:`~samexport.transforms.MaskUpsampling` that family's predictor returns from
    ``mask_upsampling()`` for that image (``whole(logits, threshold)`` is its ``predict`` path)."""
    size = (int(original_size[0]), int(original_size[1]))
    return _family(_MASK_UPSAMPLING, contract)(size)
