"""samexport: Segment Anything from PyTorch weights to verified ONNX / TensorRT deployments.

Heavy dependencies (torch, onnxruntime, tensorrt) are imported only when used, so
``import samexport`` is fast on any machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["AutomaticMaskGenerator", "SamPredictor", "SamExportError", "VARIANTS", "build", "__version__"]

from samexport.errors import SamExportError
from samexport.variants import VARIANTS

if TYPE_CHECKING:
    from samexport.amg import AutomaticMaskGenerator
    from samexport.build import build
    from samexport.runtime.predictor import SamPredictor


def __getattr__(name: str):
    if name == "SamPredictor":
        from samexport.runtime.predictor import SamPredictor

        return SamPredictor
    if name == "AutomaticMaskGenerator":
        from samexport.amg import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    if name == "build":
        from samexport.build import build

        return build
    raise AttributeError(f"module 'samexport' has no attribute {name!r}")
