"""Parity reports: figures checked against hand-computed values, verdicts, JSON, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samexport.cli import app
from samexport.errors import SamExportError
from samexport.image_sources import sample_images
from samexport.parity import (
    PROMPT_SUITE,
    QUICK_PROMPTS,
    TOLERANCES,
    ArrayErrors,
    Check,
    get_tolerances,
    mask_ious,
    quick_parity,
    run_parity,
)
from samexport.testing import make_image
from samexport.transforms import preprocess

runner = CliRunner()


class FakeBackend:
    """A NumPy stand-in for a model: cheap, deterministic, and with masks of both signs."""

    name = "fake"

    def encode(self, image):
        pooled = image[0, :, ::16, ::16].mean(0)  # 64x64
        channels = np.linspace(-1.0, 1.0, 256, dtype=np.float32)[:, None, None]
        return (np.tanh(pooled)[None] * channels + 0.1 * channels)[None].astype(np.float32)

    def decode(self, embeddings, coords, labels, mask_input, has_mask):
        base = np.kron(embeddings[0, 200], np.ones((4, 4), np.float32))  # 256x256
        shift = (coords * labels[..., None]).sum((1, 2)) / 1024.0  # B
        tokens = np.array([0.0, -0.3, 0.2, 0.4], np.float32)
        logits = base[None, None] + tokens[None, :, None, None] + shift[:, None, None, None]
        logits = logits + 0.5 * mask_input * has_mask[:, None, None, None]
        iou = 1 / (1 + np.exp(-logits.mean((2, 3))))
        return logits.astype(np.float32), iou.astype(np.float32)


class Perturbed:
    """Wraps a backend and changes its outputs by known amounts."""

    def __init__(self, inner, *, embedding=0.0, logits=0.0, iou=0.0, negate_token=None):
        self.inner, self.name = inner, f"perturbed {inner.name}"
        self.embedding, self.logits, self.iou, self.negate_token = embedding, logits, iou, negate_token

    def encode(self, image):
        return self.inner.encode(image) + np.float32(self.embedding)

    def decode(self, embeddings, *args):
        logits, iou = self.inner.decode(embeddings - np.float32(self.embedding), *args)
        logits = logits + np.float32(self.logits)
        if self.negate_token is not None:
            logits[:, self.negate_token] *= -1
        return logits, iou + np.float32(self.iou)


IMAGES = {"scene": make_image(96, 144, seed=3)}
PROMPTS = [p for p in PROMPT_SUITE if p.name in ("point", "box_point", "mask_refinement", "batch_boxes_16")]


def test_array_errors_by_hand():
    ref = np.array([1.0, -2.0, 3.0, 0.0])
    cand = np.array([1.1, -2.1, 3.0, 0.2])
    errors = ArrayErrors.between(ref, cand)
    assert errors.max_abs == pytest.approx(0.2)
    assert errors.mean_abs == pytest.approx(0.1)
    assert errors.scale == 3.0
    assert errors.rel_max_abs == pytest.approx(0.2 / 3)
    # (1.1 + 4.2 + 9) / (sqrt(14) * sqrt(1.21 + 4.41 + 9 + 0.04))
    assert errors.cosine == pytest.approx(14.3 / (14**0.5 * 14.66**0.5))
    assert ArrayErrors.between(np.zeros(3), np.zeros(3)).cosine == 1.0
    with pytest.raises(ValueError, match="shapes"):
        ArrayErrors.between(np.zeros(3), np.zeros(4))


def test_mask_ious_by_hand():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True  # 8 pixels
    b[0, 1:3] = True  # 8 pixels, 4 shared -> 4 / 12
    np.testing.assert_allclose(mask_ious(a, b), [4 / 12, 1.0])  # second pair: both empty


def test_check_and_tolerances():
    assert Check("x", 0.5, 1.0, "max") and not Check("x", 1.5, 1.0, "max")
    assert Check("y", 0.999, 0.99, "min") and not Check("y", 0.98, 0.99, "min")
    assert Check("x", 1.5, 1.0, "max").to_dict()["passed"] is False
    assert set(TOLERANCES) == {"fp32", "fp16", "bf16", "int8"}
    assert TOLERANCES["int8"].embedding_cosine == 0.995
    with pytest.raises(SamExportError, match="valid: fp32, fp16, bf16, int8"):
        get_tolerances("int4")


def test_tolerance_row_for_a_narrower_inference_precision():
    from samexport.parity import tolerance_key

    assert [tolerance_key("fp32", p) for p in (None, "f32", "bf16", "f16")] == ["fp32", "fp32", "bf16", "fp16"]
    assert tolerance_key("fp16", "bf16") == "bf16" and tolerance_key("int8", "bf16") == "int8"
    # the bf16 row sits between fp16's and int8's on the embedding
    assert TOLERANCES["fp32"].embedding_cosine > TOLERANCES["bf16"].embedding_cosine > TOLERANCES["int8"].embedding_cosine


def test_identical_backends_pass_with_zero_error():
    report = run_parity(FakeBackend(), FakeBackend(), IMAGES, PROMPTS)
    assert report and report.passed and not report.failures
    summary = report.summary
    assert summary["embedding_max_abs"] == 0 and summary["logits_max_abs"] == 0
    assert summary["embedding_cosine"] == pytest.approx(1.0)
    assert summary["mask_iou_min"] == 1.0 and summary["iou_score_max_abs"] == 0
    assert [p.num_prompts for p in report.images[0].prompts] == [1, 1, 1, 16]
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["images"] == ["scene"]
    assert data["per_image"][0]["size"] == [96, 144]
    assert {c["metric"] for c in data["checks"]} == {
        "embedding_rel_max_abs", "embedding_cosine", "logits_rel_max_abs",
        "mask_iou_min", "mask_iou_mean", "iou_score_max_abs",
    }
    assert "PASS" in report.to_markdown()


def test_known_perturbation_is_measured_and_fails_fp32():
    reference = FakeBackend()
    scale = float(np.abs(reference.encode(preprocess(IMAGES["scene"]))).max())
    candidate = Perturbed(reference, embedding=0.01, logits=0.002, iou=0.003)
    report = run_parity(reference, candidate, IMAGES, PROMPTS)
    summary = report.summary
    assert summary["embedding_max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert summary["embedding_mean_abs"] == pytest.approx(0.01, rel=1e-3)
    assert 0.99 < summary["embedding_cosine"] < 1.0
    assert summary["logits_max_abs"] == pytest.approx(0.002, rel=1e-3)
    assert summary["iou_score_max_abs"] == pytest.approx(0.003, rel=1e-3)
    assert summary["embedding_rel_max_abs"] == pytest.approx(0.01 / scale, rel=1e-3)
    assert not report and not report.passed
    failed = {c.metric for c in report.failures}
    assert {"embedding_rel_max_abs", "embedding_cosine", "iou_score_max_abs"} <= failed
    assert json.loads(report.to_json())["passed"] is False
    assert "FAIL" in report.to_markdown()
    # the same error is well within the int8 tolerances
    assert run_parity(reference, candidate, IMAGES, PROMPTS, precision="int8").checks[0].passed


def test_inverted_mask_gives_iou_zero():
    """Negating token 0's logits turns its mask into the complement: IoU 0, the others IoU 1."""
    report = run_parity(FakeBackend(), Perturbed(FakeBackend(), negate_token=0), IMAGES, PROMPTS)
    assert report.summary["mask_iou_min"] == 0.0
    assert report.summary["mask_iou_mean"] == pytest.approx(0.75)
    assert {c.metric for c in report.failures} >= {"mask_iou_min", "mask_iou_mean"}


