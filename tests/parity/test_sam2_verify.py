"""Stored PyTorch references and ``samexport verify`` for SAM 2.1 artifacts, and the reference
format (2, which still reads 1).

- a SAM 2.1 artifact stores the PyTorch FP32 features (embedding and both high-resolution maps)
  and decoder outputs (logits, IoU, object score) for the stored inputs, recomputed here with
  torch, within the float16 storage error;
- ``verify`` passes it on ONNX Runtime with the figures ``run_sam2_parity`` reports against torch
  itself (within the storage error), without importing torch or the export code;
- a tampered reference (one high-resolution map scaled) and a tampered decoder graph (the IoU
  head's bias moved) fail, each on the figure it touches;
- an old format-1 SAM reference set still verifies, with the figures of the format-2 one.

The SAM 2.1 artifact is the session's ``sam2_tiny_artifact`` (minutes to build: these tests are
slow); SAM's is ``tiny_artifact``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import HEAVY, invoke

from samexport import constants as C
from samexport.artifacts import (
    Manifest,
    read_manifest,
    write_manifest,
)
from samexport.records import REFERENCES_PREFIX


def stored_arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / read_manifest(folder).references.file, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def replace_references(folder: Path, arrays: dict[str, np.ndarray], record: dict | None = None) -> Manifest:
    """Write ``arrays`` as the folder's references file (named by its sha256, as samexport names
    it), with the manifest's file records recomputed so every hash matches (what a careful
    forger would do); ``record``: the manifest's references section (default: the old one)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    old = read_manifest(folder).references.to_dict()
    name = f"{REFERENCES_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.npz"
    (folder / old["file"]).unlink()
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / C.MANIFEST).read_text())
    manifest.pop("manifest_sha256")
    manifest["references"] = {**(old if record is None else record), "file": name, "bytes": len(data)}
    manifest["files"].pop(old["file"])
    return write_manifest(folder, Manifest.from_dict(manifest))


