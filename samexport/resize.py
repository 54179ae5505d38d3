"""``ResizeLongestSide``: the official ``segment_anything.utils.transforms.ResizeLongestSide``
with the same numbers, over :mod:`samexport.transforms` (``predictor.transform``).

NumPy methods never import torch; the ``*_torch`` methods, whose official counterparts return
torch tensors, raise :class:`~samexport.errors.MissingExtraError` naming the ``torch`` extra when
it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from samexport import transforms
from samexport.constants import IMAGE_SIZE
from samexport.errors import require_torch

if TYPE_CHECKING:
    import torch

__all__ = ["ResizeLongestSide"]


class ResizeLongestSide:
    """``predictor.transform``: the official ``ResizeLongestSide`` with the same numbers.

    Frames: *original* (the user's image, ``(H, W)``) and the *input* frame (longest side
    ``target_length``, 1024 for SAM). NumPy methods return NumPy, ``*_torch`` methods torch.
    """

    def __init__(self, target_length: int = IMAGE_SIZE) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """``(h, w)`` of an ``oldh x oldw`` image resized to longest side ``long_side_length``
        (float64 scale, round half up: the official arithmetic, official rounding to 0 included)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB (or float in [0, 1]) -> hxwx3 uint8, Pillow bilinear, byte for byte the
        official (see :func:`samexport.transforms.resize_image`)."""
        image = transforms.check_image(transforms.as_uint8_image(image))
        if self.target_length == IMAGE_SIZE:
            return transforms.resize_image(image)
        height, width = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``...x2`` (X, Y) in the original frame -> float64 copy in the input frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float)  # a copy, float64, as the official deepcopy+astype
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Boxes (X0, Y0, X1, Y1), any shape with a multiple of 4 values -> Bx4 float64."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """``...x2`` tensor in the original frame -> float32 copy in the input frame (same device)."""
        torch = require_torch("ResizeLongestSide.apply_coords_torch")
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = torch.as_tensor(coords).detach().clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Bx4 tensor of boxes in the original frame -> Bx4 float32 in the input frame."""
        torch = require_torch("ResizeLongestSide.apply_boxes_torch")
        boxes = torch.as_tensor(boxes)
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """BxCxHxW float tensor -> resized to longest side ``target_length`` (bilinear,
        antialiased). Unlike the official method, the size comes from (H, W); the official reads
        it from (B, C) by mistake. As there, this does not match :meth:`apply_image` exactly."""
        torch = require_torch("ResizeLongestSide.apply_image_torch")
        size = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return torch.nn.functional.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)
