"""SAM 2.1's image path (samexport.models.sam2) against the official package (``sam2==1.1.0``).

The same random checkpoint, saved as ``{"model": state_dict}`` like ``sam2.1_hiera_*.pt``, is
loaded by the official ``build_sam2`` + ``SAM2ImagePredictor`` and by
``samexport.sam2_checkpoint.load_sam2``; embeddings, high-resolution features, and for every prompt
of the suite the low-resolution logits and IoU predictions (and the object scores) are compared
at fp32 tolerances, on two aspect ratios.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import SAM2_OFFICIAL_MISSING

from samexport.errors import SamExportError
from samexport.models.sam2_configs import describe_hiera, hiera_encoder_macs
from samexport.models.sam2_decoder import select_masks
from samexport.sam2_checkpoint import identify_sam2_variant, load_sam2, read_sam2_state_dict
from samexport.sam2_transforms import postprocess_sam2_masks, preprocess_sam2, sam2_prompt_points, select_sam2_masks
from samexport.testing import make_image, random_sam2_state_dict, save_random_checkpoint
from samexport.variants import SAM2_VARIANTS, get_sam2_variant

LANDSCAPE, PORTRAIT = (600, 900), (1100, 700)  # neither 1024 nor square
# Every size on one image; tiny on both aspect ratios too (the aspect ratio enters through the
# preprocessing and the prompt coordinates, which do not depend on the size). The three larger
# sizes take minutes on a 2-core CPU: marked slow.
CASES = [
    pytest.param("sam2.1_hiera_tiny", LANDSCAPE, id="tiny-600x900"),
    pytest.param("sam2.1_hiera_tiny", PORTRAIT, id="tiny-1100x700"),
    pytest.param("sam2.1_hiera_small", PORTRAIT, id="small-1100x700", marks=pytest.mark.slow),
    pytest.param("sam2.1_hiera_base_plus", LANDSCAPE, id="base_plus-600x900", marks=pytest.mark.slow),
    pytest.param("sam2.1_hiera_large", PORTRAIT, id="large-1100x700", marks=pytest.mark.slow),
]
LOW_RES_CLAMP = 32.0  # the official predictor clamps the returned low-resolution logits


def _prompts(height: int, width: int) -> dict[str, dict]:
    """The prompt suite, in pixels of the original image (mask prompts are added later)."""
    point = np.array([[0.4 * width, 0.55 * height]], np.float32)
    box = np.array([0.2 * width, 0.25 * height, 0.7 * width, 0.8 * height], np.float32)
    several = np.array([[0.3 * width, 0.3 * height], [0.6 * width, 0.5 * height], [0.5 * width, 0.8 * height]], np.float32)
    return {
        "point": {"point_coords": point, "point_labels": np.array([1])},
        "box": {"box": box},
        "box+point": {"box": box, "point_coords": point, "point_labels": np.array([0])},
        "points": {"point_coords": several, "point_labels": np.array([1, 0, 1])},
    }


def _ours(model, features, original_size, *, mask_input=None, multimask_output, **prompt):
    """samexport's low-res logits (not yet clamped) and IoU for one prompt."""
    coords, labels = sam2_prompt_points(original_size, **prompt)
    batch = max(coords.shape[0], 1)
    has_mask = torch.ones(batch) if mask_input is not None else torch.zeros(batch)
    mask = torch.as_tensor(mask_input).reshape(batch, 1, 256, 256) if mask_input is not None else torch.zeros(batch, 1, 256, 256)
    with torch.no_grad():
        masks, iou, objects = model.decode(*features, torch.from_numpy(coords), torch.from_numpy(labels), mask, has_mask)
        masks, iou = select_masks(masks, iou, multimask_output=multimask_output)
    return masks[0].numpy(), iou[0].numpy(), objects


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    """(variant name, official SAM2ImagePredictor, samexport model, checkpoint path)."""
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    name = request.param
    path = save_random_checkpoint(name, tmp_path_factory.mktemp("sam2") / f"{name}_random.pt")
    official = build_sam2(get_sam2_variant(name).official_config, str(path), device="cpu")
    return name, SAM2ImagePredictor(official), load_sam2(path, name), path


def _close(ours: np.ndarray, theirs: np.ndarray, *, relative: float, what: str) -> None:
    """``|ours - theirs| <= relative * max(1, max |theirs|)`` everywhere."""
    scale = max(1.0, float(np.abs(theirs).max()))
    error = float(np.abs(ours - theirs).max())
    assert error <= relative * scale, f"{what}: max abs error {error:.3g} (reference scale {scale:.3g})"


