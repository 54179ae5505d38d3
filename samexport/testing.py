"""Random SAM checkpoints in the official format, for tests, benchmarks and your own checks.

No real checkpoint can be downloaded in CI, so samexport's tests (and its published CPU
benchmarks: latency does not depend on the weights) save seeded random weights with
``torch.save(state_dict)`` exactly as the official ``sam_vit_*.pth`` / ``mobile_sam.pt`` files
are stored, and load them through the same code path a user's checkpoint takes. Every parameter
is perturbed, so parity with these weights exercises every layer.

    from samexport.testing import save_random_checkpoint
    save_random_checkpoint("vit_b", "/tmp/sam_vit_b_random.pth")

Needs torch (extra ``torch``); the official-model oracle :func:`official_sam` needs the official
package (``segment-anything``, or ``mobilesam-mirror`` for MobileSAM).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samexport.image_sources import synthetic_image
from samexport.models.sam2_video import video_tensor_shapes
from samexport.variants import SAM2_VARIANTS, get_sam2_variant, get_variant

SEED = 0


def random_state_dict(variant_name: str, seed: int = SEED) -> dict:
    """A state dict of the official layout with random weights of realistic scale.

    Default torch initialisation leaves some parameters (and BatchNorm statistics) at constants;
    the encoder's family perturbs its own (``EncoderFamily.randomize_``: position embeddings,
    relative-position and bias tables, norms, BatchNorm running mean and variance), and the
    prompt encoder's and decoder's embeddings and norms are perturbed here, so every parameter
    influences the outputs. The same ``(variant_name, seed)`` gives the same weights.
    """
    import torch

    variant = get_variant(variant_name)
    torch.manual_seed(seed)
    model = variant.build()
    variant.family.randomize_(model.image_encoder)
    with torch.no_grad():
        for part in ("prompt_encoder", "mask_decoder"):
            for name, param in getattr(model, part).named_parameters():
                if "embeddings" in name:
                    param.normal_(0.0, 0.5)
                elif "norm" in name:
                    param.add_(torch.randn_like(param) * 0.1)
                elif name.endswith(("embed.weight", "token.weight", "tokens.weight")):
                    param.normal_(0.0, 1.0)
        # The LayerNorm2d of the mask downscaling and upscaling, last so the draws above stay
        # those of earlier versions of this function.
        for name, param in model.named_parameters():
            if name.startswith(("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_downscaling.4.",
                                "mask_decoder.output_upscaling.1.")):
                param.add_(torch.randn_like(param) * 0.1)
    return model.state_dict()


def random_sam2_state_dict(variant_name: str, seed: int = SEED) -> dict:
    """A SAM 2.1 state dict of the official layout (``checkpoint["model"]``) with random weights:
    the image path from samexport's model with every parameter perturbed (position embeddings,
    norms, embeddings and tokens, ``no_mem_embed``), and the video parts the official loader
    requires (:mod:`samexport.models.sam2_video`), random too. Same ``(name, seed)``, same weights.
    """
    import torch

    variant = get_sam2_variant(variant_name)
    torch.manual_seed(seed)
    model = variant.build()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("pos_embed", "pos_embed_window", "no_mem_embed")) or "embeddings" in name:
                param.normal_(0.0, 0.5)
            elif name.endswith(("embed.weight", "token.weight", "tokens.weight")):
                param.normal_(0.0, 1.0)
            elif "norm" in name or name.startswith(("sam_prompt_encoder.mask_downscaling.1.",
                                                    "sam_prompt_encoder.mask_downscaling.4.",
                                                    "sam_mask_decoder.output_upscaling.1.")):
                param.add_(torch.randn_like(param) * 0.1)
    state = model.state_dict()
    for name, shape in video_tensor_shapes().items():
        state[name] = torch.randn(shape) * 0.02
    return state


def save_random_checkpoint(variant_name: str, path: Path | str, seed: int = SEED) -> Path:
    """:func:`random_state_dict` saved at ``path`` as the official checkpoints are (parent folders
    created); returns the path. SAM 2.1 names (``sam2.1_hiera_tiny`` ...) save
    :func:`random_sam2_state_dict` as ``{"model": state_dict}``, the layout of
    ``sam2.1_hiera_*.pt``, which the official ``build_sam2`` loads too."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant_name in SAM2_VARIANTS:
        torch.save({"model": random_sam2_state_dict(variant_name, seed=seed)}, path)
    else:
        torch.save(random_state_dict(variant_name, seed=seed), path)
    return path


def official_sam(variant_name: str, state_dict: dict):
    """The official model (``segment_anything``, or ``mobile_sam`` for MobileSAM) with the same
    weights: the oracle samexport is compared against."""

    variant = get_variant(variant_name)
    return variant.family.official_sam(variant.encoder, state_dict)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of equal shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture: smooth gradients plus a few solid shapes."""

    return synthetic_image(height, width, seed)
