"""One builder for every registered variant: its family's encoder + SAM's prompt encoder and decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samexport.models.mask_decoder import MaskDecoder
from samexport.models.prompt_encoder import PromptEncoder
from samexport.models.sam import Sam

if TYPE_CHECKING:
    from samexport.variants import Variant


def build_sam(variant: Variant | str) -> Sam:
    """``Sam(image_encoder, prompt_encoder, mask_decoder)`` for ``variant`` (a registry name or
    alias, or a :class:`~samexport.variants.Variant`), default-initialised, in train mode.

    Modules are created in the order encoder, prompt encoder, decoder, so a seeded build gives the
    same weights every time (``tests/conftest.py`` relies on it).
    """
    from samexport.variants import get_variant

    variant = get_variant(variant)
    return Sam(
        variant.family.build_encoder(variant.encoder),
        PromptEncoder(),
        MaskDecoder(),
        variant=variant,
    )
