"""Shared fixtures: randomly initialised SAM models saved in the official checkpoint format.

The weights come from ``samexport.testing`` (seeded random weights saved exactly as the official
``sam_vit_*.pth`` files are stored), which the benchmarks and users share.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import full_size_enabled

from samexport.testing import official_sam, save_random_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path to a tiny-variant checkpoint saved like an official one."""
    return save_random_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "sam_tiny_random.pth")


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


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> Path:
    """Full-size vit_b with seeded random weights, saved like ``sam_vit_b_01ec64.pth`` (~360 MB)."""
    if not full_size_enabled():
        pytest.skip("SAMEXPORT_SKIP_SLOW=1: full-size vit_b tests skipped")
    return save_random_checkpoint("vit_b", tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth")


@pytest.fixture(scope="session")
def vit_b_artifact(vit_b_checkpoint, tmp_path_factory) -> Path:
    """fp32 artifact directory for vit_b (export takes ~30 s and ~2 GB of memory)."""
    from samexport.pipeline import build

    out = tmp_path_factory.mktemp("artifacts") / "vit_b-fp32"
    return build("vit_b", checkpoint=vit_b_checkpoint, output=out).artifact_dir
