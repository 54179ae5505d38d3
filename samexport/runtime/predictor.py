"""``SamPredictor``: the official predictor's API over exported graphs, NumPy in and out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.runtime.backends import Backend, OnnxRuntimeBackend

BackendName = Literal["auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda"]
ORT_DEVICES = {"onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}


def open_backend(artifact_dir: Path | str, backend: BackendName = "auto", *, threads: int | None = None) -> Backend:
    """The backend for an artifact directory.

    ``auto`` takes the TensorRT engines when the directory has them and this machine can run them
    (``tensorrt`` installed, a GPU present, plans built for this TensorRT and GPU and not test
    builds), else ONNX Runtime (its CUDA provider when present). ``threads`` sets ONNX Runtime's
    intra-op threads (None: its default); TensorRT ignores it.
    """
    from samexport.artifacts import read_manifest
    from samexport.errors import SamExportError

    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if backend not in ("auto", "tensorrt", *ORT_DEVICES):
        raise SamExportError(f"unknown backend {backend!r}; valid: auto, tensorrt, {', '.join(ORT_DEVICES)}")
    if backend == "auto" and manifest.engines:
        from samexport.runtime.tensorrt_backend import why_engines_cannot_run

        reason = why_engines_cannot_run(manifest)
        if reason is None:
            backend = "tensorrt"
        else:
            logging.getLogger(__name__).info("not using the TensorRT engines of %s: %s", folder, reason)
    if backend == "tensorrt":
        from samexport.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(folder, manifest)
    if not manifest.runtime.onnxruntime_encoder:
        raise SamExportError(
            f"{folder}'s encoder has nodes only TensorRT can run (--attention plugin); use "
            "backend='tensorrt', or rebuild with --attention fused-pattern for ONNX Runtime"
        )
    device = ORT_DEVICES.get(backend, "auto")
    return OnnxRuntimeBackend(
        folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device=device, threads=threads,
        memory_arena=manifest.runtime.onnxruntime_memory_arena,
    )


def _float_array(name: str, value, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as float32 with the given shape (``None`` = any size), or a ValueError naming it."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape)
    ):
        pretty = "x".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must be a real array of shape {pretty}; got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.astype(np.float32)


class SamPredictor:
    """Predict masks for one image at a time, like ``segment_anything.SamPredictor``.

    Args:
        model: an artifact directory from ``samexport build`` (or any object with the
            :class:`~samexport.runtime.backends.Backend` methods, e.g. ``TorchBackend``).
        backend: which runtime to use for an artifact directory.

    Example::

        predictor = SamPredictor("engines/vit_b-fp32")
        predictor.set_image(image)  # HxWx3 uint8 RGB
        masks, scores, logits = predictor.predict(point_coords=np.array([[500, 375]]),
                                                  point_labels=np.array([1]))
    """

    def __init__(self, model: Path | str | Backend, backend: BackendName = "auto") -> None:
        self.backend: Backend = (
            open_backend(model, backend) if isinstance(model, (str, Path)) else model
        )
        self._zero_masks: tuple[np.ndarray, np.ndarray] | None = None
        self.reset_image()

    # -- image -------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: Literal["RGB", "BGR"] = "RGB") -> None:
        """Encode ``image`` (HxWx3 uint8, ``image_format`` channel order) for later prompts."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR'; got {image_format!r}")
        image = transforms.check_image(np.asarray(image))
        if image_format == "BGR":
            image = image[..., ::-1]
        self.reset_image()
        self.original_size = image.shape[:2]
        self.input_size = transforms.preprocess_shape(*self.original_size)
        self.features = self.backend.encode(transforms.preprocess(np.ascontiguousarray(image)))
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, 1x256x64x64 float32."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(image) before predicting")

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

        Args:
            point_coords: Nx2 (X, Y) pixel coordinates in the original image.
            point_labels: N labels, 1 foreground, 0 background.
            box: length-4 (X0, Y0, X1, Y1) box in original-image pixels.
            mask_input: 1x256x256 low-resolution logits from a previous prediction.
            multimask_output: three masks (tokens 1..3) instead of one (token 0).
            return_logits: return float logits instead of boolean masks.

        Returns:
            (masks CxHxW bool (or float32 logits), scores C float32, low_res_logits Cx256x256
            float32), with C = 3 if ``multimask_output`` else 1.
        """
        if point_coords is not None:
            point_coords = _float_array("point_coords", point_coords, (None, 2))[None]
        if point_labels is not None:
            point_labels = _float_array("point_labels", point_labels, (None,))[None]
        if box is not None:
            box = _float_array("box", np.asarray(box).reshape(-1), (4,))[None]
        if mask_input is not None:
            mask_input = _float_array("mask_input", mask_input, (1, 256, 256))[None]
        masks, scores, low_res = self.predict_batch(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )
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
        """Masks for B prompts on the current image in one decoder call.

        Args:
            point_coords: BxNx2 (X, Y) pixel coordinates in the original image.
            point_labels: BxN labels, 1 foreground, 0 background (-1 ignores a point).
            boxes: Bx4 (X0, Y0, X1, Y1) boxes in original-image pixels.
            mask_input: Bx1x256x256 low-resolution logits.
            multimask_output, return_logits: as in :meth:`predict`.

        Returns:
            (masks BxCxHxW, scores BxC, low_res_logits BxCx256x256).
        """
        self._require_image()
        iou, low_res = self.decode_low_res(point_coords, point_labels, boxes, mask_input)
        tokens = slice(1, None) if multimask_output else slice(0, 1)
        iou, low_res = iou[:, tokens], low_res[:, tokens]
        threshold = None if return_logits else C.MASK_THRESHOLD
        masks = transforms.postprocess_masks(low_res, self.input_size, self.original_size, threshold=threshold)
        return masks, iou, low_res

    def decode_low_res(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """All four outputs at low resolution: (iou Bx4, logits Bx4x256x256), no upsampling."""
        self._require_image()
        coords, labels = self._prompt_points(point_coords, point_labels, boxes)
        batch = coords.shape[0]
        if mask_input is None:
            masks, has_mask = self._no_mask_input(batch)
        else:
            size = C.LOW_RES_MASK_SIZE
            masks = _float_array("mask_input", mask_input, (None, 1, size, size))
            if masks.shape[0] != batch:
                raise ValueError(
                    f"mask_input has {masks.shape[0]} prompts but the points/boxes have {batch}"
                )
            has_mask = np.ones(batch, np.float32)
        return self.backend.decode(self.features, coords, labels, masks, has_mask)

    def _no_mask_input(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``mask_input`` (Bx1x256x256) and ``has_mask_input`` (B) for prompts without a
        mask: allocated once for the largest batch seen and sliced, instead of 256 KiB of zeros
        per prompt and call. Backends only read their inputs."""
        if self._zero_masks is None or len(self._zero_masks[1]) < batch:
            size = C.LOW_RES_MASK_SIZE
            self._zero_masks = np.zeros((batch, 1, size, size), np.float32), np.zeros(batch, np.float32)
        masks, flags = self._zero_masks
        return masks[:batch], flags[:batch]

    def _prompt_points(self, point_coords, point_labels, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Points and box corners in the 1024 frame as the official prompt encoder orders them:
        points, then box corners (labels 2, 3); without a box, one padding point (label -1)."""
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is None and boxes is None:
            raise ValueError("give point_coords/point_labels, boxes, or both")
        parts_xy, parts_label = [], []
        if point_coords is not None:
            coords = _float_array("point_coords", point_coords, (None, None, 2))
            labels = _float_array("point_labels", point_labels, (None, None))
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels shape {labels.shape} does not match point_coords {coords.shape}"
                )
            parts_xy.append(transforms.transform_coords(coords, self.original_size))
            parts_label.append(labels)
        if boxes is not None:
            boxes = _float_array("boxes", boxes, (None, 4))
            corners = transforms.transform_boxes(boxes, self.original_size).reshape(-1, 2, 2)
            parts_xy.append(corners)
            parts_label.append(
                np.broadcast_to(np.float32([C.LABEL_BOX_TOP_LEFT, C.LABEL_BOX_BOTTOM_RIGHT]), (len(boxes), 2))
            )
        else:
            parts_xy.append(np.zeros((parts_xy[0].shape[0], 1, 2), np.float32))
            parts_label.append(np.full((parts_xy[0].shape[0], 1), C.LABEL_PADDING, np.float32))
        batches = {p.shape[0] for p in parts_xy}
        if len(batches) != 1:
            raise ValueError(
                f"point_coords has {parts_xy[0].shape[0]} prompts but boxes has {parts_xy[1].shape[0]}"
            )
        if batches == {0}:
            raise ValueError("the prompt batch is empty")
        coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
        labels = np.ascontiguousarray(np.concatenate(parts_label, axis=1), dtype=np.float32)
        return coords, labels
