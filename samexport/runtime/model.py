"""An artifact's graphs as a model record: what predictors read off the official torch ``Sam``.

:class:`ArtifactModel` is the runtime's half of :class:`samexport.SamModel` (``mask_threshold``,
``image_format``, ``image_encoder.img_size``, ``device``, ``to``/``eval``); the official-API face
(:mod:`samexport.compat`) adds the batched ``__call__`` of the official ``Sam.forward``, which runs
a predictor and so cannot live below it. :func:`open_model` opens an artifact directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.errors import SamExportError, is_torch_module, require_torch, torch_model_error
from samexport.runtime.backends import Backend, BackendName, open_backend
from samexport.variants import get_variant

if TYPE_CHECKING:
    import torch

__all__ = ["ArtifactModel", "ImageEncoderInfo", "open_model"]


@dataclass(frozen=True)
class ImageEncoderInfo:
    """What client code reads off ``sam.image_encoder``: its square input side."""

    img_size: int = C.IMAGE_SIZE


class ArtifactModel:
    """An artifact's graphs behind the attributes client code reads off the official ``Sam``.

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
        return f"{type(self).__name__}({where}variant={self.variant!r}, backend={getattr(self.backend, 'name', '?')!r})"

    def __getattr__(self, name: str):
        if name in ("prompt_encoder", "mask_decoder", "parameters", "state_dict", "named_parameters"):
            raise AttributeError(
                f"samexport's SamModel has no {name}: the network runs as exported ONNX/TensorRT "
                "graphs; use the torch model from segment_anything to train or inspect weights"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def device(self) -> torch.device:
        """``torch.device("cpu")``: where the compatibility methods put their torch tensors."""
        return require_torch("SamModel.device").device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> ArtifactModel:
        """Accepted for compatibility (``sam.to(device=...)``); returns this model unchanged."""
        return self

    def eval(self) -> ArtifactModel:
        return self


ModelT = TypeVar("ModelT", bound=ArtifactModel)


def _is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / C.MANIFEST).is_file()


def open_model(
    artifact: Path | str,
    *,
    backend: BackendName = "auto",
    variant: str | None = None,
    model_type: type[ModelT] = ArtifactModel,
) -> ModelT:
    """Open an artifact directory from ``samexport build`` as a ``model_type`` (see
    :func:`samexport.load`, which gives a :class:`samexport.SamModel`).

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
    path = Path(artifact)
    if path.is_file() and not _is_artifact(path):
        guess = variant or "vit_b"
        raise SamExportError(
            f"{path} is a file; samexport runs artifact directories, not checkpoints: build one with "
            f"`samexport build --variant {guess} --checkpoint {path} --output engines/{guess}-fp32` "
            f"and pass engines/{guess}-fp32"
        )
    manifest = read_manifest(path)
    found = manifest.variant
    if manifest.contract is not C.SAM_GRAPHS:
        raise SamExportError(f"{path} holds the SAM 2.1 model {found}: open it with samexport.SAM2ImagePredictor({str(path)!r})")
    if variant is not None and get_variant(variant).name != found:
        raise SamExportError(
            f"{path} was built for variant {found!r}, not {variant!r}: use "
            f"sam_model_registry[{found!r}] (or 'default'), or build a {variant} artifact"
        )
    return model_type(open_backend(path, backend), artifact_dir=path, variant=found)
