"""SAM model variants as data: one frozen record per image-encoder size.

The prompt encoder and mask decoder are the same for every variant; only the ViT image encoder
changes. ``tiny`` is not an official model: it exists so tests can run the whole pipeline on CPU in
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from samexport.errors import SamExportError

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class Variant:
    """Shape of one SAM image encoder and where its official checkpoint lives.

    Attributes:
        name: registry key, e.g. ``"vit_b"``.
        embed_dim: ViT token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        global_attn_indexes: blocks that attend globally over the 64x64 grid; all others use
            14x14 windows.
        checkpoint_filename: official file name, or ``None`` for test-only variants.
        checkpoint_sha256: sha256 of the official file, or ``None`` where unknown.
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    checkpoint_filename: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def checkpoint_url(self) -> str | None:
        if self.checkpoint_filename is None:
            return None
        return CHECKPOINT_BASE_URL + self.checkpoint_filename


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="vit_b",
            embed_dim=768,
            depth=12,
            num_heads=12,
            global_attn_indexes=(2, 5, 8, 11),
            checkpoint_filename="sam_vit_b_01ec64.pth",
            checkpoint_sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        Variant(
            name="vit_l",
            embed_dim=1024,
            depth=24,
            num_heads=16,
            global_attn_indexes=(5, 11, 17, 23),
            checkpoint_filename="sam_vit_l_0b3195.pth",
            checkpoint_sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        Variant(
            name="vit_h",
            embed_dim=1280,
            depth=32,
            num_heads=16,
            global_attn_indexes=(7, 15, 23, 31),
            checkpoint_filename="sam_vit_h_4b8939.pth",
            checkpoint_sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
        Variant(
            name="tiny",
            embed_dim=64,
            depth=2,
            num_heads=2,
            global_attn_indexes=(1,),
        ),
    )
}


def get_variant(name: str) -> Variant:
    """Return the registered variant called ``name``; an unknown name lists the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        valid = ", ".join(VARIANTS)
        raise SamExportError(f"unknown variant {name!r}; valid variants: {valid}") from None
