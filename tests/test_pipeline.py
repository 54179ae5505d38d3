"""``samexport.pipeline`` (``samexport.build``): artifact directory contents, manifest, and no half-written builds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.errors import SamExportError
from samexport.pipeline import build
from samexport.utils import sha256_file


def test_manifest_records_the_build(tiny_artifact, tiny_checkpoint):
    manifest = read_manifest(tiny_artifact)
    assert manifest.variant == "tiny" and manifest.precision == "fp32"
    assert manifest.checkpoint.sha256 == sha256_file(tiny_checkpoint)
    assert manifest.opset >= 17
    assert [t.name for t in manifest.decoder.inputs] == [s.name for s in C.DECODER_INPUTS]
    assert manifest.decoder.inputs[1].shape == (C.PROMPT_BATCH, C.NUM_POINTS, 2)
    assert manifest.decoder_halves() == (C.DECODER_SCORES_ONNX, C.DECODER_MASKS_ONNX)
    assert [t.name for t in manifest.decoder.halves["masks"].inputs] == [s.name for s in C.MASKS_INPUTS]
    assert manifest.versions["onnxruntime"][0].isdigit()
    assert set(manifest.skipped_engines) == {"encoder", "decoder"}
    assert manifest.runtime.onnxruntime_encoder and manifest.runtime.onnxruntime_memory_arena
    # the graphs, the manifest and the stored PyTorch references (samexport.parity.references)
    expected = [*C.GRAPH_FILES, C.MANIFEST, manifest.references.file]
    assert sorted(p.name for p in tiny_artifact.iterdir()) == sorted(expected)


def test_failed_build_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from samexport.export import to_onnx

    def explode(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(to_onnx, "export_decoders", explode)
    out = tmp_path / "engines" / "tiny-fp32"
    with pytest.raises(RuntimeError, match="exporter crashed"):
        build("tiny", checkpoint=tiny_checkpoint, output=out)
    assert list((tmp_path / "engines").iterdir()) == []


def test_failed_rebuild_keeps_the_previous_build(tiny_artifact, tiny_checkpoint, monkeypatch):
    from samexport.export import to_onnx

    before = (tiny_artifact / C.MANIFEST).read_text()
    monkeypatch.setattr(to_onnx, "export_encoder", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        build("tiny", checkpoint=tiny_checkpoint, output=tiny_artifact)
    assert (tiny_artifact / C.MANIFEST).read_text() == before
    assert [p.name for p in tiny_artifact.parent.iterdir()] == [tiny_artifact.name]


def test_incomplete_directory_is_refused(tiny_artifact, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / C.MANIFEST).write_text((tiny_artifact / C.MANIFEST).read_text())
    with pytest.raises(SamExportError, match="incomplete: encoder.onnx is missing"):
        read_manifest(broken)
    (broken / C.MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(SamExportError, match="manifest format 99"):
        read_manifest(broken)


def test_bad_precision_and_variant(tiny_checkpoint, tmp_path):
    with pytest.raises(SamExportError, match="unknown precision"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "x", precision="fp8")
    with pytest.raises(SamExportError, match="looks like tiny"):
        build("vit_b", checkpoint=tiny_checkpoint, output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_parity_is_recorded(tiny_artifact):
    parity = read_manifest(tiny_artifact).parity
    assert parity.passed is True and parity.precision == "fp32"
    assert parity.summary["mask_iou_min"] >= 0.99
    assert parity.summary["embedding_cosine"] > 0.999999


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "int8_target"), [("fp16", "tensorrt"), ("int8", "tensorrt"), ("int8", "onnxruntime")]
)
def test_reduced_precision_builds(precision, int8_target, tiny_checkpoint, tmp_path):
    """fp16 and int8 (both recipes) artifacts build end to end, pass their parity tolerances and run."""
    from skimage import data
    from support import write_calibration_folder

    from samexport.runtime.predictor import SamPredictor

    calib = None
    if precision == "int8":
        calib = write_calibration_folder(tmp_path / "calib", ("coffee", "chelsea", "rocket"))
    result = build(
        "tiny", checkpoint=tiny_checkpoint, output=tmp_path / precision, precision=precision, calib_dir=calib,
        int8_target=int8_target,
    )
    manifest = read_manifest(result.artifact_dir)
    assert manifest.precision == precision and result.parity_passed
    assert manifest.graphs.decoder == "fp16"
    assert manifest.runtime.onnxruntime_memory_arena == (int8_target == "onnxruntime")  # off for fp16 graphs
    assert manifest.graphs.int8_target == (int8_target if precision == "int8" else None)
    assert manifest.graphs.fp16_encoder == (precision == "fp16" or int8_target == "tensorrt")
    if precision == "int8":
        expected = {"tensorrt": "int8 (Q/DQ) on fp16", "onnxruntime": "int8 (Q/DQ)"}[int8_target]
        assert manifest.graphs.encoder == expected
    expected = [*C.GRAPH_FILES, C.MANIFEST, manifest.references.file]
    assert sorted(p.name for p in result.artifact_dir.iterdir()) == sorted(expected)
    predictor = SamPredictor(result.artifact_dir)
    predictor.set_image(data.astronaut())
    masks, scores, _ = predictor.predict(box=[100, 50, 400, 450])
    assert masks.shape == (3, 512, 512) and scores.shape == (3,)
    # The fp16 decoder halves give the fp16 decoder's outputs.
    boxes = np.array([[100, 50, 400, 450], [10, 10, 200, 200], [50, 60, 300, 310]])
    logits, iou = predictor.decode_low_res(boxes=boxes)
    index, kept, all_iou = predictor.decode_low_res_where(lambda s: np.arange(len(s)) != 1, boxes=boxes)
    assert index.tolist() == [0, 2]
    np.testing.assert_allclose(all_iou, iou, rtol=0, atol=1e-3)
    np.testing.assert_allclose(kept, logits[[0, 2]], rtol=0, atol=1e-2)


def test_int8_without_images_fails_before_exporting(tiny_checkpoint, tmp_path):
    with pytest.raises(SamExportError, match="--calib-dir"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "x", precision="int8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamExportError):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "x", precision="int8", calib_dir=tmp_path / "empty")
    assert not (tmp_path / "x").exists()


def test_required_engines_fail_clearly_without_tensorrt(tiny_checkpoint, tmp_path):
    from samexport.engines import tensorrt_availability

    if tensorrt_availability():
        pytest.skip("TensorRT and a GPU are available here")
    with pytest.raises(SamExportError, match="engines were required but cannot be built: tensorrt"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "x", engines="require")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["fused-pattern", "plugin"])
def test_attention_modes_build_and_pass_parity(attention, tiny_checkpoint, tmp_path):
    """Plugin graphs are checked through their reference inlining; the manifest records the mode."""
    import onnx

    from samexport.plugins.onnx_node import plugin_nodes

    result = build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / attention, attention=attention)
    assert result.parity_passed and result.manifest.attention == attention
    encoder = onnx.load(str(result.artifact_dir / C.ENCODER_ONNX))
    assert len(plugin_nodes(encoder)) == (2 if attention == "plugin" else 0)  # tiny has 2 blocks
    assert not (result.artifact_dir / ".parity").exists()
    if attention == "plugin":
        from samexport.runtime.predictor import SamPredictor

        with pytest.raises(SamExportError, match="only TensorRT can run"):
            SamPredictor(result.artifact_dir, backend="onnxruntime")


def test_samexport_build_is_the_function_after_the_pipeline_module_is_imported():
    import samexport
    import samexport.cli
    from samexport import build as build_function
    from samexport import pipeline

    assert build_function is pipeline.build and samexport.build is pipeline.build
