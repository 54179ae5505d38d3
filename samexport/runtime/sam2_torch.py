"""SAM 2.1's PyTorch reference backend: what parity and tests compare the graphs with."""

from __future__ import annotations

import numpy as np

from samexport import constants as C
from samexport.errors import require


class Sam2TorchBackend:
    """SAM 2.1's PyTorch reference (a :class:`~samexport.runtime.backends.GraphRunner`): the
    graph modules that are exported (``samexport.export.sam2_onnx``), run eagerly on CPU."""

    name = "torch"
    contract = C.SAM2_GRAPHS
    thread_safe = True  # eager torch modules may be called from several threads (backend_lock)

    def __init__(self, model) -> None:
        """``model``: a :class:`samexport.models.sam2.Sam2Image` (``load_sam2``)."""
        from samexport.export.sam2_onnx import Sam2DecoderGraph, Sam2EncoderGraph

        self._torch = require("torch", "torch")
        self.encoder = Sam2EncoderGraph(model).eval()
        self.decoder = Sam2DecoderGraph(model).eval()

    def _call(self, function, *arrays) -> tuple[np.ndarray, ...]:
        torch = self._torch
        with torch.no_grad():
            outputs = function(*(torch.from_numpy(np.array(a, dtype=np.float32)) for a in arrays))  # a copy: inputs may be read-only views
        return tuple(o.numpy() for o in outputs)

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._call(self.encoder, image)

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._call(self.decoder, *features, *prompts)
