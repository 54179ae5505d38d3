"""The predictor of a model's family, chosen by its graph contract: what the mask generator, the
commands and the dataset jobs open, so that SAM, MobileSAM and SAM 2.1 artifacts go through the
same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.checkpoint import load_sam
from samexport.errors import is_torch_module
from samexport.runtime.backends import GraphRunner
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.sam2_predictor import SAM2ImagePredictor
from samexport.runtime.sam2_torch import Sam2TorchBackend
from samexport.runtime.torch_backend import TorchBackend
from samexport.sam2_checkpoint import load_sam2
from samexport.variants import get_model

AnyPredictor = SamPredictor | SAM2ImagePredictor

__all__ = ["AnyPredictor", "contract_of", "open_predictor", "torch_reference"]


def contract_of(model: Any) -> C.GraphContract:
    """The graph contract of a predictor, an artifact directory (its manifest's), a backend or a
    model (its backend's); SAM's when it names none (a torch module, a bare ``Backend``)."""
    if isinstance(model, SAM2ImagePredictor):
        return C.SAM2_GRAPHS
    if isinstance(model, SamPredictor):
        return C.SAM_GRAPHS
    if isinstance(model, (str, Path)):
        return read_manifest(Path(model)).contract
    if is_torch_module(model):
        return C.SAM_GRAPHS  # SamPredictor says what to pass instead
    return getattr(model, "contract", None) or getattr(getattr(model, "backend", None), "contract", None) or C.SAM_GRAPHS


def open_predictor(model: Any, backend: str = "auto") -> AnyPredictor:
    """The predictor given, or the family's predictor for an artifact directory, a backend or a
    model: :class:`~samexport.SAM2ImagePredictor` for SAM 2.1's contract, else
    :class:`~samexport.SamPredictor`. ``backend``: for an artifact directory."""
    if isinstance(model, (SamPredictor, SAM2ImagePredictor)):
        return model
    if contract_of(model) is C.SAM2_GRAPHS:
        return SAM2ImagePredictor(model, backend=backend) if isinstance(model, (str, Path)) else SAM2ImagePredictor(model)
    return SamPredictor(model, backend=backend) if isinstance(model, (str, Path)) else SamPredictor(model)


def torch_reference(checkpoint: Path | str, variant: str) -> GraphRunner:
    """The PyTorch reference backend of ``variant``'s family (what parity and ``samexport bench``
    compare with) on the weights of ``checkpoint``: SAM's :class:`TorchBackend` or SAM 2.1's
    :class:`Sam2TorchBackend`. Needs torch."""
    if get_model(variant).contract is C.SAM2_GRAPHS:
        return Sam2TorchBackend(load_sam2(checkpoint, variant))
    return TorchBackend(load_sam(checkpoint, variant))
