"""SAM's PyTorch reference backend: what parity, the stored references and tests compare the
graphs with (SAM 2.1's is :mod:`samexport.runtime.sam2_torch`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from samexport import constants as C
from samexport.errors import require

if TYPE_CHECKING:
    from samexport.models import Sam


class TorchBackend:
    """The PyTorch reference: the same graph modules that are exported, run eagerly on CPU."""

    name = "torch"
    thread_safe = True  # eager torch modules may be called from several threads (backend_lock)
    shares_mask_input = True
    has_decoder_halves = True
    contract = C.SAM_GRAPHS

    def __init__(self, sam: Sam) -> None:
        from samexport.export.wrappers import DecoderGraph, EncoderGraph

        self._torch = require("torch", "torch")
        self.encoder = EncoderGraph(sam).eval()
        self.decoder = DecoderGraph(sam).eval()

    def encode(self, image: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.encoder(self._torch.from_numpy(image)).numpy()

    def _call(self, function, *arrays) -> tuple[np.ndarray, ...]:
        torch = self._torch
        with torch.no_grad():
            outputs = function(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return tuple(o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,)))

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        return self._call(self.decoder, image_embeddings, point_coords, point_labels, mask_input, has_mask_input)

    def decode_scores(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        return self._call(self.decoder.scores, image_embeddings, point_coords, point_labels, mask_input, has_mask_input)

    def decode_masks(self, mask_tokens, image_tokens):
        return self._call(self.decoder.masks, mask_tokens, image_tokens)[0]

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return (self.encode(image),)

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.decode(*features, *prompts)
