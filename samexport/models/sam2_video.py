"""Names and shapes of the video-only tensors in an official SAM 2.1 checkpoint (imports no torch).

``sam2.1_hiera_*.pt`` holds, beside the image path, the memory attention, the memory encoder and
the object-pointer projections the video predictor uses; they are the same for the four sizes.
samexport never builds them; this table exists so that random checkpoints in the official format
(:mod:`samexport.testing`) also load in the official ``build_sam2``, which loads strictly. Read
off the official model built from ``configs/sam2.1/sam2.1_hiera_t.yaml`` (``sam2==1.1.0``).
"""

from __future__ import annotations

from itertools import pairwise

DIM = 256  # memory attention width
MEM_DIM = 64  # memory features
NUM_MASKMEM = 7
MEMORY_LAYERS = 4
FUSER_LAYERS = 2


def _linear(name: str, out_dim: int, in_dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)}


def _norm(name: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _conv(name: str, out_dim: int, in_dim: int, kernel: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out_dim, in_dim, kernel, kernel), f"{name}.bias": (out_dim,)}


def video_tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an official SAM 2.1 checkpoint outside the image path -> its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "maskmem_tpos_enc": (NUM_MASKMEM, 1, 1, MEM_DIM),
        "no_mem_pos_enc": (1, 1, DIM),
        "no_obj_ptr": (1, DIM),
        "no_obj_embed_spatial": (1, MEM_DIM),
        **_conv("mask_downsample", 1, 1, 4),
    }
    for i in range(MEMORY_LAYERS):
        layer = f"memory_attention.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update(_linear(f"{layer}.self_attn.{proj}", DIM, DIM))
        for proj, in_dim in (("q_proj", DIM), ("k_proj", MEM_DIM), ("v_proj", MEM_DIM), ("out_proj", DIM)):
            shapes.update(_linear(f"{layer}.cross_attn_image.{proj}", DIM, in_dim))
        shapes.update(_linear(f"{layer}.linear1", 2048, DIM))
        shapes.update(_linear(f"{layer}.linear2", DIM, 2048))
        for norm in ("norm1", "norm2", "norm3"):
            shapes.update(_norm(f"{layer}.{norm}", DIM))
    shapes.update(_norm("memory_attention.norm", DIM))
    downsampler = "memory_encoder.mask_downsampler.encoder"
    channels = (1, 4, 16, 64, 256)  # 3x3 stride-2 convolution, LayerNorm2d, GELU per step
    for step, (in_dim, out_dim) in enumerate(pairwise(channels)):
        shapes.update(_conv(f"{downsampler}.{3 * step}", out_dim, in_dim, 3))
        shapes.update(_norm(f"{downsampler}.{3 * step + 1}", out_dim))
    shapes.update(_conv(f"{downsampler}.12", DIM, DIM, 1))
    shapes.update(_conv("memory_encoder.pix_feat_proj", DIM, DIM, 1))
    for i in range(FUSER_LAYERS):
        layer = f"memory_encoder.fuser.layers.{i}"
        shapes[f"{layer}.gamma"] = (DIM,)
        shapes.update(_conv(f"{layer}.dwconv", DIM, 1, 7))
        shapes.update(_norm(f"{layer}.norm", DIM))
        shapes.update(_linear(f"{layer}.pwconv1", 4 * DIM, DIM))
        shapes.update(_linear(f"{layer}.pwconv2", DIM, 4 * DIM))
    shapes.update(_conv("memory_encoder.out_proj", MEM_DIM, DIM, 1))
    for i in range(3):
        shapes.update(_linear(f"obj_ptr_proj.layers.{i}", DIM, DIM))
    shapes.update(_linear("obj_ptr_tpos_proj", MEM_DIM, DIM))
    return shapes
