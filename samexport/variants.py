"""Model variants as data: one frozen record per model, one registry they are all read from.

Two model families share it (:data:`MODELS`, :func:`get_model`): SAM's (:class:`Variant`,
:data:`VARIANTS`: SAM ViT-B/L/H and MobileSAM) and SAM 2.1's image path (:class:`Sam2Variant`,
:data:`SAM2_VARIANTS`: Hiera-T/S/B+/L). Each record's ``contract`` is its family's
:class:`~samexport.constants.GraphContract`: the tensors its encoder emits and its decoder takes,
which build, manifest and runtime read instead of asking which model they hold. Doors that serve
SAM only (``get_variant``, ``load_sam``, ``SamPredictor``) refuse a SAM 2.1 name saying where it goes.

A SAM variant is an image encoder of some *family* (``vit`` for SAM's own encoders, ``tiny_vit`` for
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

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.models.encoder_configs import MOBILE_SAM_TINY_VIT, ViTConfig
from samexport.models.families import TINY_VIT, VIT, EncoderFamily
from samexport.models.sam2_configs import (
    HIERA_BASE_PLUS,
    HIERA_LARGE,
    HIERA_SMALL,
    HIERA_TINY,
    HieraConfig,
    hiera_encoder_macs,
)
from samexport.precision import DEFAULT_FP32_OPS

if TYPE_CHECKING:
    from samexport.models.sam import Sam
    from samexport.models.sam2 import Sam2Image

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

    def encoder_macs(self) -> int:
        """Multiply-accumulates of one encoder pass, counted by the family (``EncoderFamily.encoder_macs``)."""
        return self.family.encoder_macs(self.encoder)

    contract = C.SAM_GRAPHS  # the graph contract every SAM variant shares


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


# -- SAM 2.1 (image path) -------------------------------------------------------------------------

SAM2_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_SHA256_SOURCE = (
    "none published: Meta's sam2 repository (README and checkpoints/download_ckpts.sh, base URL "
    f"{SAM2_CHECKPOINT_BASE_URL}) gives URLs only, no checksums, so a download is checked against "
    "its Content-Length only; pass --checkpoint to use a file you verified"
)
# The official package's config for each size (``sam2/configs/sam2.1/``), for the oracle.
OFFICIAL_SAM2_CONFIGS = {
    HIERA_TINY: "configs/sam2.1/sam2.1_hiera_t.yaml",
    HIERA_SMALL: "configs/sam2.1/sam2.1_hiera_s.yaml",
    HIERA_BASE_PLUS: "configs/sam2.1/sam2.1_hiera_b+.yaml",
    HIERA_LARGE: "configs/sam2.1/sam2.1_hiera_l.yaml",
}


@dataclass(frozen=True)
class Sam2Variant:
    """One SAM 2.1 image model (Hiera encoder, SAM 2.1's decoder; see :mod:`samexport.models.sam2`).

    Attributes:
        name: registry key, e.g. ``"sam2.1_hiera_tiny"`` (the checkpoint's file stem).
        encoder: the Hiera trunk's shape.
        checkpoint: the official checkpoint (sha256 ``None``: none published).
        description: one line for ``--help``.
        fp32_ops: op types the FP16 encoder graph keeps in FP32 (``samexport.precision.fp16``;
            ``samexport build --fp16`` reads them here; the measurement: docs/sam2.md).
    """

    name: str
    encoder: HieraConfig
    checkpoint: CheckpointRecord
    description: str = ""
    fp32_ops: frozenset[str] = DEFAULT_FP32_OPS

    contract = C.SAM2_GRAPHS
    aliases: tuple[str, ...] = ()

    @property
    def official_config(self) -> str:
        """The ``sam2`` package's config name for this size (``build_sam2``'s first argument)."""
        return OFFICIAL_SAM2_CONFIGS[self.encoder]

    def encoder_macs(self) -> int:
        """Multiply-accumulates of one encoder pass (:func:`~samexport.models.sam2_configs.hiera_encoder_macs`)."""
        return hiera_encoder_macs(self.encoder)

    def build(self) -> Sam2Image:
        """The image model with default-initialised weights, in train mode (needs torch)."""
        from samexport.models.sam2 import build_sam2_image  # imports torch

        return build_sam2_image(self.encoder)


def _sam2_variant(size: str, encoder: HieraConfig, description: str) -> Sam2Variant:
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
        _sam2_variant("tiny", HIERA_TINY, "SAM 2.1 Hiera-T (31.4M parameters in the image path)"),
        _sam2_variant("small", HIERA_SMALL, "SAM 2.1 Hiera-S (38.5M)"),
        _sam2_variant("base_plus", HIERA_BASE_PLUS, "SAM 2.1 Hiera-B+ (73.3M)"),
        _sam2_variant("large", HIERA_LARGE, "SAM 2.1 Hiera-L (216.9M)"),
    )
}

ModelVariant = Variant | Sam2Variant
# The one registry: every model samexport builds, SAM's family and SAM 2.1's.
MODELS: dict[str, ModelVariant] = {**VARIANTS, **SAM2_VARIANTS}

ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}


def get_model(name: str | ModelVariant) -> ModelVariant:
    """Any registered model (SAM's family or SAM 2.1's) called ``name`` or one of its aliases; a
    record is returned as is. An unknown name lists the valid ones."""
    if isinstance(name, (Variant, Sam2Variant)):
        return name
    try:
        return MODELS[ALIASES.get(name, name)]
    except KeyError:
        raise SamExportError(f"unknown variant {name!r}; valid variants: {', '.join(MODELS)}") from None


def get_variant(name: str | Variant) -> Variant:
    """The registered SAM-family variant called ``name`` (or one of its aliases); a
    :class:`Variant` is returned as is. An unknown name lists the valid ones; a SAM 2.1 name says
    which API serves it."""
    if isinstance(name, Variant):
        return name
    if isinstance(name, Sam2Variant) or name in SAM2_VARIANTS:
        label = name if isinstance(name, str) else name.name
        raise SamExportError(
            f"{label} is a SAM 2.1 model: use samexport.SAM2ImagePredictor (and load_sam2 for its "
            "checkpoint); SamPredictor and load_sam serve SAM and MobileSAM"
        )
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
    for v in MODELS.values():
        alias = f", alias {', '.join(v.aliases)}" if v.aliases else ""
        parts.append(f"{v.name} ({v.description}{alias})" if v.description else v.name)
    return "; ".join(parts)


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
    """The registered SAM 2.1 variant with this Hiera shape."""
    for variant in SAM2_VARIANTS.values():
        if variant.encoder == encoder:
            return variant
    raise SamExportError(f"no SAM 2.1 variant has the Hiera shape {encoder}")
