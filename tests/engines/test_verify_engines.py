"""``samexport engines`` verifies its plans before it keeps them; ``verify`` on the device.

No TensorRT engine runs on this machine, so the plans are TensorRT-RTX test builds (real plans,
built from the artifact's graphs) and the runner seam (``runner(folder, manifest) -> backend``) runs
the artifact's graphs on ONNX Runtime instead of the plans: once as they are (the plans are kept,
with the verdict and its figures in the manifest) and once perturbed past the fp32 limit (nothing
of the artifact changes, byte for byte, and the message names the figure and what to try).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import HEAVY, invoke, needs_rtx, onnxruntime_runner, run_on_device

from samexport.artifacts import read_manifest
from samexport.errors import SamExportError


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


@needs_rtx
def test_failing_plans_leave_the_artifact_byte_for_byte(tiny_artifact, tmp_path):
    from samexport.parity.engines import build_verified_engines
    from samexport.parity.verify import VerificationError

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    before = snapshot(folder)
    with pytest.raises(VerificationError) as caught:
        build_verified_engines(folder, builder="tensorrt-rtx", runner=onnxruntime_runner(rel=3e-3))
    assert snapshot(folder) == before
    assert not any(p.name.startswith(("plans-", ".plans-")) for p in folder.iterdir())
    message = str(caught.value)
    value = caught.value.report.summary["embedding_rel_max_abs"]
    assert value == pytest.approx(3e-3, abs=5e-4)
    assert f"embedding_rel_max_abs {value:.6g} is outside its fp32 limit <= 0.001" in message
    assert "not kept; the artifact is unchanged" in message and "--no-verify" in message


@needs_rtx
def test_passing_plans_are_kept_with_their_verdict(tiny_artifact, tmp_path):
    from samexport.parity.engines import build_verified_engines

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    manifest = build_verified_engines(folder, builder="tensorrt-rtx", runner=onnxruntime_runner())
    verdict = manifest.engines_verification
    assert verdict.status == "passed" and verdict.passed and verdict.backend == "onnxruntime-cpu"
    assert verdict.attention == "plain" and verdict.precision == "fp32"
    assert verdict.tensorrt_version == manifest.engines["encoder"].tensorrt_version
    assert verdict.references == manifest.references.file
    assert all(c["passed"] for c in verdict.checks) and verdict.summary["embedding_cosine"] >= 0.99999
    assert all(record.plan in manifest.files for record in manifest.engines.values())
    shown = json.loads(invoke("info", folder).output)["engines_verification"]
    assert shown == json.loads(json.dumps(verdict.to_dict()))


@needs_rtx
def test_engines_command_records_test_builds_and_no_verify(tiny_artifact, tmp_path):
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    result = invoke("engines", folder, "--builder", "tensorrt-rtx")
    assert result.exit_code == 0, result.output
    assert "verification: not run (test build)" in result.output
    assert read_manifest(folder).engines_verification.status == "not run (test build)"
    result = invoke("engines", folder, "--builder", "tensorrt-rtx", "--no-verify")
    assert result.exit_code == 0 and "verification: unverified" in result.output
    assert read_manifest(folder).engines_verification.status == "unverified"


def test_engines_without_references_refuses_before_building(tiny_artifact, tmp_path):
    from samexport.artifacts import write_manifest
    from samexport.parity.engines import build_verified_engines

    folder = shutil.copytree(tiny_artifact, tmp_path / "old")
    manifest = read_manifest(folder)
    (folder / manifest.references.file).unlink()
    write_manifest(folder, manifest.replace(references=None))
    before = snapshot(folder)
    with pytest.raises(SamExportError, match="has no stored PyTorch references.*--no-verify"):
        build_verified_engines(folder, builder="tensorrt-rtx", runner=onnxruntime_runner())
    assert snapshot(folder) == before


@needs_rtx
def test_device_environment_builds_and_verifies(device_python, tiny_artifact, tmp_path):
    """Without torch, onnx or onnxscript: `engines` (test build) then `verify` on ONNX Runtime,
    importing none of them nor samexport.export."""
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    done = run_on_device(device_python, "engines", str(folder), "--builder", "tensorrt-rtx")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification: not run (test build)" in done.stdout and "IMPORTED-HEAVY []" in done.stdout
    script = (
        "import json, sys\nfrom samexport.cli import app\n"
        f"status = app(['verify', {str(folder)!r}, '--backend', 'onnxruntime-cpu', '--json'], standalone_mode=False) or 0\n"
        f"print('HEAVY', json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith('samexport.export'))))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([str(device_python), "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[: done.stdout.rindex("HEAVY")])
    assert report["passed"] and report["summary"]["embedding_cosine"] >= 0.99999
    assert done.stdout.strip().endswith("HEAVY []")