def test_observe_sees_every_prompt_and_mask_behind_the_figures():
    """``observe`` gets each image x prompt once, in pixels, with both sides' upsampled logits
    whose thresholded masks give the report's IoUs (token 0 negated: IoU 0 there, 1 elsewhere)."""
    seen = []
    report = run_parity(FakeBackend(), Perturbed(FakeBackend(), negate_token=0), IMAGES, PROMPTS, observe=seen.append)
    assert [(d.image, d.prompt.name) for d in seen] == [(i, p.name) for i in IMAGES for p in PROMPTS]
    height, width = IMAGES["scene"].shape[:2]
    for decoded, figures in zip(seen, report.images[0].prompts):
        assert decoded.reference.shape == decoded.candidate.shape == (decoded.prompt.num_prompts, 4, height, width)
        np.testing.assert_array_equal(
            decoded.ious, mask_ious(decoded.reference > 0, decoded.candidate > 0))
        assert decoded.ious.min() == figures.mask_iou_min and decoded.ious.mean() == pytest.approx(figures.mask_iou_mean)
        assert (decoded.ious[:, 0] == 0).all() and (decoded.ious[:, 1:] == 1).all()
        assert decoded.reference_scores.shape == decoded.candidate_scores.shape == (decoded.prompt.num_prompts, 4)
        assert np.abs(decoded.candidate_scores - decoded.reference_scores).max() == pytest.approx(figures.iou_score_max_abs)
        np.testing.assert_array_equal(decoded.candidate[:, 0] > 0, ~(decoded.reference[:, 0] > 0))
        expected = decoded.prompt.in_pixels((height, width))
        for key, value in expected.items():
            if value is None:
                assert decoded.inputs[key] is None
            else:
                np.testing.assert_allclose(decoded.inputs[key], value)