def rewrite_records(folder: Path) -> Manifest:
    data = json.loads((folder / C.MANIFEST).read_text())
    data.pop("manifest_sha256")
    return write_manifest(folder, Manifest.from_dict(data))


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), torch and ONNX Runtime
def test_sam2_references_are_the_pytorch_outputs(sam2_tiny_artifact, sam2_tiny_checkpoint):
    """Stored features and decoder outputs are torch's FP32 outputs for the stored inputs, to
    float16 rounding (<= 2**-11 of each array's scale); every output of the contract is stored."""
    from samexport.download import sha256_file
    from samexport.parity.references import load_references
    from samexport.runtime.sam2_torch import Sam2TorchBackend
    from samexport.sam2_checkpoint import load_sam2

    manifest = read_manifest(sam2_tiny_artifact)
    record = manifest.references
    path = sam2_tiny_artifact / record.file
    assert manifest.files[record.file].to_dict() == {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    assert record.format == 2 and record.contract == "sam2" and record.bytes == path.stat().st_size
    assert record.features == ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
    references = load_references(sam2_tiny_artifact, manifest)
    stored = references.backend
    assert references.format == 2 and stored.contract is C.SAM2_GRAPHS
    torch_backend = Sam2TorchBackend(load_sam2(sam2_tiny_checkpoint).eval())
    worst = 0.0
    full_features = []
    for index in range(len(references.images)):
        features = torch_backend.run_encoder(stored.encoder_inputs[index])
        full_features.append(features)
        shapes = [tuple(f.shape) for f in stored.features[index]]
        assert shapes == [(1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128)]
        for ours, theirs in zip(stored.features[index], features, strict=True):
            error = np.abs(ours - theirs).max() / np.abs(theirs).max()
            assert 0 < error <= 2**-11
            worst = max(worst, error)
    assert worst == pytest.approx(record.storage_error["embedding_rel_max_abs"], rel=2e-3)
    names = [p.name for prompts in references.prompts.values() for p in prompts]
    assert sorted(names) == sorted(["point", "box", "box_point", "mask_refinement", "ten_points", "batch_boxes_4"])
    assert len(stored.calls) == record.decoder_calls == 6
    for call in stored.calls:
        logits, iou, score = torch_backend.run_decoder(full_features[call.image], *call.inputs)
        assert len(call.outputs) == 3
        assert np.abs(call.low_res_masks - logits).max() <= 2**-11 * np.abs(logits).max()
        assert np.abs(call.iou_predictions - iou).max() <= 1e-6
        assert np.abs(call.outputs[2] - score).max() <= 1e-5 * max(1.0, np.abs(score).max())
    refine = [c for c in stored.calls if c.inputs[3].any()]
    assert len(refine) == 1 and np.abs(refine[0].inputs[2]).max() > 0  # a real mask input


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), torch and ONNX Runtime
def test_sam2_verify_reports_parity_figures(sam2_tiny_artifact, sam2_tiny_checkpoint):
    """``verify --json`` passes with the figures ``run_sam2_parity`` gives against torch itself on
    the same images and prompts, within the storage error the manifest states."""
    from samexport.parity.references import load_references
    from samexport.parity.sam2 import run_sam2_parity
    from samexport.runtime.backends import open_backend
    from samexport.runtime.sam2_torch import Sam2TorchBackend
    from samexport.sam2_checkpoint import load_sam2

    result = invoke("verify", sam2_tiny_artifact, "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["precision"] == "fp32" and report["candidate"] == "onnxruntime-cpu"
    assert [c["metric"] for c in report["checks"]] == [
        "embedding_rel_max_abs", "embedding_cosine", "logits_rel_max_abs", "mask_iou_min", "mask_iou_mean", "iou_score_max_abs"]

    manifest = read_manifest(sam2_tiny_artifact)
    storage = manifest.references.storage_error
    reference = Sam2TorchBackend(load_sam2(sam2_tiny_checkpoint).eval())
    candidate = open_backend(sam2_tiny_artifact, "onnxruntime-cpu")
    direct = {}
    for images, prompts in load_references(sam2_tiny_artifact, manifest).groups():
        for image in run_sam2_parity(reference, candidate, images, prompts).images:
            direct[image.image] = image
    assert [i["image"] for i in report["per_image"]] == list(direct) == ["landscape", "portrait"]
    for image in report["per_image"]:
        theirs = direct[image["image"]]
        assert image["size"] == list(theirs.size)
        assert abs(image["embedding"]["rel_max_abs"] - theirs.embedding.rel_max_abs) <= storage["embedding_rel_max_abs"] * 1.01
        assert image["embedding"]["cosine"] == pytest.approx(theirs.embedding.cosine, abs=1e-6)
        for ours, direct_prompt in zip(image["prompts"], theirs.prompts, strict=True):
            assert ours["prompt"] == direct_prompt.prompt
            assert abs(ours["logits"]["rel_max_abs"] - direct_prompt.logits.rel_max_abs) <= storage["logits_rel_max_abs"] * 1.01
            assert ours["iou_score_max_abs"] == pytest.approx(direct_prompt.iou_score_max_abs, abs=1e-5)
            assert ours["mask_iou_min"] == pytest.approx(direct_prompt.mask_iou_min, abs=2e-3)
    text = invoke("verify", sam2_tiny_artifact, "--backend", "onnxruntime-cpu")
    assert text.exit_code == 0 and "**PASS**" in text.output and "landscape 683x1024" in text.output


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), torch and ONNX Runtime
def test_sam2_verify_imports_neither_torch_nor_export_code(sam2_tiny_artifact):
    script = (
        "import json, sys\nfrom samexport.cli import app\n"
        f"status = app(['verify', {str(sam2_tiny_artifact)!r}, '--backend', 'onnxruntime-cpu'], standalone_mode=False) or 0\n"
        f"print('HEAVY', json.dumps(sorted(m for m in sys.modules if m in {HEAVY!r} or m.startswith('samexport.export'))))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**PASS**" in done.stdout and "HEAVY []" in done.stdout


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), torch and ONNX Runtime
def test_sam2_tampered_reference_fails_on_the_high_res_map(sam2_tiny_artifact, tmp_path):
    """One stored high-resolution map (the landscape's 64x128x128) scaled by 1.003, the file
    records rewritten to match: verify fails on embedding_rel_max_abs (3e-3 +- the float16
    rounding, against 1e-3; measured 3.7e-3) at that image, and on nothing else."""
    from samexport.parity.verify import verify_with_references
    from samexport.runtime.backends import open_backend

    forged = shutil.copytree(sam2_tiny_artifact, tmp_path / "forged")
    arrays = stored_arrays(forged)
    key = "feature_0_high_res_feats_1"
    arrays[key] = (arrays[key].astype(np.float32) * 1.003).astype(np.float16)
    manifest = replace_references(forged, arrays)
    report = verify_with_references(forged, manifest, open_backend(forged, "onnxruntime-cpu"))
    assert not report.passed and [c.metric for c in report.failures] == ["embedding_rel_max_abs"]
    landscape, portrait = report.images
    # 3e-3 moved by the float16 rounding of the stored map, before and after scaling (2**-11 each)
    assert abs(landscape.embedding.rel_max_abs - 3e-3) <= 2 * 2**-11 + 1e-4
    assert portrait.embedding.rel_max_abs < 1e-3
    result = invoke("verify", forged, "--backend", "onnxruntime-cpu")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: verify failed on onnxruntime-cpu: embedding_rel_max_abs") and "image 'landscape'" in line


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), torch and ONNX Runtime
def test_sam2_tampered_decoder_fails_on_the_iou_scores(sam2_tiny_artifact, tmp_path):
    """decoder.onnx with the IoU head's last bias moved by 0.01 (file records rewritten): the
    features, logits and masks still agree, the IoU scores do not."""
    import onnx
    from onnx import numpy_helper

    forged = shutil.copytree(sam2_tiny_artifact, tmp_path / "forged")
    model = onnx.load(forged / C.DECODER_ONNX)
    (bias,) = [i for i in model.graph.initializer if i.name.endswith("iou_prediction_head.layers.2.bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
    onnx.save(model, forged / C.DECODER_ONNX)
    rewrite_records(forged)
    result = invoke("verify", forged, "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert not report["passed"]
    failed = {c["metric"]: c["value"] for c in report["checks"] if not c["passed"]}
    # The head ends in a sigmoid (iou_prediction_use_sigmoid), of slope at most 1/4: the scores move
    # by at most 0.0025 (measured 0.0025: the random model's IoU logits sit near 0), over the 1e-3 limit.
    assert list(failed) == ["iou_score_max_abs"] and 1e-3 < failed["iou_score_max_abs"] <= 0.0025 + 1e-6


def test_references_of_another_family_are_refused(tiny_artifact, tmp_path):
    """A format-2 file that says it holds SAM 2.1 references, in a SAM artifact: refused, naming both."""
    from samexport.errors import SamExportError
    from samexport.parity.references import load_references

    forged = shutil.copytree(tiny_artifact, tmp_path / "forged")
    arrays = stored_arrays(forged)
    assert int(arrays["format"]) == 2 and str(arrays["contract"]) == "sam"
    arrays["contract"] = np.array("sam2")
    manifest = replace_references(forged, arrays)
    with pytest.raises(SamExportError, match="holds references of a sam2 model, and the artifact holds tiny"):
        load_references(forged, manifest)


# The keys samexport wrote in format 1 (before SAM 2.1), per image i, prompt p and call k.
FORMAT_1_KEYS = (
    "format", "image_{i}_png", "embedding_{i}", "encoder_input_sha256_{i}", "prompts_{i}",
    "prompt_{p}_points", "prompt_{p}_labels", "prompt_{p}_boxes", "prompt_{p}_refine",
    "call_{k}_image", "call_{k}_point_coords", "call_{k}_point_labels", "call_{k}_mask_input",
    "call_{k}_has_mask_input", "call_{k}_low_res_masks", "call_{k}_iou_predictions",
)


def as_format_1(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A SAM format-2 reference set in the layout of format 1 (the same stored values)."""
    old = {"format": np.array(1)}
    for key, value in arrays.items():
        if key in ("format", "contract") or key.startswith("encoder_input_sample_"):
            continue
        if key.startswith("feature_"):
            index, name = key[len("feature_"):].split("_", 1)
            assert name == "image_embeddings"
            old[f"embedding_{index}"] = value
        else:
            old[key] = value
    return old


def test_format_1_references_still_verify(tiny_artifact, tmp_path):
    """A SAM artifact whose references are in format 1 verifies with the same figures as format 2."""
    import re

    from samexport.parity.references import load_references
    from samexport.parity.verify import verify_with_references
    from samexport.runtime.backends import open_backend

    old = shutil.copytree(tiny_artifact, tmp_path / "old")
    current = stored_arrays(old)
    converted = as_format_1(current)
    patterns = [re.compile(p.replace("{i}", r"\d+").replace("{k}", r"\d+").replace("{p}", r"\w+") + "$") for p in FORMAT_1_KEYS]
    assert all(any(p.match(key) for p in patterns) for key in converted)
    record = {k: v for k, v in read_manifest(old).references.to_dict().items() if k not in ("contract", "features")}
    manifest = replace_references(old, converted, {**record, "format": 1})
    references = load_references(old, manifest)
    assert references.format == 1 and references.contract is C.SAM_GRAPHS
    assert "contract" not in manifest.references.to_dict() and manifest.references.contract is None
    assert record["file"] != manifest.references.file
    backend = open_backend(old, "onnxruntime-cpu")
    report = verify_with_references(old, manifest, backend, references=references)
    now = verify_with_references(tiny_artifact, read_manifest(tiny_artifact), backend)
    assert report.passed and report.to_dict() == now.to_dict()
    result = invoke("verify", old, "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["passed"]


@pytest.mark.slow  # the SAM 2.1 artifact: minutes to build (session fixture), OpenVINO over the reference set
def test_sam2_verify_on_openvino_f32(sam2_tiny_artifact):
    """The same stored references check the graphs on OpenVINO CPU in f32, at the fp32 limits."""
    pytest.importorskip("openvino", reason="needs the openvino extra")
    result = invoke("verify", sam2_tiny_artifact, "--backend", "openvino:precision=f32", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["precision"] == "fp32"
    summary, limits = report["summary"], report["tolerances"]
    assert summary["embedding_rel_max_abs"] <= limits["embedding_rel_max_abs"] == 1e-3
    assert summary["logits_rel_max_abs"] <= limits["logits_rel_max_abs"] and summary["mask_iou_min"] >= limits["mask_iou_min"]
