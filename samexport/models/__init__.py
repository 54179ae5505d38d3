"""SAM in PyTorch, written for export: state-dict compatible with the official checkpoints.

``samexport.models.families`` (the encoder families) imports no torch; the model modules do, so
``Sam`` and ``build_sam`` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from samexport.models.builders import build_sam
    from samexport.models.sam import Sam

__all__ = ["Sam", "build_sam"]


def __getattr__(name: str):
    if name == "Sam":
        from samexport.models.sam import Sam

        return Sam
    if name == "build_sam":
        from samexport.models.builders import build_sam

        return build_sam
    raise AttributeError(f"module 'samexport.models' has no attribute {name!r}")
