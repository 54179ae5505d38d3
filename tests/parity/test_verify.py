"""Stored PyTorch references, ``samexport verify`` and ``samexport references``.

- the references an artifact stores are the PyTorch FP32 outputs (recomputed here with torch and
  compared), within the stated float16 storage error, and listed with their sha256;
- ``verify`` passes fp32 / fp16 / int8 artifacts on ONNX Runtime with the figures ``parity``
  reports against torch itself (within the storage error), also in a virtual environment without
  torch, importing neither torch, onnxscript nor samexport.export;
- a candidate that computes something else fails with exit 1 naming the figure and where: an
  encoder swapped in from another export (file records rewritten so every hash matches), and a
  backend perturbing its embedding just past the fp16 limit (and passing just below it);
- an artifact without references says so, and ``samexport references`` adds them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import HEAVY, Perturbed, invoke

from samexport import constants as C
from samexport.artifacts import Manifest, read_manifest, write_manifest
from samexport.errors import SamExportError


def rewrite_records(folder: Path) -> Manifest:
    """Recompute the manifest's file records for whatever files the folder now holds (what a
    careful forger would do), bypassing the size check of ``read_manifest``."""
    data = json.loads((folder / C.MANIFEST).read_text())
    data.pop("manifest_sha256")
    return write_manifest(folder, Manifest.from_dict(data))


@pytest.fixture(scope="module")
def tiny_variants(built_artifact) -> dict[str, Path]:
    """fp16 and int8 tiny artifacts (quick parity off: the references are what is tested)."""
    return {precision: built_artifact("tiny", precision) for precision in ("fp16", "int8")}


@pytest.mark.slow  # ~15 s of CPU: torch and ONNX Runtime over the whole reference set
def test_references_are_the_pytorch_outputs(tiny_artifact, tiny_sam):
    """Stored embeddings and logits are torch's FP32 outputs for the stored inputs, to float16
    rounding (<= 2**-11 of the value), and the file is listed with its sha256."""
    from samexport.download import sha256_file
    from samexport.parity.references import load_references
    from samexport.runtime.torch_backend import TorchBackend

    manifest = read_manifest(tiny_artifact)
    record = manifest.references
    path = tiny_artifact / record.file
    assert manifest.files[record.file].to_dict() == {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    assert record.bytes == path.stat().st_size < 12 << 20
    assert {n: v.size for n, v in record.images.items()} == {"landscape": (683, 1024), "portrait": (1024, 640)}
    references = load_references(tiny_artifact, manifest)
    stored = references.backend
    torch_backend = TorchBackend(tiny_sam)
    for index, image in enumerate(references.images.values()):
        assert max(image.shape[:2]) == 1024  # at the 1024 frame: no resize reproduces the input
        embedding = torch_backend.encode(stored.encoder_inputs[index])
        error = np.abs(stored.embeddings[index] - embedding).max() / np.abs(embedding).max()
        assert 0 < error <= 2**-11 and error <= record.storage_error["embedding_rel_max_abs"] * 1.001
    names = [p.name for prompts in references.prompts.values() for p in prompts]
    assert sorted(names) == sorted(["point", "box", "box_point", "mask_refinement", "ten_points", "batch_boxes_4"])
    assert len(stored.calls) == record.decoder_calls == 6  # the refinement's first call is "point"'s
    for call in stored.calls:
        full = stored.embeddings[call.image]  # torch decoded from its own fp32 embedding: close to this
        logits, iou = torch_backend.decode(torch_backend.encode(stored.encoder_inputs[call.image]), *call.inputs)
        assert np.abs(call.low_res_masks - logits).max() <= 2**-11 * np.abs(logits).max()
        assert np.abs(call.iou_predictions - iou).max() <= 1e-6
        assert full.dtype == np.float32
    refine = [c for c in stored.calls if c.inputs[3].any()]
    assert len(refine) == 1 and np.abs(refine[0].inputs[2]).max() > 0  # a real mask input


def assert_figures_match_parity(folder: Path, sam, report: dict) -> None:
    """``report`` (verify's JSON) has the figures of ``run_parity`` against torch itself on the
    same images and prompts, within the float16 storage error the manifest states."""
    from samexport.parity import run_parity
    from samexport.parity.references import load_references
    from samexport.runtime.backends import open_backend
    from samexport.runtime.torch_backend import TorchBackend

    manifest = read_manifest(folder)
    references = load_references(folder, manifest)
    direct = {}
    for images, prompts in references.groups():
        for image in run_parity(TorchBackend(sam), open_backend(folder, "onnxruntime-cpu"), images, prompts).images:
            direct[image.image] = image
    storage = manifest.references.storage_error
    assert [i["image"] for i in report["per_image"]] == list(direct) == ["landscape", "portrait"]
    for image in report["per_image"]:
        torch_figures = direct[image["image"]]
        assert abs(image["embedding"]["rel_max_abs"] - torch_figures.embedding.rel_max_abs) <= storage["embedding_rel_max_abs"] * 1.01
        assert image["embedding"]["cosine"] == pytest.approx(torch_figures.embedding.cosine, abs=1e-6)
        rounding = storage["embedding_rel_max_abs"] * image["embedding"]["scale"] * 1.01
        assert abs(image["embedding"]["mean_abs"] - torch_figures.embedding.mean_abs) <= rounding
        for ours, theirs in zip(image["prompts"], torch_figures.prompts, strict=True):
            assert ours["prompt"] == theirs.prompt
            assert abs(ours["logits"]["rel_max_abs"] - theirs.logits.rel_max_abs) <= storage["logits_rel_max_abs"] * 1.01
            # 1e-5: the refinement's mask input is the stored (float16-rounded) logits here
            assert ours["iou_score_max_abs"] == pytest.approx(theirs.iou_score_max_abs, abs=1e-5)
            assert ours["mask_iou_min"] == pytest.approx(theirs.mask_iou_min, abs=2e-3)


@pytest.mark.slow  # ~16 s of CPU: torch and ONNX Runtime over the whole reference set
def test_verify_fp32_reports_parity_figures(tiny_artifact, tiny_sam):
    """``verify --json`` passes with the figures and checks of ``parity``."""
    result = invoke("verify", tiny_artifact, "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["precision"] == "fp32" and report["candidate"] == "onnxruntime-cpu"
    assert [c["metric"] for c in report["checks"]] == [
        "embedding_rel_max_abs", "embedding_cosine", "logits_rel_max_abs", "mask_iou_min", "mask_iou_mean", "iou_score_max_abs"]
    assert_figures_match_parity(tiny_artifact, tiny_sam, report)
    text = invoke("verify", tiny_artifact)
    assert text.exit_code == 0 and "| embedding_cosine |" in text.output and "**PASS**" in text.output


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_verify_reduced_precision(precision, tiny_variants, tiny_sam):
    result = invoke("verify", tiny_variants[precision], "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["precision"] == precision
    assert report["tolerances"]["embedding_cosine"] == {"fp16": 0.9995, "int8": 0.995}[precision]
    assert_figures_match_parity(tiny_variants[precision], tiny_sam, report)


def test_verify_imports_neither_torch_nor_export_code(tiny_artifact):
    script = (
        "import json, sys\nfrom samexport.cli import app\n"
        f"status = app(['verify', {str(tiny_artifact)!r}, '--backend', 'onnxruntime-cpu'], standalone_mode=False) or 0\n"
        f"print('HEAVY', json.dumps(sorted(m for m in sys.modules if m in {HEAVY!r} or m.startswith('samexport.export'))))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**PASS**" in done.stdout and "HEAVY []" in done.stdout


def test_swapped_encoder_fails_naming_the_embedding(tiny_artifact, tmp_path):
    """Another export's encoder.onnx, with the manifest's records rewritten to match: every hash
    checks out, and verify still fails, on the embedding, exit 1."""
    from samexport.checkpoint import load_sam
    from samexport.export.to_onnx import export_encoder
    from samexport.testing import save_random_checkpoint

    forged = shutil.copytree(tiny_artifact, tmp_path / "forged")
    other = load_sam(save_random_checkpoint("tiny", tmp_path / "other.pth", seed=7), "tiny")
    export_encoder(other, forged / C.ENCODER_ONNX)
    rewrite_records(forged)
    read_manifest(forged)  # the forgery is consistent: sizes and digest match
    result = invoke("verify", forged, "--backend", "onnxruntime-cpu")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: verify failed on onnxruntime-cpu: embedding_")
    assert "limit" in line and "image 'landscape'" in line or "image 'portrait'" in line
    assert "**FAIL**" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("rel, passes", [(0.5 * 2e-2, True), (1.5 * 2e-2, False)])
def test_perturbed_backend_against_fp16_limit(rel, passes, tiny_variants):
    """One embedding element moved by 0.5x / 1.5x the fp16 limit of embedding_rel_max_abs (2e-2):
    the first passes, the second fails on exactly that figure, with its measured value."""
    from samexport.parity.verify import describe_failure, verify_with_references
    from samexport.runtime.backends import open_backend

    folder = tiny_variants["fp16"]
    candidate = Perturbed(open_backend(folder, "onnxruntime-cpu"), rel)
    report = verify_with_references(folder, read_manifest(folder), candidate)
    value = report.summary["embedding_rel_max_abs"]
    assert value == pytest.approx(rel, abs=2e-3)
    assert report.passed is passes
    if not passes:
        assert [c.metric for c in report.failures] == ["embedding_rel_max_abs"]
        message = describe_failure(report)
        assert message.startswith(f"embedding_rel_max_abs {value:.6g} is outside its fp16 limit <= 0.02 (1.5")
        assert "at image '" in message


@pytest.mark.slow  # ~15 s of CPU: torch and ONNX Runtime over the whole reference set
def test_artifact_without_references_then_added(tiny_artifact, tiny_checkpoint, tmp_path):
    from samexport.testing import save_random_checkpoint

    old = shutil.copytree(tiny_artifact, tmp_path / "old")
    manifest = read_manifest(old)
    (old / manifest.references.file).unlink()
    write_manifest(old, manifest.replace(references=None))  # as samexport wrote it before references
    result = invoke("verify", old)
    assert result.exit_code == 1 and "has no stored PyTorch references" in result.output
    assert f"samexport references {old} --checkpoint PATH" in result.output

    wrong = save_random_checkpoint("tiny", tmp_path / "wrong.pth", seed=3)
    before = sorted(p.name for p in old.iterdir())
    result = invoke("references", old, "--checkpoint", wrong)
    assert result.exit_code == 1 and "is not the checkpoint" in result.output
    assert sorted(p.name for p in old.iterdir()) == before

    result = invoke("references", old, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    added = read_manifest(old).references
    assert added.file in read_manifest(old).files
    # The same weights and inputs give the same references, byte for byte.
    assert added.file == manifest.references.file
    result = invoke("verify", old, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["passed"]


def test_damaged_references_are_refused(tiny_artifact, tmp_path):
    damaged = shutil.copytree(tiny_artifact, tmp_path / "damaged")
    name = read_manifest(damaged).references.file
    data = bytearray((damaged / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / name).write_bytes(bytes(data))
    result = invoke("verify", damaged)
    assert result.exit_code == 1 and "does not match" in result.output and name in result.output


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobile_sam", "vit_b"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_verify_full_size(variant, precision, built_artifact):
    """The real sizes: verify passes fp32 / fp16 / int8 artifacts of mobile_sam and vit_b on ONNX
    Runtime; the references stay under 12 MiB. (The artifacts are the session's, shared with the
    other full-size tests: conftest's ``built_artifact``.)"""
    folder = built_artifact(variant, precision)
    record = read_manifest(folder).references
    assert record.bytes < 12 << 20
    result = invoke("verify", folder, "--backend", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["summary"]["embedding_cosine"] >= report["tolerances"]["embedding_cosine"]


def test_manifest_rejects_a_bad_references_section(tiny_artifact):
    data = json.loads((tiny_artifact / C.MANIFEST).read_text())
    data.pop("manifest_sha256")
    for bad in ({"file": "../x.npz"}, {"file": "other.npz"}, "references.npz"):
        with pytest.raises(SamExportError, match="bad 'references' section"):
            Manifest.from_dict({**data, "references": bad})
