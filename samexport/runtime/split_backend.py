"""One backend made of two: the encoder on one runtime, the decoder (and its halves) on another.

``backend="auto"`` on a CPU with OpenVINO installed runs the encoder on OpenVINO in f32, which
was faster than ONNX Runtime's CPU provider for every artifact measured, and keeps the decoder on
ONNX Runtime, which OpenVINO f32 did not beat on the one-prompt decoder (figures and the decision:
``docs/openvino.md``, "What auto does"). The precision stays the graph's: auto never picks bf16.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np


class SplitBackend:
    """``encode`` on ``encoder``, ``decode`` / ``decode_scores`` / ``decode_masks`` on ``decoder``
    (two backends of the same artifact).

    Attributes:
        name: ``<encoder's name>+<decoder's name>``, e.g. ``openvino-cpu-f32+onnxruntime-cpu``:
            what reports, ``bench`` and ``verify`` print as the backend.
        graphs: graph -> the name of the backend that runs it (``encoder``, ``decoder``).
        inference_precision: the encoder's (``f32``), or None where it has none (the graph's).
    """

    # May be called from several threads: calls into a side that is not thread-safe (OpenVINO's
    # one infer request per graph) are serialised here, so ONNX Runtime decoder calls still overlap.
    thread_safe = True

    def __init__(self, encoder, decoder, *, encoder_lock=None, decoder_lock=None) -> None:
        """``encoder_lock`` / ``decoder_lock``: held around calls into that side (None: none;
        :func:`samexport.runtime.backends.backend_lock` gives the right one per backend)."""
        self.encoder_backend, self.decoder_backend = encoder, decoder
        self.name = f"{encoder.name}+{decoder.name}"
        self.graphs = {"encoder": encoder.name, "decoder": decoder.name}
        self.inference_precision = getattr(encoder, "inference_precision", None)
        self.shares_mask_input = getattr(decoder, "shares_mask_input", False)
        self.has_decoder_halves = getattr(decoder, "has_decoder_halves", False)
        self._encoder_lock, self._decoder_lock = encoder_lock, decoder_lock

    def encode(self, image: np.ndarray) -> np.ndarray:
        with self._encoder_lock or nullcontext():
            return self.encoder_backend.encode(image)

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        with self._decoder_lock or nullcontext():
            return self.decoder_backend.decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)

    def decode_scores(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        with self._decoder_lock or nullcontext():
            return self.decoder_backend.decode_scores(
                image_embeddings, point_coords, point_labels, mask_input, has_mask_input)

    def decode_masks(self, mask_tokens, image_tokens):
        with self._decoder_lock or nullcontext():
            return self.decoder_backend.decode_masks(mask_tokens, image_tokens)
