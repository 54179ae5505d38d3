"""Shared fixtures: randomly initialised SAM models saved in the official checkpoint format.

No real checkpoint can be downloaded in CI, so tests save seeded random weights with
``torch.save(state_dict)`` exactly as the official ``sam_vit_*.pth`` files are stored, and load them
through the same code path a user's checkpoint takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SEED = 0


def random_state_dict(variant_name: str, seed: int = SEED) -> dict:
    """A state dict of the official layout with random weights of realistic scale.

    Default torch initialisation leaves some parameters (and BatchNorm statistics) at constants;
    the encoder's family perturbs its own (``EncoderFamily.randomize_``: position embeddings,
    relative-position and bias tables, norms, BatchNorm running mean and variance), and the
    prompt encoder's and decoder's embeddings and norms are perturbed here, so every parameter
    influences the outputs.
    """
    import torch

    from samexport.variants import get_variant

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path to a tiny-variant checkpoint saved like an official one."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny_random.pth"
    torch.save(random_state_dict("tiny"), path)
    return path


@pytest.fixture(scope="session")
def tiny_sam(tiny_checkpoint):
    """The tiny model loaded through ``samexport.checkpoint.load_sam``."""
    from samexport.checkpoint import load_sam

    return load_sam(tiny_checkpoint, "tiny")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_sam, tmp_path_factory) -> tuple[Path, Path]:
    """(encoder.onnx, decoder.onnx) exported from the tiny model, fp32."""
    from samexport.export.to_onnx import export_decoder, export_encoder

    folder = tmp_path_factory.mktemp("onnx")
    return export_encoder(tiny_sam, folder / "encoder.onnx"), export_decoder(tiny_sam, folder / "decoder.onnx")


def full_size_enabled() -> bool:
    """Full vit_b tests take tens of seconds each; ``SAMEXPORT_SKIP_SLOW=1`` skips them."""
    return os.environ.get("SAMEXPORT_SKIP_SLOW", "0") != "1"


def official_sam(variant_name: str, state_dict: dict):
    """The official model (``segment_anything``, or ``mobile_sam`` for MobileSAM) with the same
    weights: the test oracle."""
    from samexport.variants import get_variant

    variant = get_variant(variant_name)
    return variant.family.official_sam(variant.encoder, state_dict)


@pytest.fixture(scope="session")
def tiny_official(tiny_checkpoint):
    import torch

    return official_sam("tiny", torch.load(tiny_checkpoint, weights_only=True))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """An artifact directory built by ``samexport.build`` (``samexport.pipeline``) from the tiny checkpoint."""
    from samexport.pipeline import build

    out = tmp_path_factory.mktemp("artifacts") / "tiny-fp32"
    return build("tiny", checkpoint=tiny_checkpoint, output=out).artifact_dir


def mask_iou(a, b) -> float:
    """IoU of two boolean masks of equal shape (1.0 when both are empty)."""
    import numpy as np

    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def make_image(height: int, width: int, seed: int = 0):
    """A deterministic HxWx3 uint8 picture: smooth gradients plus a few solid shapes."""
    from samexport.parity import synthetic_image

    return synthetic_image(height, width, seed)


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> Path:
    """Full-size vit_b with seeded random weights, saved like ``sam_vit_b_01ec64.pth`` (~360 MB)."""
    import torch

    if not full_size_enabled():
        pytest.skip("SAMEXPORT_SKIP_SLOW=1: full-size vit_b tests skipped")
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(random_state_dict("vit_b"), path)
    return path


@pytest.fixture(scope="session")
def vit_b_artifact(vit_b_checkpoint, tmp_path_factory) -> Path:
    """fp32 artifact directory for vit_b (export takes ~30 s and ~2 GB of memory)."""
    from samexport.pipeline import build

    out = tmp_path_factory.mktemp("artifacts") / "vit_b-fp32"
    return build("vit_b", checkpoint=vit_b_checkpoint, output=out).artifact_dir
