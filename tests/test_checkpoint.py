"""Loading official-format checkpoints, and the errors for the wrong ones."""

from __future__ import annotations

import math

import pytest
import torch

from samexport.checkpoint import describe_encoder, identify_variant, load_sam
from samexport.errors import SamExportError
from samexport.variants import VARIANTS, get_variant


def test_loads_through_the_user_path(tiny_checkpoint, tiny_official):
    model = load_sam(tiny_checkpoint, "tiny")
    state = model.state_dict()
    for key, value in tiny_official.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("name", list(VARIANTS))
def test_identifies_every_variant_from_shapes(name):
    variant = VARIANTS[name]
    with torch.device("meta"):
        state = variant.build().state_dict()
    assert identify_variant(state) is variant
    described = describe_encoder(state)
    assert described["family"] == variant.family.name
    assert variant.family.config_type(**{k: v for k, v in described.items() if k != "family"}) == variant.encoder


def test_encoder_of_unknown_family(tiny_checkpoint, tmp_path):
    state = {k: v for k, v in torch.load(tiny_checkpoint, weights_only=True).items() if not k.startswith("image_encoder.")}
    state["image_encoder.stem.weight"] = torch.zeros(2)
    path = tmp_path / "other_encoder.pth"
    torch.save(state, path)
    with pytest.raises(SamExportError, match="no image encoder of a known family .*image_encoder.stem.weight"):
        load_sam(path, "tiny")


def test_mobile_sam_checkpoint_is_not_vit_b(tmp_path):
    from samexport.testing import random_state_dict

    path = tmp_path / "mobile_sam.pt"
    torch.save(random_state_dict("mobile_sam"), path)
    with pytest.raises(SamExportError, match="looks like mobile_sam, but variant vit_b was requested"):
        load_sam(path, "vit_b")
    assert load_sam(path, "vit_t").variant is VARIANTS["mobile_sam"]


def test_wrong_variant_says_what_it_looks_like(tiny_checkpoint):
    with pytest.raises(SamExportError, match="looks like tiny, but variant vit_l was requested"):
        load_sam(tiny_checkpoint, "vit_l")


def test_truncated_file(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(SamExportError, match="could not read checkpoint .*complete"):
        load_sam(broken, "tiny")


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, path)
    with pytest.raises(SamExportError, match="not a SAM checkpoint.*backbone.weight"):
        load_sam(path, "tiny")
    torch.save([1, 2, 3], path)
    with pytest.raises(SamExportError, match="not a state dict"):
        load_sam(path, "tiny")


def test_incomplete_state_dict(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(SamExportError, match="missing .*iou_token"):
        load_sam(path, "tiny")


def test_missing_file(tmp_path):
    with pytest.raises(SamExportError, match="checkpoint not found"):
        load_sam(tmp_path / "nope.pth", "tiny")


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(SamExportError, match="valid variants: vit_b, vit_l, vit_h, mobile_sam.*vit_t = mobile_sam"):
        get_variant("vit_x")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_at_load(tiny_checkpoint, tmp_path, bad):
    state = torch.load(tiny_checkpoint, weights_only=True)
    name = "mask_decoder.iou_token.weight"
    state[name][0, 3] = bad
    state["mask_decoder.iou_prediction_head.layers.0.weight"][0, 0] = bad  # later in the file: not named
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    kind = "1 NaN and 0 infinite" if math.isnan(bad) else "0 NaN and 1 infinite"
    with pytest.raises(SamExportError, match=rf"tensor '{name}' .* has {kind} values"):
        load_sam(path, "tiny")
