"""samexport: Segment Anything from PyTorch weights to verified ONNX / TensorRT deployments.

Heavy dependencies (torch, onnxruntime, tensorrt) are imported only when used, so
``import samexport`` is fast on any machine.

Code written for ``segment_anything`` changes its import line to ``from samexport import ...``:
``SamPredictor``, ``SamAutomaticMaskGenerator`` and ``sam_model_registry`` (whose builders take an
artifact directory from ``samexport build``) have the official names and calls; so have SAM 2.1's
``SAM2ImagePredictor`` and ``SAM2AutomaticMaskGenerator`` (``from sam2.sam2_image_predictor import ...``
becomes ``from samexport import ...``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "VARIANTS",
    "AutomaticMaskGenerator",
    "SAM2AutomaticMaskGenerator",
    "SAM2ImagePredictor",
    "SamAutomaticMaskGenerator",
    "SamExportError",
    "SamModel",
    "SamPredictor",
    "__version__",
    "build",
    "load",
    "sam_model_registry",
]

from samexport._version import __version__
from samexport.errors import SamExportError
from samexport.variants import VARIANTS

if TYPE_CHECKING:
    from samexport.amg import AutomaticMaskGenerator, SAM2AutomaticMaskGenerator
    from samexport.amg import AutomaticMaskGenerator as SamAutomaticMaskGenerator
    from samexport.compat import SamModel, load, sam_model_registry
    from samexport.pipeline import build
    from samexport.runtime.predictor import SamPredictor
    from samexport.runtime.sam2_predictor import SAM2ImagePredictor


def __getattr__(name: str):
    if name == "SamPredictor":
        from samexport.runtime.predictor import SamPredictor

        return SamPredictor
    if name == "SAM2ImagePredictor":
        from samexport.runtime.sam2_predictor import SAM2ImagePredictor

        return SAM2ImagePredictor
    if name in ("AutomaticMaskGenerator", "SamAutomaticMaskGenerator"):
        from samexport.amg import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    if name == "SAM2AutomaticMaskGenerator":
        from samexport.amg import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator
    if name in ("SamModel", "load", "sam_model_registry"):
        from samexport import compat

        return getattr(compat, name)
    if name == "build":
        from samexport.pipeline import build

        return build
    raise AttributeError(f"module 'samexport' has no attribute {name!r}")
