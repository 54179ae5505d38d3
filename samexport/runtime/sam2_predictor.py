"""``SAM2ImagePredictor``: the official ``sam2.sam2_image_predictor.SAM2ImagePredictor`` in NumPy,
running SAM 2.1's exported graphs on any samexport backend.

The same methods and arguments as the official class (``set_image``, ``set_image_batch``,
``predict``, ``predict_batch``, ``get_image_embedding``, ``reset_predictor``); what returns a
torch tensor there returns a NumPy array here. The network is two graphs run through the backend
seam (:class:`samexport.runtime.backends.GraphRunner`): the encoder's features are kept per image
and fed to the decoder with each prompt batch, in the order of the artifact's
:class:`~samexport.constants.GraphContract`. Pre- and postprocessing are
:mod:`samexport.sam2_transforms` (the official transforms reproduced in NumPy).

    from samexport import SAM2ImagePredictor
    predictor = SAM2ImagePredictor("engines/sam2.1_hiera_tiny-fp32")
    predictor.set_image(image)                      # HxWx3 uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])

Not done: the official optional hole and sprinkle filling (``max_hole_area`` /
``max_sprinkle_area`` > 0, off by default there too) and a mask prompt with no point or box (the
decoder graph needs at least one point); both are refused with a clear error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samexport import constants as C
from samexport.errors import InvalidInputError, SamExportError
from samexport.runtime.backends import BackendName, GraphRunner, backend_lock, open_backend
from samexport.runtime.decode_budget import DEFAULT_DECODE_BUDGET, prompts_per_call
from samexport.runtime.prefilter import decode_where
from samexport.runtime.prompts import even_chunks
from samexport.sam2_transforms import (
    postprocess_sam2_masks,
    preprocess_sam2,
    sam2_mask_upsampling,
    sam2_prompt_points,
    select_sam2_masks,
)
from samexport.transforms import MaskUpsampling, check_image
from samexport.validate import image_size, real_array

LOW_RES_CLAMP = 32.0  # the official predictor clamps the low-res logits it returns to +-32

__all__ = ["SAM2ImagePredictor"]


class SAM2ImagePredictor:
    """Masks from prompts on SAM 2.1's exported graphs, as the official ``SAM2ImagePredictor``.

    Args:
        sam_model: an artifact directory from ``samexport build --variant sam2.1_hiera_*``, or a
            backend whose ``contract`` is SAM 2.1's (``open_backend``, ``Sam2TorchBackend``).
        mask_threshold: logit threshold of the returned masks (0.0, as the official).
        max_hole_area, max_sprinkle_area: must be 0 (the official defaults): the optional
            hole/sprinkle filling is not implemented.
        backend: for an artifact directory: ``auto``, ``onnxruntime-cpu``, ``openvino``, ...
            (``samexport.constants.ARTIFACT_BACKENDS``).
        decode_budget_bytes: :meth:`decode_low_res_where` (the mask generator's) decodes at most
            ``samexport.runtime.decode_budget.prompts_per_call(decode_budget_bytes)`` prompts a call,
            as ``SamPredictor`` does, with SAM's figures. Measured for SAM 2.1's decoder (tiny,
            ONNX Runtime CPU, ``benchmarks/decode_memory.py ARTIFACT amg``, 576 points a batch,
            300x400 image): 1611 MiB of growth at the 2 GiB default, within it; 854 MiB at a 768
            MiB budget, over it: SAM 2.1's fixed part is larger than SAM's 256 MiB, so budgets
            under ~1 GiB are not met. ``predict`` decodes its prompt batch in one call.
    """

    def __init__(
        self,
        sam_model: Path | str | GraphRunner,
        mask_threshold: float = C.MASK_THRESHOLD,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        *,
        backend: BackendName = "auto",
        decode_budget_bytes: int = DEFAULT_DECODE_BUDGET,
    ) -> None:
        if isinstance(decode_budget_bytes, bool) or not isinstance(decode_budget_bytes, int) or decode_budget_bytes < 1:
            raise InvalidInputError(f"decode_budget_bytes must be a positive int; got {decode_budget_bytes!r}")
        if max_hole_area or max_sprinkle_area:
            raise SamExportError(
                "SAM2ImagePredictor: max_hole_area / max_sprinkle_area (the official optional mask "
                "filling) are not implemented in samexport; leave them at 0, the official default"
            )
        runner = open_backend(sam_model, backend) if isinstance(sam_model, (str, Path)) else sam_model
        if getattr(runner, "contract", None) is not C.SAM2_GRAPHS:
            what = getattr(getattr(runner, "contract", None), "name", type(runner).__name__)
            raise SamExportError(
                f"SAM2ImagePredictor runs SAM 2.1 artifacts (samexport build --variant sam2.1_hiera_tiny); "
                f"this one holds a {what} model: use samexport.SamPredictor"
            )
        self.backend = runner
        self.mask_threshold = float(mask_threshold)
        self.decode_budget_bytes = decode_budget_bytes
        self._lock = backend_lock(runner)
        self._needed_share = 0.0  # of the last decode_low_res_where chunk (prefilter.decode_where)
        self.reset_predictor()

    def _locked(self):
        return self._lock if self._lock is not None else contextlib.nullcontext()

    def reset_predictor(self) -> None:
        """Forget the image(s) set."""
        self._image_features: list[tuple[np.ndarray, ...]] = []
        self._orig_hw: list[tuple[int, int]] = []
        self._is_image_set = False
        self._is_batch = False

    def reset_image(self) -> None:
        """``reset_predictor`` under ``SamPredictor``'s name (what the mask generator calls)."""
        self.reset_predictor()

    @property
    def is_image_set(self) -> bool:
        return self._is_image_set

    @property
    def original_size(self) -> tuple[int, int] | None:
        """(H, W) of the image set (the last one after ``set_image_batch``); None without one."""
        return self._orig_hw[-1] if self._is_image_set else None

    def _encode(self, image: Any) -> tuple[np.ndarray, ...]:
        image = check_image(np.asarray(image))  # a PIL image too, as the official
        self._orig_hw.append((int(image.shape[0]), int(image.shape[1])))
        with self._locked():
            return tuple(self.backend.run_encoder(preprocess_sam2(image)))

    def set_image(self, image: np.ndarray) -> None:
        """Compute the features of ``image`` (HxWx3 uint8 RGB, or a PIL image) for ``predict``."""
        self.reset_predictor()
        self._image_features = [self._encode(image)]
        self._is_image_set = True

    def set_image_batch(self, image_list: Sequence[np.ndarray]) -> None:
        """Compute the features of each image (HxWx3 uint8 RGB) for ``predict_batch``."""
        if not isinstance(image_list, list):
            raise InvalidInputError(f"image_list must be a list of HxWx3 images; got {type(image_list).__name__}")
        self.reset_predictor()
        self._image_features = [self._encode(image) for image in image_list]
        self._is_image_set = True
        self._is_batch = True

    @property
    def image_features(self) -> tuple[np.ndarray, ...]:
        """The features of the image set (the last one after ``set_image_batch``), in the order of
        the contract's encoder outputs: embedding 1x256x64x64 (``no_mem_embed`` added), then the
        high-resolution maps 1x32x256x256 and 1x64x128x128, float32 (what ``samexport embed``
        stores and :meth:`set_image_features` restores)."""
        self._require_image()
        return self._image_features[-1]

    def set_image_features(self, features: Sequence[np.ndarray], original_size: tuple[int, int]) -> None:
        """Restore an image from its stored features without running the encoder (a row of
        ``samexport embed``): afterwards ``predict`` gives the masks ``set_image`` would for those
        features.

        Args:
            features: the contract's encoder outputs in order (:attr:`image_features`), any float
                dtype, each with or without its leading axis of 1.
            original_size: ``(H, W)`` of the original image, pixels.

        Raises:
            InvalidInputError: a wrong number or shape of arrays, non-finite values, or a bad size.
        """
        specs = self.backend.contract.encoder_outputs
        if isinstance(features, np.ndarray) or len(features) != len(specs):
            raise InvalidInputError(
                f"features must be {len(specs)} arrays ({', '.join(s.name for s in specs)}); got "
                f"{'one array' if isinstance(features, np.ndarray) else len(features)}"
            )
        checked = []
        for spec, array in zip(specs, features):
            given = np.asarray(array)
            if given.shape == spec.shape[1:]:
                given = given[None]
            if given.shape != spec.shape or not np.issubdtype(given.dtype, np.floating):
                raise InvalidInputError(
                    f"{spec.name} must be a float array of shape {'x'.join(map(str, spec.shape))}; "
                    f"got {given.dtype} {'x'.join(map(str, given.shape))}"
                )
            if not np.isfinite(given).all():
                raise InvalidInputError(f"{spec.name} holds non-finite values")
            checked.append(np.ascontiguousarray(given, dtype=np.float32))
        size = image_size("original_size", original_size)
        self.reset_predictor()
        self._image_features = [tuple(checked)]
        self._orig_hw = [size]
        self._is_image_set = True

    @property
    def _features(self) -> dict[str, Any]:
        """The official layout: ``{"image_embed": Bx256x64x64, "high_res_feats": [Bx32x256x256,
        Bx64x128x128]}`` over the images set (NumPy)."""
        if not self._is_image_set:
            return {}
        stacked = [np.concatenate(level) for level in zip(*self._image_features)]
        return {"image_embed": stacked[0], "high_res_feats": stacked[1:]}

    def get_image_embedding(self) -> np.ndarray:
        """The image embeddings (``no_mem_embed`` added), Bx256x64x64 float32 over the images set."""
        self._require_image()
        return self._features["image_embed"]

    def _require_image(self) -> None:
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the image set (the last one after ``set_image_batch``).

        Args:
            point_coords: Nx2 (or BxNx2 for B prompts) (x, y) in pixels of the original image, or on
                [0, 1] when ``normalize_coords`` is False; point_labels: N (or BxN), 1 foreground,
                0 background.
            box: 4 (or Bx4) XYXY, same frame as the points.
            mask_input: 1x256x256 (or Bx1x256x256) low-resolution logits from a previous call.
            multimask_output: three masks per prompt; else one (token 0, or the best multimask
                token when token 0 is unstable, as the official).
            return_logits: return the logits at the original size instead of 0/1 masks.
            normalize_coords: see ``point_coords``.

        Returns:
            (masks CxHxW float32, scores C float32, low-res logits Cx256x256 float32 clamped to
            +-32); with B prompts each has a leading B axis.
        """
        self._require_image()
        return self._predict(-1, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords)

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray] | None = None,
        point_labels_batch: Sequence[np.ndarray] | None = None,
        box_batch: Sequence[np.ndarray] | None = None,
        mask_input_batch: Sequence[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """``predict`` for each image of ``set_image_batch`` with its own prompts (entry i of each
        list); returns lists of ``predict``'s three arrays."""
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...)")
        self._require_image()
        out: tuple[list, list, list] = ([], [], [])
        batches = (point_coords_batch, point_labels_batch, box_batch, mask_input_batch)
        for index in range(len(self._image_features)):
            prompts = (None if items is None else items[index] for items in batches)
            results = self._predict(index, *prompts, multimask_output, return_logits, normalize_coords)
            for bucket, result in zip(out, results):
                bucket.append(result)
        return out

    def decode_low_res(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        *,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decoder's outputs for prompts on the image set (the last one), before the official
        choice of masks: (logits Bx4x256x256, iou Bx4, object_score_logits Bx1), float32.
        Prompts as :meth:`predict` (``boxes`` is its ``box``)."""
        self._require_image()
        return self._decode(-1, point_coords, point_labels, boxes, mask_input, normalize_coords)

    def mask_upsampling(self) -> MaskUpsampling:
        """How the (last) image's low-res logits reach its pixels (``postprocess_sam2_masks``),
        for the mask generator's measurement."""
        self._require_image()
        return sam2_mask_upsampling(self._orig_hw[-1])

    @property
    def max_prompts_per_call(self) -> int:
        """Most prompts one decoder call takes: :func:`prompts_per_call` of the budget, or the
        backend's own limit (a TensorRT profile's largest batch) where that is smaller, as
        ``SamPredictor``'s."""
        limit = prompts_per_call(self.decode_budget_bytes)
        backend_limit = getattr(self.backend, "max_prompts", None)
        return min(limit, int(backend_limit)) if backend_limit else limit

    def decode_low_res_where(
        self,
        needed: Callable[[np.ndarray], np.ndarray],
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        *,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`decode_low_res` for the prompts whose logits are needed, judged from their IoU
        predictions, as ``SamPredictor.decode_low_res_where`` (the mask generator's
        ``pred_iou_thresh``), in calls of at most :attr:`max_prompts_per_call` prompts.

        Returns:
            (index I, logits Ix4x256x256, iou Bx4): the prompts kept (ascending), their logits
            and every prompt's IoU predictions.
        """
        self._require_image()
        coords, labels, masks, has_mask = self._prompt_inputs(-1, point_coords, point_labels, boxes, mask_input, normalize_coords)

        def chunks() -> Iterator[tuple[slice, tuple[np.ndarray, ...]]]:
            for part in even_chunks(len(coords), self.max_prompts_per_call):
                yield part, (coords[part], labels[part], masks[part], has_mask[part])

        index, logits, iou, self._needed_share = decode_where(
            self.backend, self._image_features[-1], len(coords), chunks(), needed, self._locked, self._needed_share
        )
        return index, logits, iou

    def _prompt_inputs(self, index, point_coords, point_labels, box, mask_input, normalize_coords) -> tuple[np.ndarray, ...]:
        """The decoder's prompt inputs (coords, labels, mask_input, has_mask_input) for image ``index``."""
        coords, labels = sam2_prompt_points(
            self._orig_hw[index], point_coords=point_coords, point_labels=point_labels, box=box,
            normalize_coords=normalize_coords,
        )
        if coords.shape[1] == 0:
            raise SamExportError(
                "SAM2ImagePredictor needs a point or a box: a mask_input alone (or no prompt) has no "
                "form in the exported decoder graph yet"
            )
        return (coords, labels, *self._mask_input(mask_input, len(coords)))

    def _decode(self, index, point_coords, point_labels, box, mask_input, normalize_coords) -> tuple[np.ndarray, ...]:
        inputs = self._prompt_inputs(index, point_coords, point_labels, box, mask_input, normalize_coords)
        features = self._image_features[index]
        with self._locked():  # in calls of at most max_prompts_per_call prompts (each prompt decodes alone)
            parts = [
                tuple(self.backend.run_decoder(features, *(a[part] for a in inputs)))
                for part in even_chunks(len(inputs[0]), self.max_prompts_per_call)
            ]
        return parts[0] if len(parts) == 1 else tuple(np.concatenate(outputs) for outputs in zip(*parts))

    def _predict(self, index, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords):
        original_size = self._orig_hw[index]
        low_res, iou = self._decode(index, point_coords, point_labels, box, mask_input, normalize_coords)[:2]
        batch = len(low_res)
        low_res, iou = select_sam2_masks(low_res, iou, multimask_output=multimask_output)
        threshold = None if return_logits else self.mask_threshold
        masks = postprocess_sam2_masks(low_res, original_size, threshold=threshold).astype(np.float32)
        low_res = np.clip(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP)
        if batch == 1:  # the official squeezes the prompt axis
            return masks[0], iou[0], low_res[0]
        return masks, iou, low_res

    @staticmethod
    def _mask_input(mask_input, batch: int) -> tuple[np.ndarray, np.ndarray]:
        size = C.LOW_RES_MASK_SIZE
        if mask_input is None:
            return np.zeros((batch, 1, size, size), np.float32), np.zeros(batch, np.float32)
        masks = real_array("mask_input", mask_input, (..., 1, size, size)).astype(np.float32)
        if masks.ndim == 3:
            masks = masks[None]
        if masks.ndim != 4 or len(masks) not in (1, batch):
            raise InvalidInputError(f"mask_input must be 1x256x256 or {batch}x1x256x256; got {masks.shape}")
        return np.ascontiguousarray(np.broadcast_to(masks, (batch, 1, size, size))), np.ones(batch, np.float32)
