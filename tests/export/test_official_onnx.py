"""The decoder in the official ONNX interface against ``SamOnnxModel`` on the same weights, at
several aspect ratios and with each option; the CLI command; the not-for-TensorRT marking."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from segment_anything.utils.onnx import SamOnnxModel
from typer.testing import CliRunner

from samexport.cli import app
from samexport.errors import SamExportError
from samexport.export.official_onnx import NOT_FOR_TENSORRT, export_official_decoder

SIZES = [(480, 713), (1500, 2250), (640, 480), (1024, 1024), (37, 1000), (900, 30)]
ORDER = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")


@pytest.fixture(scope="module", params=[(True, False), (False, False), (True, True)],
                ids=["single", "all-four", "single-stability"])
def exported(request, tiny_artifact, tmp_path_factory):
    single, stability = request.param
    path = export_official_decoder(tiny_artifact, tmp_path_factory.mktemp("official") / "decoder.onnx",
                                   return_single_mask=single, use_stability_score=stability)
    return onnxruntime.InferenceSession(str(path)), dict(return_single_mask=single, use_stability_score=stability)


def _feed(rng, size, points: int, with_mask: bool) -> dict:
    coords = rng.uniform(0, 1024, (1, points, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (1, points)).astype(np.float32)
    labels[0, -1] = -1  # the padding point, as clients add it
    return {
        "image_embeddings": rng.standard_normal((1, 256, 64, 64)).astype(np.float32),
        "point_coords": coords, "point_labels": labels,
        "mask_input": (rng.standard_normal((1, 1, 256, 256)) * 3).astype(np.float32) if with_mask
        else np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.float32([1.0 if with_mask else 0.0]),
        "orig_im_size": np.array(size, np.float32),
    }


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_matches_sam_onnx_model_at_every_aspect_ratio(size, exported, tiny_official):
    """One session answers every image size (no crop baked in), equal to the official module."""
    session, options = exported
    reference = SamOnnxModel(tiny_official, **options)
    rng = np.random.default_rng(size[1])
    for points, with_mask in ((2, False), (4, True), (1, False)):  # 2 -> multimask pick, 4 -> token 0
        feed = _feed(rng, size, points, with_mask)
        masks, scores, low_res = session.run(None, feed)
        with torch.no_grad():
            ref = [t.numpy() for t in reference(*(torch.from_numpy(feed[k]) for k in ORDER))]
        channels = 1 if options["return_single_mask"] else 4
        assert masks.shape == ref[0].shape == (1, channels, *size)
        assert scores.shape == ref[1].shape and low_res.shape == ref[2].shape == (1, channels, 256, 256)
        np.testing.assert_allclose(scores, ref[1], rtol=0, atol=1e-5)
        np.testing.assert_allclose(low_res, ref[2], rtol=0, atol=5e-5)
        np.testing.assert_allclose(masks, ref[0], rtol=0, atol=5e-5)
        assert np.mean((masks > 0) != (ref[0] > 0)) < 1e-4


def test_batched_prompts(exported, tiny_official):
    """B > 1 (the official graph fixes B = 1): each prompt as if alone."""
    session, _options = exported
    rng = np.random.default_rng(0)
    feeds = [_feed(rng, (300, 500), 3, False) for _ in range(3)]
    batch = {k: np.concatenate([f[k] for f in feeds]) for k in ORDER[1:5]}
    batch.update(image_embeddings=feeds[0]["image_embeddings"], orig_im_size=feeds[0]["orig_im_size"])
    together = session.run(None, batch)
    for i, feed in enumerate(feeds):
        feed.update(image_embeddings=feeds[0]["image_embeddings"])
        alone = session.run(None, feed)
        for a, b in zip(together, alone):
            np.testing.assert_allclose(a[i : i + 1], b, rtol=0, atol=1e-5)


def test_marked_not_for_tensorrt_and_cli(tiny_artifact, tmp_path):
    out = tmp_path / "sam_decoder.onnx"
    result = CliRunner().invoke(app, ["export-official-decoder", str(tiny_artifact), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "not for TensorRT" in result.output
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["samexport.tensorrt"] == NOT_FOR_TENSORRT and "not for TensorRT" in model.graph.doc_string
    assert [i.name for i in model.graph.input] == list(ORDER)
    assert [o.name for o in model.graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    assert meta["samexport.return_single_mask"] == "True"

    four = tmp_path / "four.onnx"
    result = CliRunner().invoke(app, ["export-official-decoder", str(tiny_artifact), "--output", str(four),
                                      "--no-return-single-mask", "--use-stability-score"])
    assert result.exit_code == 0, result.output
    assert {p.key: p.value for p in onnx.load(str(four)).metadata_props}["samexport.use_stability_score"] == "True"

    result = CliRunner().invoke(app, ["export-official-decoder", str(tiny_artifact), "--output", str(tmp_path)])
    assert result.exit_code == 1 and "is a directory" in result.output
    with pytest.raises(SamExportError, match="not a samexport build"):
        export_official_decoder(tmp_path, tmp_path / "x.onnx")


@pytest.mark.usefixtures("private_cache")
def test_official_decoder_export_replaces_only_its_own_file(tiny_artifact, tmp_path):
    from samexport.export.official_onnx import export_official_decoder

    target = tmp_path / "decoder.onnx"
    target.write_bytes(b"the user's own model")
    with pytest.raises(SamExportError, match="is not an official-interface decoder samexport wrote"):
        export_official_decoder(tiny_artifact, target)
    assert target.read_bytes() == b"the user's own model"
    ours = export_official_decoder(tiny_artifact, tmp_path / "ours.onnx")
    first = ours.read_bytes()
    export_official_decoder(tiny_artifact, ours, return_single_mask=False)  # ours: replaced
    assert ours.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["decoder.onnx", "ours.onnx"]
