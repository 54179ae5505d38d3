"""``SamPredictor``: the official predictor's API over exported graphs.

NumPy in and out for the official NumPy methods (``set_image``, ``predict``) and samexport's own
(``predict_batch``, ``decode_low_res``, ``embedding``); torch tensors where the official API
returns them (``predict_torch``, ``set_torch_image``, ``get_image_embedding``, ``features``), which
need torch installed.

Thread safety: the current image is one immutable :class:`ImageState` (embedding, sizes) that
``set_image`` replaces in one assignment once the new embedding is ready, and that every
prediction reads once, so a prediction racing ``set_image`` in another thread sees the old image
or the new one, never a mixture. Backends that cannot be called from two threads at once
(TensorRT) are serialised by a lock shared by every predictor on that backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.errors import (
    InvalidInputError,
    NoImageSetError,
    SamExportError,
    is_torch_module,
    require_torch,
    torch_model_error,
)
from samexport.resize import ResizeLongestSide
from samexport.runtime.backends import Backend, BackendName, backend_lock
from samexport.runtime.decode_budget import DEFAULT_DECODE_BUDGET, prompts_per_call
from samexport.runtime.image_state import NO_IMAGE, ImageState, OfficialImageAttributes, checked_embedding
from samexport.runtime.model import ArtifactModel, open_model
from samexport.runtime.prefilter import decode_where
from samexport.runtime.prompts import PromptBatch, check_prompt, check_prompts, even_chunks, host_array, prompt_batch
from samexport.validate import image_size

if TYPE_CHECKING:
    import torch

__all__ = ["ImageState", "SamPredictor"]

_PIXEL_MEAN = np.asarray(C.PIXEL_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
_PIXEL_STD = np.asarray(C.PIXEL_STD, dtype=np.float32).reshape(1, 3, 1, 1)


class SamPredictor(OfficialImageAttributes):
    """Predict masks for one image at a time, like ``segment_anything.SamPredictor``.

    Args:
        sam_model: an artifact directory from ``samexport build``, a :class:`~samexport.SamModel`
            (from ``samexport.sam_model_registry[...]`` or ``samexport.load``), or any object with
            the :class:`~samexport.runtime.backends.Backend` methods (e.g. ``TorchBackend``). A
            torch ``Sam`` is refused with a message saying what to pass.
        backend: which runtime to use for an artifact directory.
        decode_budget_bytes: an upper bound on the memory decoding adds, however many prompts
            a call (or the mask generator's ``points_per_batch``) holds: batches of more than
            :func:`prompts_per_call` prompts (``(budget - 256 MiB) // 44 MiB``; 40 with the
            2 GiB default) are decoded in equal chunks, with the results of one call (decoder
            outputs and thresholded masks bit for bit; upsampled float logits to float rounding,
            as between any two batch sizes). Not in the budget: the returned arrays themselves
            (e.g. ``B x 3 x H x W`` masks), and budgets under 300 MiB (one prompt at a time
            needs that). Measured for ONNX Runtime on CPU; other backends differ.

    Attributes:
        model: the :class:`~samexport.SamModel` passed in, else an
            :class:`~samexport.runtime.model.ArtifactModel` (``mask_threshold``,
            ``image_encoder.img_size``).
        transform: :class:`~samexport.resize.ResizeLongestSide` for the 1024 frame.
        backend: the runtime.

    Example::

        predictor = SamPredictor("engines/vit_b-fp32")
        predictor.set_image(image)  # HxWx3 uint8 RGB
        masks, scores, logits = predictor.predict(point_coords=np.array([[500, 375]]),
                                                  point_labels=np.array([1]))
    """

    def __init__(
        self,
        sam_model: ArtifactModel | Path | str | Backend,
        backend: BackendName = "auto",
        *,
        decode_budget_bytes: int = DEFAULT_DECODE_BUDGET,
    ) -> None:
        if is_torch_module(sam_model):
            raise torch_model_error(sam_model, "SamPredictor")
        if isinstance(sam_model, ArtifactModel):
            model = sam_model
        elif isinstance(sam_model, (str, Path)):
            model = open_model(sam_model, backend=backend)
        elif callable(getattr(sam_model, "encode", None)) and callable(getattr(sam_model, "decode", None)):
            model = ArtifactModel(sam_model)
        else:
            raise SamExportError(
                "SamPredictor takes an artifact directory from `samexport build`, a samexport "
                f"SamModel (samexport.sam_model_registry[...] or samexport.load) or a backend; got "
                f"{type(sam_model).__name__}"
            )
        if getattr(model.backend, "contract", C.SAM_GRAPHS) is not C.SAM_GRAPHS:
            raise SamExportError("SamPredictor runs SAM and MobileSAM; this backend holds SAM 2.1: use samexport.SAM2ImagePredictor")
        if isinstance(decode_budget_bytes, bool) or not isinstance(decode_budget_bytes, int) or decode_budget_bytes < 1:
            raise InvalidInputError(f"decode_budget_bytes must be a positive int; got {decode_budget_bytes!r}")
        self.model = model
        self.backend: Backend = model.backend
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.decode_budget_bytes = decode_budget_bytes
        self._lock = backend_lock(self.backend)
        self._zero_masks: tuple[np.ndarray, np.ndarray] | None = None
        self._shares_mask_input = bool(getattr(self.backend, "shares_mask_input", False))
        self._needed_share = 0.0  # of the last decode_low_res_where chunk (prefilter.decode_where)
        self._state = NO_IMAGE

    @property
    def device(self) -> torch.device:
        """Where the torch tensors of the compatibility methods are made (``cpu``)."""
        return self.model.device

    # -- image state (the official attributes are in OfficialImageAttributes) ------------

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding as the official returns it: a 1x256x64x64 float32 torch
        tensor (on the CPU). Needs torch; :attr:`embedding` is the same data as NumPy."""
        embedding = self._current().embedding
        torch = require_torch("SamPredictor.get_image_embedding()", numpy_name="SamPredictor.embedding")
        return torch.from_numpy(embedding)

    def set_embedding(
        self, embedding: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> None:
        """Restore an image from its stored embedding without running the encoder (e.g. a row of
        ``samexport embed``): afterwards ``predict`` gives the masks ``set_image`` would for that
        embedding.

        Args:
            embedding: 1x256x64x64 (or 256x64x64) image embedding, any float dtype.
            original_size: ``(H, W)`` of the original image, pixels.
            input_size: ``(h, w)`` of the image resized into the 1024 frame; checked when given.

        Raises:
            ValueError: a wrong shape, non-finite values, sizes that do not fit together, or an
                ``original_size`` over ``samexport.constants.MAX_IMAGE_PIXELS``.
        """
        original_size = image_size("original_size", original_size)  # predict allocates H x W masks
        features, size, resized = checked_embedding(embedding, original_size, input_size)
        self._state = ImageState(features, size, resized, True)  # one assignment: thread safe

    def reset_image(self) -> None:
        """Forget the current image."""
        self._state = NO_IMAGE

    def _current(self) -> ImageState:
        """The current state, read once; a RuntimeError if predictions cannot use it."""
        state = self._state
        if not state.is_set or state.embedding is None or state.original_size is None or state.input_size is None:
            raise NoImageSetError("no image is set: call set_image(image) before predicting")
        return state

    def _locked(self):
        return self._lock if self._lock is not None else contextlib.nullcontext()

    def _encode_state(self, padded: np.ndarray, original_size, input_size) -> None:
        try:
            with self._locked():
                embedding = self.backend.encode(padded)
        except BaseException:
            self._state = NO_IMAGE  # as the official, a failed set_image leaves no image
            raise
        self._state = ImageState(embedding, tuple(original_size), tuple(input_size), True)

    def set_image(self, image: np.ndarray, image_format: Literal["RGB", "BGR"] = "RGB") -> None:
        """Encode ``image`` for later prompts.

        Args:
            image: HxWx3 uint8 (0..255), or floating point in [0, 1] (scaled by 255 and
                truncated to uint8, as the official does), channel order ``image_format``.
            image_format: ``"RGB"`` or ``"BGR"``.

        Until the new embedding is ready, predictions in other threads use the previous image.
        """
        if image_format not in ("RGB", "BGR"):
            raise InvalidInputError(f"image_format must be 'RGB' or 'BGR'; got {image_format!r}")
        image = transforms.check_image(transforms.as_uint8_image(image))
        if image_format == "BGR":
            image = image[..., ::-1]
        original_size = image.shape[:2]
        input_size = transforms.preprocess_shape(*original_size)
        self._encode_state(transforms.preprocess(np.ascontiguousarray(image)), original_size, input_size)

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an image already resized to the 1024 frame, as the official ``set_torch_image``.

        Args:
            transformed_image: 1x3xhxw tensor (or array), values 0..255 (uint8 or float), resized
                with ``transform.apply_image`` so that ``max(h, w) == 1024``; normalised and
                zero-padded here.
            original_image_size: ``(H, W)`` of the image before resizing.
        """
        array = host_array(transformed_image)
        size = self.model.image_encoder.img_size
        if (array.ndim != 4 or array.shape[0] != 1 or array.shape[1] != 3
                or max(array.shape[2:]) != size or min(array.shape[2:]) < 1):
            raise InvalidInputError(
                f"set_torch_image input must be 1x3xhxw with long side {size}; got shape {tuple(array.shape)}"
            )
        if array.dtype.kind not in "iuf":
            raise InvalidInputError(f"set_torch_image input must be numeric; got dtype {array.dtype}")
        original_size = image_size("original_image_size", original_image_size)
        height, width = array.shape[2:]
        padded = np.zeros((1, 3, size, size), np.float32)
        padded[:, :, :height, :width] = (array.astype(np.float32) - _PIXEL_MEAN) / _PIXEL_STD
        if not np.isfinite(padded).all():
            raise InvalidInputError("set_torch_image input contains NaN or infinite values")
        self._encode_state(padded, original_size, (height, width))

    # -- prompts -----------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt, with the semantics of the official ``SamPredictor.predict``.

        Any combination of prompts is accepted, none included (the official then decodes no
        sparse prompt at all, and so does this).

        Args:
            point_coords: Nx2 (X, Y) pixel coordinates in the original image.
            point_labels: N labels, 1 foreground, 0 background (also -1, 2, 3: see :meth:`predict_batch`).
            box: length-4 (X0, Y0, X1, Y1) box in original-image pixels.
            mask_input: 1x256x256 low-resolution logits from a previous prediction.
            multimask_output: three masks (tokens 1..3) instead of one (token 0).
            return_logits: return float logits instead of boolean masks.

        Returns:
            (masks CxHxW bool (or float32 logits), scores C float32, low_res_logits Cx256x256
            float32), with C = 3 if ``multimask_output`` else 1.
        """
        checked = check_prompt(point_coords, point_labels, box, mask_input)
        state = self._current()
        prompt = prompt_batch(checked, state.original_size, self._no_mask_input)
        masks, scores, low_res = self._run(state, prompt, multimask_output, return_logits)
        return masks[0], scores[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for B prompts on the current image, decoded in chunks within
        ``decode_budget_bytes`` (results equal one call).

        Args:
            point_coords: BxNx2 (X, Y) pixel coordinates in the original image.
            point_labels: BxN labels, 1 foreground, 0 background, -1 padding (ignored), 2 / 3 a
                box's top-left / bottom-right corner (as ``boxes`` adds them); anything else is
                refused.
            boxes: Bx4 (X0, Y0, X1, Y1) boxes in original-image pixels.
            mask_input: Bx1x256x256 low-resolution logits.
            multimask_output, return_logits: as in :meth:`predict`.

        Returns:
            (masks BxCxHxW, scores BxC, low_res_logits BxCx256x256), NumPy.
        """
        state = self._current()
        prompt = prompt_batch(check_prompts(point_coords, point_labels, boxes, mask_input), state.original_size, self._no_mask_input)
        return self._run(state, prompt, multimask_output, return_logits)

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official ``predict_torch``: prompts already in the 1024 frame, torch in and out.

        Args:
            point_coords: BxNx2 tensor of (X, Y) in the 1024 frame (``transform.apply_coords_torch``).
            point_labels: BxN tensor of labels.
            boxes: Bx4 tensor of boxes in the 1024 frame (``transform.apply_boxes_torch``).
            mask_input: Bx1x256x256 tensor of low-resolution logits.
            multimask_output, return_logits: as in :meth:`predict`.

        Returns:
            (masks BxCxHxW bool (or float32 logits), iou_predictions BxC, low_res_masks
            BxCx256x256), torch tensors on the device of the prompt tensors (``cpu`` if none).
            Needs torch.
        """
        torch = require_torch("SamPredictor.predict_torch", numpy_name="SamPredictor.predict_batch")
        state = self._current()
        given = [v for v in (point_coords, point_labels, boxes, mask_input) if isinstance(v, torch.Tensor)]
        device = given[0].device if given else torch.device("cpu")
        boxes = host_array(boxes)
        if boxes is not None and boxes.ndim > 2 and boxes.size % 4 == 0:
            boxes = boxes.reshape(-1, 4)  # the official prompt encoder reshapes boxes to (-1, 2, 2)
        checked = check_prompts(host_array(point_coords), host_array(point_labels), boxes, host_array(mask_input))
        prompt = prompt_batch(checked, None, self._no_mask_input)
        outputs = self._run(state, prompt, multimask_output, return_logits)
        return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outputs)  # type: ignore[return-value]

    def decode_low_res(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """All four outputs at low resolution: (logits Bx4x256x256, iou Bx4), no upsampling;
        prompts in the original frame, chunked as :meth:`predict_batch`."""
        state = self._current()
        prompt = prompt_batch(check_prompts(point_coords, point_labels, boxes, mask_input), state.original_size, self._no_mask_input)
        return self._run(state, prompt, None, True)

    def decode_low_res_where(
        self,
        needed: Callable[[np.ndarray], np.ndarray],
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`decode_low_res` for the prompts whose logits are needed, judged from their IoU
        predictions (the mask generator's ``pred_iou_thresh``); see :mod:`samexport.runtime.prefilter`.

        Args:
            needed: maps the Kx4 IoU predictions of a chunk of prompts to K bools, True for the
                prompts whose logits are needed.
            point_coords, point_labels, boxes, mask_input: as in :meth:`predict_batch`.

        Returns:
            (index I, logits Ix4x256x256, iou Bx4): the prompts kept (ascending), their logits
            (:meth:`decode_low_res`'s, to float rounding) and every prompt's IoU predictions.
        """
        state = self._current()
        prompt = prompt_batch(check_prompts(point_coords, point_labels, boxes, mask_input), state.original_size, self._no_mask_input)
        chunks = self._chunk_inputs(prompt)
        index, logits, iou, self._needed_share = decode_where(
            self.backend, (state.embedding,), len(prompt.coords), chunks, needed, self._locked, self._needed_share
        )
        return index, logits, iou

    # -- decoding ----------------------------------------------------------------------------

    def _chunk_inputs(self, prompt: PromptBatch) -> Iterator[tuple[slice, tuple[np.ndarray, ...]]]:
        """(slice, decoder inputs after the embedding) for each chunk of ``prompt``: sizes within
        one of each other, none over the budget's (or the backend's) limit."""
        coords, labels, masks, has_mask = prompt
        shared = len(has_mask) != coords.shape[0]  # one mask input for every prompt (M = 1): not sliced
        for part in even_chunks(coords.shape[0], self.max_prompts_per_call):
            mask_part, has_mask_part = (masks, has_mask) if shared else (masks[part], has_mask[part])
            yield part, (coords[part], labels[part], mask_part, has_mask_part)

    def mask_upsampling(self) -> transforms.MaskUpsampling:
        """How the current image's low-res logits reach its pixels (``postprocess_masks``), for
        the mask generator's measurement."""
        state = self._current()
        return transforms.sam_mask_upsampling(state.input_size, state.original_size)

    @property
    def max_prompts_per_call(self) -> int:
        """Most prompts one decoder call takes: :func:`prompts_per_call` of the budget, or the
        backend's own limit (a TensorRT profile's largest batch) where that is smaller."""
        limit = prompts_per_call(self.decode_budget_bytes)
        backend_limit = getattr(self.backend, "max_prompts", None)
        return min(limit, int(backend_limit)) if backend_limit else limit

    def _run(self, state: ImageState, prompt: PromptBatch, multimask_output: bool | None, return_logits: bool):
        """Decode ``prompt`` chunk by chunk. ``multimask_output=None``: all four low-res outputs
        (logits, iou); else (masks, iou, low_res) for the chosen tokens, upsampled per chunk."""
        batch = prompt.coords.shape[0]
        results: list[np.ndarray] | None = None
        for part, inputs in self._chunk_inputs(prompt):
            with self._locked():
                low_res, iou = self.backend.decode(state.embedding, *inputs)
            if multimask_output is None:
                outputs = (low_res, iou)
            else:
                tokens = slice(1, None) if multimask_output else slice(0, 1)
                iou, low_res = iou[:, tokens], low_res[:, tokens]
                threshold = None if return_logits else C.MASK_THRESHOLD
                upsampled = transforms.postprocess_masks(
                    low_res, state.input_size, state.original_size, threshold=threshold
                )
                outputs = (upsampled, iou, low_res)
            if part.stop - part.start == batch:
                return outputs
            if results is None:
                results = [np.empty((batch, *o.shape[1:]), o.dtype) for o in outputs]
            for out, o in zip(results, outputs):
                out[part] = o
        return tuple(results)

    def _no_mask_input(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``mask_input`` and ``has_mask_input`` for B prompts without a mask: one (M = 1)
        where the backend shares it across the batch (the decoder then does the image-side work
        once), else B (M = B). Allocated once for the largest batch seen and sliced, instead of
        256 KiB of zeros per prompt and call. Backends only read their inputs."""
        if self._shares_mask_input:
            batch = 1
        zeros = self._zero_masks  # read once: another thread may replace it
        if zeros is None or len(zeros[1]) < batch:
            size = C.LOW_RES_MASK_SIZE
            zeros = np.zeros((batch, 1, size, size), np.float32), np.zeros(batch, np.float32)
            self._zero_masks = zeros
        masks, flags = zeros
        return masks[:batch], flags[:batch]
