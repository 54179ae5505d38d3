"""The parts of ``segment_anything``'s API that client code touches besides the predictor.

Code written for the official package changes one line to run on samexport artifacts::

    from samexport import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    sam = sam_model_registry["vit_b"](checkpoint="engines/vit_b-fp32")  # an artifact directory
    sam.to(device="cuda")          # accepted; the backend decides where the graphs run
    predictor = SamPredictor(sam)

What lives here, above :mod:`samexport.runtime`:

- :data:`sam_model_registry` and :func:`load`: construction that reads like the official one, giving
  a :class:`SamModel`, the small stand-in for the official torch ``Sam`` that predictors and mask
  generators accept (``mask_threshold``, ``image_format``, ``image_encoder.img_size``, ``device``,
  ``to``/``eval`` from :class:`samexport.runtime.model.ArtifactModel`, and here the batched
  ``__call__`` of the official ``Sam.forward``).

``ResizeLongestSide`` is here too (defined in :mod:`samexport.resize`), where code that imported
``segment_anything.utils.transforms.ResizeLongestSide`` finds it; ``predictor.transform`` is one.
Torch is optional
throughout: a method whose official counterpart returns a torch tensor raises
:class:`~samexport.errors.MissingExtraError` naming the ``torch`` extra when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from samexport.errors import SamExportError
from samexport.resize import ResizeLongestSide
from samexport.runtime.model import ArtifactModel, open_model
from samexport.runtime.predictor import SamPredictor
from samexport.variants import VARIANTS

__all__ = ["ResizeLongestSide", "SamModel", "load", "sam_model_registry"]


class SamModel(ArtifactModel):
    """An artifact's graphs behind the attributes client code reads off the official ``Sam``.

    Pass it wherever the official package takes a ``Sam``: ``SamPredictor(sam)``,
    ``SamAutomaticMaskGenerator(sam)`` or ``SamAutomaticMaskGenerator(model=sam)``. The attributes
    (``backend``, ``artifact_dir``, ``variant``, ``mask_threshold``, ``image_format``,
    ``image_encoder.img_size``, ``device``, ``to``/``eval``) are
    :class:`~samexport.runtime.model.ArtifactModel`'s; this class adds the official batched call.
    """

    def __call__(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, Any]]:
        """The official ``Sam.forward``: images and prompts in the input frame, torch out.

        Args:
            batched_input: one dict per image: ``image`` 3xhxw tensor (uint8 or float 0..255,
                already resized with :class:`~samexport.resize.ResizeLongestSide`, long side 1024),
                ``original_size`` (H, W), and optionally ``point_coords`` BxNx2 /
                ``point_labels`` BxN, ``boxes`` Bx4, ``mask_inputs`` Bx1x256x256, all in the
                1024 frame.
            multimask_output: three masks per prompt instead of one.

        Returns:
            One dict per image: ``masks`` BxCxHxW bool, ``iou_predictions`` BxC,
            ``low_res_logits`` BxCx256x256 (torch tensors on the device of the image tensor).
        """
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
    return open_model(artifact, backend=backend, variant=variant, model_type=SamModel)


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