def test_run_parity_needs_images():
    with pytest.raises(SamExportError, match="at least one image"):
        run_parity(FakeBackend(), FakeBackend(), {})


def test_sample_images_are_bundled_photos():
    images, skipped = sample_images()
    assert {"astronaut", "coffee", "chelsea", "rocket"} <= set(images)
    assert set(images) | set(skipped) == {"astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle"}
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_quick_parity_on_tiny_artifact(tiny_sam, tiny_artifact):
    result = quick_parity(tiny_sam, tiny_artifact, "fp32", image=make_image(64, 96))
    assert result["passed"] is True, result["checks"]
    assert result["precision"] == "fp32" and "per_image" not in result
    assert result["summary"]["embedding_rel_max_abs"] < 1e-4
    assert result["summary"]["mask_iou_min"] >= 0.99
    json.dumps(result)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity_images")
    Image.fromarray(make_image(80, 120, seed=5)).save(folder / "scene.png")
    return folder


def test_cli_parity_passes(tiny_artifact, tiny_checkpoint, image_dir, tmp_path):
    out = tmp_path / "parity.json"
    result = runner.invoke(app, ["parity", str(tiny_artifact), "--checkpoint", str(tiny_checkpoint),
                                 "--images", str(image_dir), "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "mask_iou_min" in result.output
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["images"] == ["scene.png"]
    assert [p["prompt"] for p in data["per_image"][0]["prompts"]] == list(QUICK_PROMPTS)


def test_cli_parity_fails_on_other_weights(tiny_artifact, image_dir, tmp_path):
    import torch

    from samexport.testing import random_state_dict

    other = tmp_path / "other.pth"
    torch.save(random_state_dict("tiny", seed=1), other)
    result = runner.invoke(app, ["parity", str(tiny_artifact), "--checkpoint", str(other),
                                 "--images", str(image_dir), "--quick"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "parity failed: embedding_rel_max_abs" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["parity", "no_such_dir", "--checkpoint", "x.pth"], "artifact directory not found"),
        (["parity", "ARTIFACT", "--checkpoint", "missing.pth"], "checkpoint not found"),
        (["parity", "ARTIFACT", "--checkpoint", "CKPT", "--images", "no_such_dir"], "image folder not found"),
        (["parity", "ARTIFACT", "--checkpoint", "CKPT", "--backend", "nonsense"], "unknown backend"),
    ],
)
def test_cli_parity_errors(args, message, tiny_artifact, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [{"ARTIFACT": str(tiny_artifact), "CKPT": str(tiny_checkpoint)}.get(a, a) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_parity_needs_checkpoint(tiny_artifact):
    result = runner.invoke(app, ["parity", str(tiny_artifact)])
    assert result.exit_code == 2 and "--checkpoint" in result.output
