"""SAM 2.1 checkpoint (``sam2.1_hiera_*.pt``) -> torch image model, with errors that say what was
expected and found.

Official SAM 2.1 checkpoints are ``{"model": state_dict}`` whose state dict holds the image path
(``image_encoder.*``, ``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``no_mem_embed``) and the
video parts; the image subset is loaded, the rest ignored. The variant is read off the Hiera
trunk's tensors (:func:`samexport.models.sam2_configs.describe_hiera`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from samexport.checkpoint import check_finite, load_checkpoint_file, load_weights
from samexport.errors import SamExportError
from samexport.models.sam2_configs import describe_hiera
from samexport.variants import Sam2Variant, get_sam2_variant, sam2_variant_of

if TYPE_CHECKING:
    import torch

    from samexport.models.sam2 import Sam2Image

REQUIRED_SECTIONS = ("image_encoder.trunk.", "image_encoder.neck.", "sam_prompt_encoder.", "sam_mask_decoder.")


def read_sam2_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of an official-format SAM 2.1 checkpoint.

    Raises:
        SamExportError: missing or unreadable file, or not a SAM 2.1 checkpoint (a SAM
            checkpoint is named as such).
    """
    content = load_checkpoint_file(
        path, "Official SAM 2.1 checkpoints are PyTorch .pt files holding {'model': state_dict}."
    )
    if isinstance(content, dict) and "model" not in content and any(str(k).startswith("mask_decoder.") for k in content):
        raise SamExportError(
            f"checkpoint {path} is a SAM (v1) checkpoint, not SAM 2.1: load it with samexport.checkpoint.load_sam"
        )
    state = content.get("model") if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state:
        found = sorted(map(str, content))[:3] if isinstance(content, dict) else type(content).__name__
        raise SamExportError(
            f"checkpoint {path} is not a SAM 2.1 checkpoint: expected {{'model': state_dict}}, found {found}"
        )
    missing = [s for s in REQUIRED_SECTIONS if not any(str(k).startswith(s) for k in state)]
    if missing:
        raise SamExportError(
            f"checkpoint {path} is not a SAM 2.1 checkpoint: no tensors under {', '.join(missing)}"
        )
    check_finite(state, source=str(path))
    return state


def identify_sam2_variant(state: dict[str, torch.Tensor]) -> Sam2Variant:
    """The SAM 2.1 variant whose Hiera trunk the state dict holds.

    Raises:
        SamExportError: no Hiera trunk, or one of a shape no SAM 2.1 model has.
    """
    config = describe_hiera(state)
    if config is None:
        raise SamExportError("checkpoint has no SAM 2.1 Hiera encoder (no image_encoder.trunk.patch_embed)")
    return sam2_variant_of(config)


def load_sam2(checkpoint: Path | str, variant: Sam2Variant | str | None = None) -> Sam2Image:
    """Build the SAM 2.1 image model and load the image part of ``checkpoint`` into it, in eval
    mode on CPU. ``variant`` (a name or record) is checked against the checkpoint; ``None``
    takes the one the checkpoint holds.

    Raises:
        SamExportError: unreadable file, not a SAM 2.1 checkpoint, a checkpoint of another size
            (the message names the size it holds), or tensors that do not fit.
    """
    from samexport.models.sam2 import image_subset

    state = read_sam2_state_dict(checkpoint)
    found = identify_sam2_variant(state)
    if variant is not None and get_sam2_variant(variant).name != found.name:
        raise SamExportError(
            f"checkpoint {checkpoint} holds {found.name}, but {get_sam2_variant(variant).name} was requested"
        )
    return load_weights(found.build(), image_subset(state), checkpoint=checkpoint, name=found.name)
