"""The parts of ``segment_anything``'s API that client code touches besides the predictor.

Code written for the official package changes one line to run on samexport artifacts::

    from samexport import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    sam = sam_model_registry["vit_b"](checkpoint="engines/vit_b-fp32")  # an artifact directory
    sam.to(device="cuda")          # accepted; the backend decides where the graphs run
    predictor = SamPredictor(sam)

What lives here:

- :data:`sam_model_registry` and :func:`load`: construction that reads like the official one, giving
  a :class:`SamModel`, the small stand-in for the official torch ``Sam`` that predictors and mask
  generators accept (``mask_threshold``, ``image_format``, ``image_encoder.img_size``, ``device``,
  ``to``/``eval`` and the batched ``__call__`` of the official ``Sam.forward``);
- :class:`ResizeLongestSide`: ``predictor.transform``, the official
  ``segment_anything.utils.transforms.ResizeLongestSide`` with the same numbers (NumPy methods
  without torch, the ``*_torch`` methods when torch is installed);
- :func:`as_uint8_image`: float images turned into uint8 as the official ``set_image`` does.

Torch is optional throughout: the NumPy methods never import it, and a method whose official
counterpart returns a torch tensor raises :class:`~samexport.errors.MissingExtraError` naming the
``torch`` extra when it is missing.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samexport import constants as C
from samexport.errors import InvalidInputError, SamExportError

if TYPE_CHECKING:
    import torch

    from samexport.runtime.backends import Backend

__all__ = ["ResizeLongestSide", "SamModel", "as_uint8_image", "load", "sam_model_registry"]


def require_torch(what: str, *, numpy_name: str | None = None):
    """``torch``, or a MissingExtraError saying that ``what`` needs it (and which NumPy
    method or attribute does the same without it)."""
    try:
        import torch
    except ImportError as exc:
        from samexport.errors import MissingExtraError

        instead = f", or use {numpy_name} for NumPy" if numpy_name else ""
        raise MissingExtraError(
            f"{what} works with torch tensors, like segment_anything's, but torch is not installed; "
            f"install it with: pip install 'samexport[torch]'{instead}"
        ) from exc
    return torch


def is_torch_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module`` (without importing torch if nobody has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def torch_model_error(value: Any, where: str) -> SamExportError:
    """The error for a torch model passed where samexport needs an artifact."""
    return SamExportError(
        f"{where} got a torch {type(value).__name__} model; samexport runs exported graphs, not torch "
        "modules. Build an artifact from the checkpoint once (samexport build --variant vit_b "
        "--checkpoint sam_vit_b_01ec64.pth --output engines/vit_b-fp32) and pass its directory, "
        "e.g. samexport.sam_model_registry['vit_b'](checkpoint='engines/vit_b-fp32')"
    )


# -- images --------------------------------------------------------------------------------


def as_uint8_image(image: Any) -> Any:
    """``image`` with a floating dtype turned into uint8 the way the official ``set_image`` does.

    The official ``ResizeLongestSide.apply_image`` hands the array to torchvision's
    ``to_pil_image``, which computes ``(image * 255).astype(np.uint8)`` (in the image's own float
    dtype, truncating). That is only meaningful for values in [0, 1] (larger values wrap around
    silently there); here they are refused with a ValueError. Anything that is not a floating
    NumPy array is returned as it is, for :func:`samexport.transforms.check_image` to judge.
    """
    if not isinstance(image, np.ndarray) or image.dtype.kind != "f":
        return image
    if image.size and not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise InvalidInputError(
            "a float image must hold values in [0, 1] (segment_anything scales floats by 255); "
            f"got values in [{np.nanmin(image):g}, {np.nanmax(image):g}]: pass uint8 0..255 instead"
        )
    return (image * 255).astype(np.uint8)


# -- ResizeLongestSide -----------------------------------------------------------------------


class ResizeLongestSide:
    """``predictor.transform``: the official ``ResizeLongestSide`` with the same numbers.

    Frames: *original* (the user's image, ``(H, W)``) and the *input* frame (longest side
    ``target_length``, 1024 for SAM). NumPy methods return NumPy, ``*_torch`` methods torch.
    """

    def __init__(self, target_length: int = C.IMAGE_SIZE) -> None:
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
        from samexport import transforms

        image = transforms.check_image(as_uint8_image(image))
        if self.target_length == C.IMAGE_SIZE:
            return transforms.resize_image(image)
        from PIL import Image

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


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageEncoderInfo:
    """What client code reads off ``sam.image_encoder``: its square input side."""

    img_size: int = C.IMAGE_SIZE


_BACKEND_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def backend_lock(backend: Any) -> threading.Lock | None:
    """The lock that serialises calls into ``backend``, or ``None`` if it may be called from
    several threads at once (ONNX Runtime sessions and eager torch modules may; a TensorRT
    execution context, with its fixed device buffers, may not; unknown backends get a lock).
    One lock per backend object, shared by every predictor that uses it."""
    from samexport.runtime.backends import OnnxRuntimeBackend, TorchBackend

    if isinstance(backend, (OnnxRuntimeBackend, TorchBackend)) or getattr(backend, "thread_safe", False):
        return None
    with _LOCKS_GUARD:
        try:
            lock = _BACKEND_LOCKS.get(backend)
            if lock is None:
                lock = _BACKEND_LOCKS[backend] = threading.Lock()
        except TypeError:  # not weak-referenceable: a lock of its own
            return threading.Lock()
    return lock


class SamModel:
    """An artifact's graphs behind the attributes client code reads off the official ``Sam``.

    Pass it wherever the official package takes a ``Sam``: ``SamPredictor(sam)``,
    ``SamAutomaticMaskGenerator(sam)`` or ``SamAutomaticMaskGenerator(model=sam)``.

    Attributes:
        backend: the runtime that runs the encoder and decoder graphs.
        artifact_dir: where the graphs came from (``None`` for a backend passed directly).
        variant: the manifest's variant name (e.g. ``"vit_b"``), ``None`` if unknown.
        mask_threshold: logit threshold of the masks, 0.0 as the official.
        image_format: ``"RGB"``, the channel order the encoder expects.
        image_encoder: ``image_encoder.img_size`` (1024).

    ``to(...)`` and ``eval()`` return the model unchanged (the backend picked its device when the
    artifact was opened: ``backend="onnxruntime-cuda"`` or ``"tensorrt"`` for a GPU); ``device``
    is where the torch tensors of the compatibility methods are made (``cpu``, the backend's
    outputs arrive in host memory). The torch submodules (``prompt_encoder``, ``mask_decoder``,
    parameters) do not exist: the network is two exported graphs.
    """

    mask_threshold: float = C.MASK_THRESHOLD
    image_format: str = "RGB"

    def __init__(self, backend: Backend, *, artifact_dir: Path | None = None, variant: str | None = None) -> None:
        self.backend = backend
        self.artifact_dir = artifact_dir
        self.variant = variant
        self.image_encoder = ImageEncoderInfo()

    def __repr__(self) -> str:
        where = f"{self.artifact_dir}, " if self.artifact_dir else ""
        return f"SamModel({where}variant={self.variant!r}, backend={getattr(self.backend, 'name', '?')!r})"

    def __getattr__(self, name: str):
        if name in ("prompt_encoder", "mask_decoder", "parameters", "state_dict", "named_parameters"):
            raise AttributeError(
                f"samexport's SamModel has no {name}: the network runs as exported ONNX/TensorRT "
                "graphs; use the torch model from segment_anything to train or inspect weights"
            )
        raise AttributeError(f"'SamModel' object has no attribute {name!r}")

    @property
    def device(self) -> torch.device:
        """``torch.device("cpu")``: where the compatibility methods put their torch tensors."""
        return require_torch("SamModel.device").device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> SamModel:
        """Accepted for compatibility (``sam.to(device=...)``); returns this model unchanged."""
        return self

    def eval(self) -> SamModel:
        return self

    def __call__(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, Any]]:
        """The official ``Sam.forward``: images and prompts in the input frame, torch out.

        Args:
            batched_input: one dict per image: ``image`` 3xhxw tensor (uint8 or float 0..255,
                already resized with :class:`ResizeLongestSide`, long side 1024),
                ``original_size`` (H, W), and optionally ``point_coords`` BxNx2 /
                ``point_labels`` BxN, ``boxes`` Bx4, ``mask_inputs`` Bx1x256x256, all in the
                1024 frame.
            multimask_output: three masks per prompt instead of one.

        Returns:
            One dict per image: ``masks`` BxCxHxW bool, ``iou_predictions`` BxC,
            ``low_res_logits`` BxCx256x256 (torch tensors on the device of the image tensor).
        """
        from samexport.runtime.predictor import SamPredictor

        predictor = SamPredictor(self)
        outputs = []
        for record in batched_input:
            image = record["image"]
            predictor.set_torch_image(image[None], tuple(record["original_size"]))
            masks, iou, low_res = predictor.predict_torch(
                record.get("point_coords"), record.get("point_labels"), record.get("boxes"),
                record.get("mask_inputs"), multimask_output,
            )
            device = getattr(image, "device", None)
            if device is not None:
                masks, iou, low_res = masks.to(device), iou.to(device), low_res.to(device)
            outputs.append({"masks": masks, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs


def _is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / C.MANIFEST).is_file()


def load(artifact: Path | str, *, backend: str = "auto", variant: str | None = None) -> SamModel:
    """Open an artifact directory from ``samexport build`` as a :class:`SamModel`.

    Args:
        artifact: the artifact directory (``manifest.json``, ``encoder.onnx``, ``decoder.onnx``).
        backend: ``auto``, ``tensorrt``, ``onnxruntime``, ``onnxruntime-cpu``,
            ``onnxruntime-cuda`` or ``openvino`` with its options
            (``openvino:device=GPU,precision=bf16``; see
            :func:`samexport.runtime.backends.open_backend`).
        variant: if given, the variant the artifact must have been built for.

    Raises:
        SamExportError: a torch model, a ``.pth`` checkpoint or anything else that is not an
            artifact directory (the message says how to build one), or a variant mismatch.
    """
    if is_torch_module(artifact):
        raise torch_model_error(artifact, "samexport.load")
    if not isinstance(artifact, (str, Path)):
        raise SamExportError(
            f"samexport.load takes an artifact directory from `samexport build`; got {type(artifact).__name__}"
        )
    from samexport.artifacts import read_manifest
    from samexport.runtime.backends import open_backend

    path = Path(artifact)
    if path.is_file() and not _is_artifact(path):
        guess = variant or "vit_b"
        raise SamExportError(
            f"{path} is a file; samexport runs artifact directories, not checkpoints: build one with "
            f"`samexport build --variant {guess} --checkpoint {path} --output engines/{guess}-fp32` "
            f"and pass engines/{guess}-fp32"
        )
    from samexport.variants import get_variant

    manifest = read_manifest(path)
    found = manifest.variant
    if variant is not None and get_variant(variant).name != found:
        raise SamExportError(
            f"{path} was built for variant {found!r}, not {variant!r}: use "
            f"sam_model_registry[{found!r}] (or 'default'), or build a {variant} artifact"
        )
    return SamModel(open_backend(path, backend), artifact_dir=path, variant=found)


class _Builder:
    """``sam_model_registry[name]``: called like the official builder, with an artifact."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"sam_model_registry[{self.name!r}]"

    def __call__(self, checkpoint: Path | str | None = None, *, artifact: Path | str | None = None,
                 backend: str = "auto") -> SamModel:
        """Open an artifact directory; ``checkpoint=`` (the official keyword) and ``artifact=``
        are the same thing and take the directory, not a ``.pth`` file."""
        if (checkpoint is None) == (artifact is None):
            raise SamExportError(
                f"{self!r}(...) needs one artifact directory from `samexport build`, as "
                "checkpoint=DIR (the official keyword) or artifact=DIR"
            )
        return load(checkpoint if artifact is None else artifact, backend=backend,
                    variant=None if self.name == "default" else self.name)


class _Registry(Mapping):
    """``sam_model_registry``: ``"default"`` (any variant: the artifact says which) and one entry
    per registered variant (``samexport.VARIANTS``), each checking the artifact's variant."""

    def _names(self) -> list[str]:
        from samexport.variants import VARIANTS

        return ["default", *VARIANTS]

    def __getitem__(self, name: str) -> _Builder:
        if name not in self._names():
            raise KeyError(f"{name!r}: valid keys are {', '.join(self._names())}")
        return _Builder(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"sam_model_registry({', '.join(self._names())})"


sam_model_registry: Mapping[str, _Builder] = _Registry()
