"""SAM in PyTorch, written for export: state-dict compatible with the official checkpoints.

``samexport.models.families`` (the encoder families) and ``encoder_configs`` import no torch; the
model modules do, so ``Sam`` and ``assemble_sam`` are imported on first use. A registered variant
is built by the registry: ``samexport.variants.build_sam("vit_b")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from samexport.models.builders import assemble_sam
    from samexport.models.sam import Sam

__all__ = ["Sam", "assemble_sam"]


def __getattr__(name: str):
    # torch is heavy and optional: the model modules import it, so they load on first use.
    if name == "Sam":
        from samexport.models.sam import Sam

        return Sam
    if name == "assemble_sam":
        from samexport.models.builders import assemble_sam

        return assemble_sam
    raise AttributeError(f"module 'samexport.models' has no attribute {name!r}")
