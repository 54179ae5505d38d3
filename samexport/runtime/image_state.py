"""The current image of a ``SamPredictor``: one immutable :class:`ImageState`, and the official
predictor's attributes (``is_image_set``, ``original_size``, ``input_size``, ``features``) as
views of it that client code written for ``segment_anything`` may read and assign."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from samexport import constants as C
from samexport.compat import require_torch
from samexport.runtime.prompts import host_array
from samexport.validate import image_size, real_array, size_pair

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ImageState:
    """Everything a prediction needs to know about the current image, replaced as a whole.

    Attributes:
        embedding: 1x256x64x64 float32 image embedding, or ``None``.
        original_size: ``(H, W)`` of the image as given.
        input_size: ``(h, w)`` of the resized image in the 1024 frame.
        is_set: whether predictions may use this state (``set_image`` sets it; client code that
            restores a cached embedding field by field sets it last, as with the official).
    """

    embedding: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    is_set: bool = False


NO_IMAGE = ImageState()


class OfficialImageAttributes:
    """The official predictor's image attributes over ``self._state`` (an :class:`ImageState`).

    Each assignment replaces the whole state in one step, so a prediction in another thread
    reads either the state before or after it.
    """

    _state: ImageState = NO_IMAGE

    @property
    def image_state(self) -> ImageState:
        """The current :class:`ImageState` (one consistent snapshot)."""
        return self._state

    @property
    def is_image_set(self) -> bool:
        return self._state.is_set

    @is_image_set.setter
    def is_image_set(self, value: bool) -> None:
        self._state = replace(self._state, is_set=bool(value))

    @property
    def original_size(self) -> tuple[int, int] | None:
        return self._state.original_size

    @original_size.setter
    def original_size(self, value) -> None:
        self._state = replace(self._state, original_size=None if value is None else image_size("original_size", value))

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self._state.input_size

    @input_size.setter
    def input_size(self, value) -> None:
        self._state = replace(self._state, input_size=None if value is None else size_pair("input_size", value))

    @property
    def embedding(self) -> np.ndarray | None:
        """The current image's embedding as NumPy, 1x256x64x64 float32 (``None`` before
        ``set_image``): the NumPy counterpart of ``get_image_embedding()``."""
        return self._state.embedding

    @property
    def features(self) -> torch.Tensor | None:
        """The official attribute: the embedding as a 1x256x64x64 float32 torch tensor sharing
        memory with :attr:`embedding` (``None`` before ``set_image``); needs torch. Assigning a
        tensor or array (e.g. a cached embedding) replaces the embedding, as with the official."""
        embedding = self._state.embedding
        if embedding is None:
            return None
        torch = require_torch("SamPredictor.features", numpy_name="SamPredictor.embedding")
        return torch.from_numpy(embedding)

    @features.setter
    def features(self, value) -> None:
        array = host_array(value)
        if array is not None:
            array = real_array("features", array, C.IMAGE_EMBEDDINGS.shape).astype(np.float32)
            array = np.ascontiguousarray(array)
        self._state = replace(self._state, embedding=array)
