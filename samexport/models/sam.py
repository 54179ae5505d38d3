"""The whole SAM model: image encoder, prompt encoder and mask decoder under official names."""

from __future__ import annotations

from typing import Any

from torch import nn

from samexport.models.families import EncoderFamily, family_of


class Sam(nn.Module):
    """Container whose ``state_dict`` keys equal those of the official checkpoints.

    Takes its parts, as the official ``Sam`` does; ``samexport.models.builders`` assembles them
    per family. ``variant`` records which registry entry (a :class:`samexport.variants.Variant`,
    with ``family``) built the model (``None`` for a model assembled by hand); exporters read the
    encoder family from it.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        variant: Any = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.variant = variant

    @property
    def family(self) -> EncoderFamily:
        """The image encoder's family: the variant's, else the one whose encoder class this is."""
        if self.variant is not None:
            return self.variant.family
        return family_of(self.image_encoder)