@pytest.mark.parametrize(("pair", "shape"), CASES, indirect=["pair"])
def test_outputs_equal_official(pair, shape):
    """Image embedding, high-res features, and the prompt suite's logits / IoU / object scores."""
    name, predictor, model, _ = pair
    height, width = shape
    image = make_image(height, width, seed=3)
    predictor.set_image(image)
    with torch.no_grad():
        features = model.encode(torch.from_numpy(preprocess_sam2(image)))
    theirs = predictor._features
    _close(features[0].numpy(), theirs["image_embed"].numpy(), relative=1e-5, what="image embedding")
    _close(features[1].numpy(), theirs["high_res_feats"][0].numpy(), relative=1e-5, what="stride-4 features")
    _close(features[2].numpy(), theirs["high_res_feats"][1].numpy(), relative=1e-5, what="stride-8 features")

    suite = _prompts(height, width)
    _, _, previous = predictor.predict(**suite["point"], multimask_output=False)
    suite["point+mask"] = {**suite["point"], "mask_input": previous}
    suite["mask"] = {"mask_input": previous}
    for label, prompt in suite.items():
        for multimask in (True, False):
            masks_o, iou_o, low_o = predictor.predict(**prompt, multimask_output=multimask)
            low, iou, _ = _ours(model, features, (height, width), multimask_output=multimask, **prompt)
            assert low.shape == low_o.shape and iou.shape == iou_o.shape, label
            clamped = np.clip(low, -LOW_RES_CLAMP, LOW_RES_CLAMP)
            _close(clamped, low_o, relative=1e-4, what=f"{name} {label} multimask={multimask} logits")
            masks = postprocess_sam2_masks(low, (height, width), threshold=0.0)
            assert masks.shape == masks_o.shape, label
            assert (masks != masks_o).mean() <= 1e-4, f"{label}: masks differ in {(masks != masks_o).sum()} pixels"
            _close(iou, iou_o, relative=1e-5, what=f"{name} {label} multimask={multimask} IoU")
            foreground = (low_o > 0).mean(axis=(1, 2))
            assert ((foreground > 0.01) & (foreground < 0.99)).any(), f"{label}: trivial masks {foreground}"

    # All four tokens and the object score, which the official predictor does not return.
    official = predictor.model
    coords, labels = sam2_prompt_points((height, width), **suite["box+point"])
    with torch.no_grad():
        # without our padding point: the official prompt encoder appends its own
        official_points = (torch.from_numpy(coords[:, :-1]), torch.from_numpy(labels[:, :-1]).int())
        sparse, dense = official.sam_prompt_encoder(points=official_points, boxes=None, masks=None)
        masks_o, iou_o, _, objects_o = official.sam_mask_decoder.predict_masks(
            image_embeddings=theirs["image_embed"], image_pe=official.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=False,
            high_res_features=theirs["high_res_feats"],
        )
        masks, iou, objects = model.decode(*features, torch.from_numpy(coords), torch.from_numpy(labels),
                                           torch.zeros(1, 1, 256, 256), torch.zeros(1))
    _close(masks.numpy(), masks_o.numpy(), relative=1e-4, what="all four tokens' logits")
    _close(iou.numpy(), iou_o.numpy(), relative=1e-5, what="all four IoU predictions")
    _close(objects.numpy(), objects_o.numpy(), relative=1e-5, what="object score logits")


def test_dynamic_multimask_takes_both_branches():
    """``select_masks`` with one mask: token 0 when stable, else the best multimask token."""
    torch.manual_seed(0)
    masks = torch.randn(2, 4, 256, 256)
    masks[0, 0] = 5.0  # all far above +-delta: stability 1
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.9]])
    out, scores = select_masks(masks, iou, multimask_output=False)
    assert torch.equal(out[0, 0], masks[0, 0]) and scores[0, 0] == 0.1
    assert torch.equal(out[1, 0], masks[1, 3]) and scores[1, 0] == 0.9  # random logits: unstable
    out, scores = select_masks(masks, iou, multimask_output=True)
    assert torch.equal(out, masks[:, 1:]) and torch.equal(scores, iou[:, 1:])
    for multimask in (True, False):  # the NumPy twin the runtime uses
        expected = select_masks(masks, iou, multimask_output=multimask)
        got = select_sam2_masks(masks.numpy(), iou.numpy(), multimask_output=multimask)
        assert all(np.array_equal(g, e.numpy()) for g, e in zip(got, expected))


@pytest.mark.parametrize("name", list(SAM2_VARIANTS))
def test_identifies_every_size_from_tensors(name):
    variant = SAM2_VARIANTS[name]
    with torch.device("meta"):
        state = variant.build().state_dict()
    assert describe_hiera(state) == variant.encoder
    assert identify_sam2_variant(state) is variant


