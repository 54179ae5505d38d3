"""``samexport engines --fallback``: the FP32 attention form derived on the device
(``samexport.engines.fallback``), and the fallback when the primary plans fail verification."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import onnx
import pytest
from support import invoke, needs_rtx
from support.graphs import classify_matmuls, value_types

from samexport import constants as C
from samexport.errors import MissingExtraError, SamExportError
from samexport.utils import sha256_file

FLOAT = onnx.TensorProto.FLOAT


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones included) -> its sha256: "byte for byte as it was"."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_fp16_artifact(built_artifact) -> Path:
    return built_artifact("tiny", "fp16")  # shared: the tests that change it work on a copy


def test_form_names_agree():
    from samexport.engines.fallback import FP32_ATTENTION_FORM
    from samexport.precision.attention_fp32 import FORM

    assert FORM == FP32_ATTENTION_FORM


@pytest.mark.slow
def test_derived_graphs_live_outside_the_artifact(tiny_fp16_artifact, tiny_sam):
    from samexport.engines.fallback import fp32_attention_graphs

    before = snapshot(tiny_fp16_artifact)
    steps = []
    with fp32_attention_graphs(tiny_fp16_artifact, on_step=steps.append) as (graphs, record):
        assert tiny_fp16_artifact not in graphs.parents
        assert sorted(p.name for p in graphs.iterdir()) == [C.DECODER_ONNX, C.ENCODER_ONNX]
        assert (graphs / C.DECODER_ONNX).read_bytes() == (tiny_fp16_artifact / C.DECODER_ONNX).read_bytes()
        model = onnx.load(str(graphs / C.ENCODER_ONNX))
        types = value_types(model)
        _, products = classify_matmuls(model)
        assert len(products) == 2 * len(tiny_sam.image_encoder.blocks)
        assert all(types[n.output[0]] == FLOAT for n in products)
        assert record["form"] == "fp32-attention" and record["attention_cores"] == len(tiny_sam.image_encoder.blocks)
        assert record["derived_from_sha256"] == sha256_file(tiny_fp16_artifact / C.ENCODER_ONNX)
        assert record["sha256"] == sha256_file(graphs / C.ENCODER_ONNX)
    assert not graphs.exists()
    assert snapshot(tiny_fp16_artifact) == before
    assert steps and "FP32 attention form" in steps[0]


def test_fp32_artifact_has_no_fallback(tiny_artifact):
    from samexport.engines.fallback import fp32_attention_graphs

    before = snapshot(tiny_artifact)
    with pytest.raises(SamExportError, match="no attention core in FP16"), fp32_attention_graphs(tiny_artifact):
        pass
    assert snapshot(tiny_artifact) == before


def test_missing_onnx_is_named(monkeypatch):
    import importlib.util

    from samexport.engines import fallback

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(MissingExtraError, match="pip install onnx"):
        fallback.require_onnx()


# --- engines --fallback: the runner seam stands in for TensorRT on this GPU-less machine ---------
#
# The plans are TensorRT-RTX test builds (real plans from the graphs), and the runner runs the
# artifact's graphs on ONNX Runtime (test_verify_engines.onnxruntime_runner), perturbed past the
# fp16 limit (embedding error 2e-2 of its absmax) for the plans of the forms named in ``failing``:
# the stand-in for TensorRT's faulty fused FP16 attention (NVIDIA/TensorRT#4837), which the
# FP32 attention form avoids.

FP16_BREAK = 5e-2


def forms_runner(failing: set[str]):
    from support import onnxruntime_runner

    good, bad = onnxruntime_runner(), onnxruntime_runner(rel=FP16_BREAK)
    calls: list[str] = []

    def open_runner(folder: Path, manifest):
        form = (manifest.engines["encoder"].graph or {}).get("form", "exported")
        calls.append(form)
        return (bad if form in failing else good)(folder, manifest)

    open_runner.calls = calls
    return open_runner


def leftover_temp_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("samexport-fp32-attention-*")}


@pytest.mark.slow
@needs_rtx
def test_passing_plans_record_the_exported_form(tiny_fp16_artifact, tmp_path):
    from samexport.parity.engines import build_verified_engines

    folder = shutil.copytree(tiny_fp16_artifact, tmp_path / "artifact")
    runner = forms_runner(failing=set())
    manifest = build_verified_engines(folder, builder="tensorrt-rtx", runner=runner, fallback=True)
    assert runner.calls == ["exported"]
    assert manifest.engines_verification.status == "passed"
    assert manifest.engines_verification.encoder_form == "exported"
    assert manifest.engines["encoder"].graph is None and manifest.engines_verification.fallback_from is None
    assert "fallback_from" not in manifest.engines_verification.to_dict()


@pytest.mark.slow
@needs_rtx
def test_failing_primary_then_the_fallback_is_committed(tiny_fp16_artifact, tmp_path):
    from samexport.engines.fallback import fp32_attention_graphs
    from samexport.parity.engines import build_verified_engines

    folder = shutil.copytree(tiny_fp16_artifact, tmp_path / "artifact")
    graphs_before = {k: v for k, v in snapshot(folder).items() if k.endswith(".onnx") or ".onnx." in k}
    temp_before = leftover_temp_folders()
    runner, steps = forms_runner(failing={"exported"}), []
    manifest = build_verified_engines(folder, builder="tensorrt-rtx", runner=runner, fallback=True, on_step=steps.append)
    assert runner.calls == ["exported", "fp32-attention"]
    verdict = manifest.engines_verification
    assert verdict.status == "passed" and verdict.encoder_form == "fp32-attention"
    assert verdict.fallback_from["encoder_form"] == "exported"
    assert "embedding" in verdict.fallback_from["failure"]
    assert verdict.fallback_from["summary"]["embedding_rel_max_abs"] == pytest.approx(FP16_BREAK, rel=0.2)
    graph = manifest.engines["encoder"].graph
    with fp32_attention_graphs(folder) as (_, fresh):  # deterministic: the same graph again
        assert graph["sha256"] == fresh["sha256"]
    assert graph["derived_from_sha256"] == sha256_file(folder / C.ENCODER_ONNX)
    # The graphs are untouched, one plans folder (the fallback's) is named and present, and the
    # primary's plans and the derived graph are gone.
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k.endswith(".onnx") or ".onnx." in k} == graphs_before
    plan_folders = {p.name for p in folder.iterdir() if p.name.startswith(("plans-", ".plans-"))}
    assert plan_folders == {Path(r.plan).parent.name for r in manifest.engines.values()}
    assert all(r.plan in manifest.files for r in manifest.engines.values())
    assert leftover_temp_folders() == temp_before
    assert any("--fallback" in s for s in steps)
    assert "FP32 attention form" in invoke("info", folder).output or "fp32-attention" in invoke("info", folder).output


@pytest.mark.slow
@needs_rtx
def test_both_forms_failing_leave_the_artifact_byte_for_byte(tiny_fp16_artifact, tmp_path):
    from samexport.parity.engines import build_verified_engines
    from samexport.parity.verify import VerificationError

    folder = shutil.copytree(tiny_fp16_artifact, tmp_path / "artifact")
    before, temp_before = snapshot(folder), leftover_temp_folders()
    runner = forms_runner(failing={"exported", "fp32-attention"})
    with pytest.raises(VerificationError) as caught:
        build_verified_engines(folder, builder="tensorrt-rtx", runner=runner, fallback=True)
    assert runner.calls == ["exported", "fp32-attention"]
    assert snapshot(folder) == before
    assert leftover_temp_folders() == temp_before
    message = str(caught.value)
    assert "not kept; the artifact is unchanged" in message
    assert "--fallback: the plans built from the FP32 attention form fail too" in message


@pytest.mark.slow
@needs_rtx
def test_without_fallback_the_primary_failure_stands(tiny_fp16_artifact, tmp_path):
    from samexport.parity.engines import build_verified_engines
    from samexport.parity.verify import VerificationError

    folder = shutil.copytree(tiny_fp16_artifact, tmp_path / "artifact")
    before = snapshot(folder)
    runner = forms_runner(failing={"exported"})
    with pytest.raises(VerificationError, match="--fallback"):
        build_verified_engines(folder, builder="tensorrt-rtx", runner=runner)
    assert runner.calls == ["exported"] and snapshot(folder) == before


def test_cli_engines_has_fallback():
    result = invoke("engines", "--help")
    assert result.exit_code == 0 and "--fallback" in result.output
