"""One builder for every encoder family: its encoder + SAM's prompt encoder and mask decoder.

The registry (:mod:`samexport.variants`) names the family and shape of each variant and builds it
with :func:`assemble_sam` (``VARIANTS["vit_b"].build()``, ``samexport.variants.build_sam("vit_b")``).
"""

from __future__ import annotations

from typing import Any

from samexport.models.families import EncoderFamily
from samexport.models.mask_decoder import MaskDecoder
from samexport.models.prompt_encoder import PromptEncoder
from samexport.models.sam import Sam


def assemble_sam(family: EncoderFamily, encoder: Any, *, variant: Any = None) -> Sam:
    """``Sam(image_encoder, prompt_encoder, mask_decoder)`` with ``family``'s encoder of shape
    ``encoder`` (an instance of ``family.config_type``), default-initialised, in train mode;
    ``variant`` is the registry record the model records (``Sam.variant``).

    Modules are created in the order encoder, prompt encoder, decoder, so a seeded build gives the
    same weights every time (``tests/conftest.py`` relies on it).
    """
    return Sam(family.build_encoder(encoder), PromptEncoder(), MaskDecoder(), variant=variant)