@pytest.mark.parametrize("name", list(SAM2_VARIANTS))
def test_state_dict_layout_equals_official(name):
    """Our image model's keys and shapes are exactly the official model's image subset, and the
    random checkpoint holds every official key (video parts included)."""
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.build_sam import build_sam2

    from samexport.models.sam2 import image_subset
    from samexport.models.sam2_video import video_tensor_shapes

    variant = SAM2_VARIANTS[name]
    official = {k: tuple(v.shape) for k, v in build_sam2(variant.official_config, None, device="cpu").state_dict().items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in variant.build().state_dict().items()}
    assert ours == image_subset(official)
    assert {**ours, **video_tensor_shapes()} == official


def test_random_checkpoint_is_deterministic_and_perturbs_everything():
    a, b = random_sam2_state_dict("sam2.1_hiera_tiny", seed=3), random_sam2_state_dict("sam2.1_hiera_tiny", seed=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    constant = [k for k, t in a.items() if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all())]
    assert not constant, constant


def test_refuses_what_is_not_sam2(tmp_path, tiny_checkpoint):
    with pytest.raises(SamExportError, match="SAM \\(v1\\) checkpoint, not SAM 2.1"):
        read_sam2_state_dict(tiny_checkpoint)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(SamExportError, match="not a SAM 2.1 checkpoint: expected .'model'"):
        read_sam2_state_dict(plain)
    state = random_sam2_state_dict("sam2.1_hiera_tiny")
    no_decoder = tmp_path / "no_decoder.pt"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("sam_mask_decoder.")}}, no_decoder)
    with pytest.raises(SamExportError, match="no tensors under sam_mask_decoder."):
        read_sam2_state_dict(no_decoder)
    odd = dict(state)
    odd["image_encoder.trunk.pos_embed"] = torch.zeros(1, 96, 9, 9)
    with pytest.raises(SamExportError, match="position embedding 9x9, .*not one of SAM 2.1's"):
        identify_sam2_variant(odd)
    with pytest.raises(SamExportError, match="not found"):
        load_sam2(tmp_path / "missing.pt")


def test_wrong_size_is_named(tmp_path):
    path = save_random_checkpoint("sam2.1_hiera_tiny", tmp_path / "t.pt")
    with pytest.raises(SamExportError, match="holds sam2.1_hiera_tiny, but sam2.1_hiera_small was requested"):
        load_sam2(path, "sam2.1_hiera_small")
    with pytest.raises(SamExportError, match="unknown SAM 2.1 variant 'sam2_tiny'; valid: sam2.1_hiera_tiny"):
        get_sam2_variant("sam2_tiny")


@pytest.mark.parametrize("shape", [(600, 900), (1024, 1024), (2000, 300)])
def test_preprocessing_equals_official(shape):
    """The NumPy resize + normalisation against ``SAM2Transforms`` (torchvision)."""
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.utils.transforms import SAM2Transforms

    image = make_image(*shape, seed=1)
    reference = SAM2Transforms(resolution=1024, mask_threshold=0.0)(image)[None].numpy()
    np.testing.assert_allclose(preprocess_sam2(image), reference, rtol=0, atol=5e-6)


def test_mask_upsampling_equals_official():
    """``postprocess_sam2_masks`` against ``SAM2Transforms.postprocess_masks`` (predictor defaults:
    no hole or sprinkle filling)."""
    pytest.importorskip("sam2", reason=SAM2_OFFICIAL_MISSING)
    from sam2.utils.transforms import SAM2Transforms

    logits = np.random.default_rng(0).normal(0, 5, (1, 3, 256, 256)).astype(np.float32)
    transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0)
    for size in ((600, 900), (1100, 700), (256, 256)):
        reference = transforms.postprocess_masks(torch.from_numpy(logits), size).numpy()
        np.testing.assert_allclose(postprocess_sam2_masks(logits, size), reference, rtol=0, atol=1e-5)
        assert np.array_equal(postprocess_sam2_masks(logits, size, threshold=0.0), reference > 0)
    with pytest.raises(SamExportError, match="must be ...x256x256"):
        postprocess_sam2_masks(np.zeros((3, 64, 64), np.float32), (10, 10))


@pytest.mark.parametrize("name", list(SAM2_VARIANTS))
def test_encoder_mac_count_equals_torch_flop_counter(name):
    """``hiera_encoder_macs`` (torch-free, for the benchmarks) against torch's count of
    ``Sam2Image.encode``'s matmuls and convolutions, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    variant = SAM2_VARIANTS[name]
    with torch.device("meta"):
        model = variant.build().eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode(torch.zeros(1, 3, 1024, 1024))
    assert counter.get_total_flops() == 2 * hiera_encoder_macs(variant.encoder)
