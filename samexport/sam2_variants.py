"""SAM 2.1's image models as data: one frozen record per size, one registry (imports no torch).

SAM 2.1 differs from SAM in more than its encoder (its decoder takes high-resolution skips and
scores the object, its checkpoints nest the weights under ``"model"`` beside the video parts, its
preprocessing stretches the image to a square), so its variants are kept apart from
:data:`samexport.variants.VARIANTS` until export and the runtime know both models: registered
there now, ``samexport build`` and the predictor would accept names they cannot serve.

    from samexport.sam2_variants import get_sam2_variant
    model = get_sam2_variant("sam2.1_hiera_tiny").build()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from samexport.errors import SamExportError
from samexport.models.sam2_configs import HIERA_BASE_PLUS, HIERA_LARGE, HIERA_SMALL, HIERA_TINY, HieraConfig
from samexport.variants import CheckpointRecord

if TYPE_CHECKING:
    from samexport.models.sam2 import Sam2Image

SAM2_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_SHA256_SOURCE = (
    "none published: Meta's sam2 repository (README and checkpoints/download_ckpts.sh, base URL "
    f"{SAM2_CHECKPOINT_BASE_URL}) gives URLs only, no checksums, so a download is checked against "
    "its Content-Length only; pass --checkpoint to use a file you verified"
)
# The official package's config for each size (``sam2/configs/sam2.1/``), for the oracle.
OFFICIAL_CONFIGS = {
    HIERA_TINY: "configs/sam2.1/sam2.1_hiera_t.yaml",
    HIERA_SMALL: "configs/sam2.1/sam2.1_hiera_s.yaml",
    HIERA_BASE_PLUS: "configs/sam2.1/sam2.1_hiera_b+.yaml",
    HIERA_LARGE: "configs/sam2.1/sam2.1_hiera_l.yaml",
}


@dataclass(frozen=True)
class Sam2Variant:
    """One SAM 2.1 image model.

    Attributes:
        name: registry key, e.g. ``"sam2.1_hiera_tiny"`` (the checkpoint's file stem).
        encoder: the Hiera trunk's shape.
        checkpoint: the official checkpoint (sha256 ``None``: none published).
        description: one line for ``--help``.
    """

    name: str
    encoder: HieraConfig
    checkpoint: CheckpointRecord
    description: str = ""

    @property
    def official_config(self) -> str:
        """The ``sam2`` package's config name for this size (``build_sam2``'s first argument)."""
        return OFFICIAL_CONFIGS[self.encoder]

    def build(self) -> Sam2Image:
        """The image model with default-initialised weights, in train mode (needs torch)."""
        from samexport.models.sam2 import build_sam2_image

        return build_sam2_image(self.encoder)


def _variant(size: str, encoder: HieraConfig, description: str) -> Sam2Variant:
    filename = f"sam2.1_hiera_{size}.pt"
    return Sam2Variant(
        name=f"sam2.1_hiera_{size}",
        encoder=encoder,
        checkpoint=CheckpointRecord(filename, SAM2_CHECKPOINT_BASE_URL + filename, None, SAM2_SHA256_SOURCE),
        description=description,
    )


SAM2_VARIANTS: dict[str, Sam2Variant] = {
    v.name: v
    for v in (
        _variant("tiny", HIERA_TINY, "SAM 2.1 Hiera-T (31.4M parameters in the image path)"),
        _variant("small", HIERA_SMALL, "SAM 2.1 Hiera-S (38.5M)"),
        _variant("base_plus", HIERA_BASE_PLUS, "SAM 2.1 Hiera-B+ (73.3M)"),
        _variant("large", HIERA_LARGE, "SAM 2.1 Hiera-L (216.9M)"),
    )
}


def get_sam2_variant(name: str | Sam2Variant) -> Sam2Variant:
    """The SAM 2.1 variant called ``name``; a :class:`Sam2Variant` is returned as is. An unknown
    name lists the valid ones."""
    if isinstance(name, Sam2Variant):
        return name
    try:
        return SAM2_VARIANTS[name]
    except KeyError:
        raise SamExportError(f"unknown SAM 2.1 variant {name!r}; valid: {', '.join(SAM2_VARIANTS)}") from None


def sam2_variant_of(encoder: HieraConfig) -> Sam2Variant:
    """The registered variant with this Hiera shape."""
    for variant in SAM2_VARIANTS.values():
        if variant.encoder == encoder:
            return variant
    raise SamExportError(f"no SAM 2.1 variant has the Hiera shape {encoder}")
