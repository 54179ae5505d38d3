"""samexport.family_transforms: the host transforms chosen by graph contract, against the official
PyTorch recipes (SAM's ``Sam.postprocess_masks``, SAM 2.1's ``SAM2Transforms.postprocess_masks``)."""

from __future__ import annotations

import numpy as np
import pytest

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.family_transforms import mask_upsampling_for, preprocess_for

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _official_sam(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """segment_anything's Sam.postprocess_masks: 256 -> 1024, crop to the resized image, resize."""
    scale = C.IMAGE_SIZE / max(size)
    crop = (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5))
    up = F.interpolate(torch.from_numpy(logits), (C.IMAGE_SIZE, C.IMAGE_SIZE), mode="bilinear", align_corners=False)
    return F.interpolate(up[..., : crop[0], : crop[1]], size, mode="bilinear", align_corners=False).numpy()


def _official_sam2(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """sam2's SAM2Transforms.postprocess_masks (no hole filling): one resize of the whole map."""
    return F.interpolate(torch.from_numpy(logits), size, mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize(("contract", "official"), [(C.SAM_GRAPHS, _official_sam), (C.SAM2_GRAPHS, _official_sam2)])
@pytest.mark.parametrize("size", [(600, 900), (333, 200)])
def test_mask_upsampling_is_the_official_recipe_of_each_family(contract, official, size):
    logits = np.random.default_rng(3).standard_normal((1, 3, 256, 256), dtype=np.float32) * 4
    upsampling = mask_upsampling_for(contract, size)
    expected = official(logits, size)
    assert upsampling.original_size == size
    np.testing.assert_allclose(upsampling.whole(logits), expected, rtol=0, atol=2e-5)
    masks = upsampling.whole(logits, threshold=C.MASK_THRESHOLD)
    decided = np.abs(expected) > 1e-4  # away from the threshold: rounding cannot flip them
    assert masks.dtype == bool and np.array_equal(masks[decided], (expected > C.MASK_THRESHOLD)[decided])
    # The separable weights describe the same map (what the mask generator's measurement reads).
    np.testing.assert_allclose(upsampling.rows @ logits[0, 0] @ upsampling.cols.T, expected[0, 0], rtol=0, atol=2e-5)


def test_preprocessing_differs_by_family_as_each_recipe_says():
    """SAM: longest side to 1024, SAM's pixel statistics, zero padding below and right; SAM 2.1: a
    square 1024 resize on [0, 1] with ImageNet statistics, no padding."""
    image = np.random.default_rng(2).integers(0, 256, (500, 750, 3), dtype=np.uint8)
    sam, sam2 = preprocess_for(C.SAM_GRAPHS)(image), preprocess_for(C.SAM2_GRAPHS)(image)
    assert sam.shape == sam2.shape == (1, 3, C.IMAGE_SIZE, C.IMAGE_SIZE) and sam.dtype == sam2.dtype == np.float32
    assert np.all(sam[..., 683:, :] == 0) and np.any(sam[..., :683, :] != 0)  # 500x750 -> 683x1024, padded
    assert np.any(sam2[..., 700:, :] != 0)  # stretched to the full square
    mean_rgb = image.reshape(-1, 3).mean(axis=0) / 255
    expected = (mean_rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(sam2[0].mean(axis=(1, 2)), expected, atol=0.02)


def test_an_unknown_contract_is_a_clear_error():
    other = C.GraphContract("sam3", C.SAM_GRAPHS.encoder_outputs, C.PROMPT_INPUTS, C.SAM_GRAPHS.decoder_outputs, False)
    with pytest.raises(SamExportError, match="no host transforms for the graph contract 'sam3'; known: sam, sam2"):
        preprocess_for(other)
    with pytest.raises(SamExportError, match="'sam3'"):
        mask_upsampling_for(other, (10, 10))
