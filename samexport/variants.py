"""SAM model variants as data: one frozen record per model, one registry they are all read from.

A variant is an image encoder of some *family* (``vit`` for SAM's own encoders, ``tiny_vit`` for
MobileSAM) with a shape (the family's config), the prompt encoder and mask decoder every SAM
shares, and the record of its official checkpoint. What differs between encoder families
(checkpoint identification, FLOP count, ``--attention`` modes, FP16 islands) lives with the family
(:mod:`samexport.models.families`), never in ``if variant == ...`` code.

``tiny`` is not an official model: it exists so tests can run the whole pipeline on CPU in seconds.

Importing this module is cheap (no torch): the CLI help and the downloader read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from samexport.errors import SamExportError
from samexport.models.encoder_configs import MOBILE_SAM_TINY_VIT, ViTConfig
from samexport.models.families import TINY_VIT, VIT, EncoderFamily
from samexport.precision import DEFAULT_FP32_OPS

if TYPE_CHECKING:
    from samexport.models.sam import Sam

SAM_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_SHA256_SOURCE = (
    "not published by Meta (its README gives URLs only; the file name's suffix is the start of the "
    "md5): the digest of the file served at the URL, the same value recorded independently by "
    "several public projects that pin these checkpoints"
)


@dataclass(frozen=True)
class CheckpointRecord:
    """Where an official checkpoint comes from and how a download of it is checked.

    Attributes:
        filename: the file's name on the server and in the cache, e.g. ``sam_vit_b_01ec64.pth``.
        url: the address the file is downloaded from.
        sha256: lower-case hex digest of the file, or ``None`` where no trustworthy digest is
            known (the download is then checked against its ``Content-Length`` only).
        sha256_source: where ``sha256`` comes from, or why there is none.
    """

    filename: str
    url: str
    sha256: str | None
    sha256_source: str


@dataclass(frozen=True)
class Variant:
    """One SAM model: encoder family and shape, and its official checkpoint.

    Attributes:
        name: registry key, e.g. ``"vit_b"``.
        family: the image encoder's family (builds it, identifies its checkpoints, ...).
        encoder: the encoder's shape: an instance of ``family.config_type`` (:class:`ViTConfig`,
            :class:`TinyViTConfig`, ...).
        checkpoint: the official checkpoint, or ``None`` for test-only variants.
        aliases: other names the variant is known by (MobileSAM calls its model ``vit_t``).
        description: one line for ``--help``.
    """

    name: str
    family: EncoderFamily
    encoder: Any
    checkpoint: CheckpointRecord | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, self.family.config_type):
            raise TypeError(
                f"variant {self.name}: encoder must be a {self.family.config_type.__name__} for the "
                f"{self.family.name} family, got {type(self.encoder).__name__}"
            )

    def build(self) -> Sam:
        """This variant's builder: ``Sam(image_encoder, prompt_encoder, mask_decoder)`` with
        default-initialised weights, in train mode (see ``samexport.models.builders``)."""
        from samexport.models.builders import assemble_sam  # imports torch

        return assemble_sam(self.family, self.encoder, variant=self)

    @property
    def fp32_ops(self) -> frozenset[str]:
        """Op types the FP16 encoder graph keeps in FP32: the defaults plus the family's own."""
        return DEFAULT_FP32_OPS | self.family.extra_fp32_ops


def _sam_checkpoint(filename: str, sha256: str) -> CheckpointRecord:
    return CheckpointRecord(filename, SAM_CHECKPOINT_BASE_URL + filename, sha256, SAM_SHA256_SOURCE)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="vit_b",
            family=VIT,
            encoder=ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
            checkpoint=_sam_checkpoint(
                "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
            ),
            description="SAM ViT-B (89.7M encoder parameters)",
        ),
        Variant(
            name="vit_l",
            family=VIT,
            encoder=ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
            checkpoint=_sam_checkpoint(
                "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"
            ),
            description="SAM ViT-L (308M)",
        ),
        Variant(
            name="vit_h",
            family=VIT,
            encoder=ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
            checkpoint=_sam_checkpoint(
                "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
            ),
            description="SAM ViT-H (637M)",
        ),
        Variant(
            name="mobile_sam",
            family=TINY_VIT,
            encoder=MOBILE_SAM_TINY_VIT,
            checkpoint=CheckpointRecord(
                filename="mobile_sam.pt",
                url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                sha256=None,
                sha256_source=(
                    "none published: MobileSAM's README and repository (ChaoningZhang/MobileSAM, "
                    "weights/mobile_sam.pt) give the file but no checksum, and the digests third "
                    "parties pin disagree with each other, so a download is checked against its "
                    "Content-Length only; pass --checkpoint to use a file you verified"
                ),
            ),
            aliases=("vit_t",),
            description="MobileSAM: TinyViT-5M encoder (5.7M parameters), SAM's decoder",
        ),
        Variant(
            name="tiny",
            family=VIT,
            encoder=ViTConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,)),
            description="2-block ViT with random weights, for tests only",
        ),
    )
}

ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}


def get_variant(name: str | Variant) -> Variant:
    """The registered variant called ``name`` (or one of its aliases); a :class:`Variant` is
    returned as is. An unknown name lists the valid ones."""
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[ALIASES.get(name, name)]
    except KeyError:
        valid = ", ".join(VARIANTS)
        known = ", ".join(f"{a} = {n}" for a, n in ALIASES.items())
        raise SamExportError(f"unknown variant {name!r}; valid variants: {valid} (aliases: {known})") from None


def build_sam(variant: str | Variant) -> Sam:
    """``Sam(image_encoder, prompt_encoder, mask_decoder)`` for ``variant`` (a registry name or
    alias, or a :class:`Variant`), default-initialised, in train mode: ``get_variant(variant).build()``."""
    return get_variant(variant).build()


def variants_help() -> str:
    """One line per variant for ``--help``, e.g. ``vit_b (SAM ViT-B ...)``."""
    parts = []
    for v in VARIANTS.values():
        alias = f", alias {', '.join(v.aliases)}" if v.aliases else ""
        parts.append(f"{v.name} ({v.description}{alias})" if v.description else v.name)
    return "; ".join(parts)
