"""`samexport engines ARTIFACT_DIR`: plans for the device from an artifact built elsewhere.

On this CPU machine the command runs end to end with ``--builder tensorrt-rtx`` (TensorRT-RTX builds
without a GPU), in a virtual environment that has the base install, Polygraphy and TensorRT-RTX
and no torch, onnx or onnxscript. The settings checks that guard real TensorRT builds are tested
against module stand-ins where the real release is not installable here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import needs_rtx, run_on_device

from samexport import constants as C
from samexport.errors import SamExportError

# What the device needs besides samexport's base requirements: Polygraphy (the `tensorrt` extra)
# and, standing in for TensorRT on this GPU-less machine, TensorRT-RTX.


def copy_artifact(source: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(source, destination)
    return destination


def check_engines_recorded(artifact: Path, stdout: str) -> dict:
    manifest = json.loads((artifact / C.MANIFEST).read_text())
    assert set(manifest["engines"]) == {"encoder", "decoder"} and manifest["skipped_engines"] == {}
    for name, record in manifest["engines"].items():
        plan = artifact / record["plan"]
        assert plan.name == f"{name}.plan" and plan.stat().st_size == record["plan_bytes"] > 0
        assert plan.read_bytes()[:4] == b"vtrt"  # a plain TensorRT-RTX plan, no header
        assert record["builder"] == "tensorrt_rtx" and record["test_build"] is True
        assert record["tf32"] is False and record["strongly_typed"] is True
        assert f"wrote {plan}" in stdout
    assert manifest["engine_config"]["prompts"] == [1, 1, 8] and manifest["engine_config"]["points"] == [1, 2, 4]
    decoder_profile = manifest["engines"]["decoder"]["profiles"][0]
    assert decoder_profile[C.POINT_COORDS.name] == [[1, 1, 2], [1, 2, 2], [8, 4, 2]]
    return manifest


@needs_rtx
def test_engines_command_without_torch(device_python, tiny_artifact, tmp_path):
    artifact = copy_artifact(tiny_artifact, tmp_path / "tiny")
    before = json.loads((artifact / C.MANIFEST).read_text())
    result = run_on_device(device_python, "engines", str(artifact), "--builder", "tensorrt-rtx",
                           "--max-batch", "8", "--max-points", "4", "--workspace-gb", "1")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED-HEAVY []" in result.stdout
    manifest = check_engines_recorded(artifact, result.stdout)
    # everything else in the manifest is as the workstation wrote it
    for key in ("variant", "precision", "graphs", "checkpoint", "parity", "encoder", "decoder"):
        assert manifest[key] == before[key]


@needs_rtx
@pytest.mark.slow
def test_engines_command_on_vit_b_without_torch(device_python, vit_b_artifact, tmp_path):
    artifact = copy_artifact(vit_b_artifact, tmp_path / "vit_b")
    result = run_on_device(device_python, "engines", str(artifact), "--builder", "tensorrt-rtx",
                           "--max-batch", "8", "--max-points", "4")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED-HEAVY []" in result.stdout
    manifest = check_engines_recorded(artifact, result.stdout)
    assert manifest["variant"] == "vit_b"
    assert manifest["engines"]["encoder"]["plan_bytes"] > 300 << 20  # 89.7M fp32 weights are in the plan


@needs_rtx
def test_engines_command_without_tensorrt_says_what_to_install(device_python, tiny_artifact, tmp_path):
    artifact = copy_artifact(tiny_artifact, tmp_path / "tiny")
    before = (artifact / C.MANIFEST).read_bytes()
    result = run_on_device(device_python, "engines", str(artifact))
    assert result.returncode != 0 and "samexport[tensorrt]" in result.stderr + result.stdout
    assert (artifact / C.MANIFEST).read_bytes() == before
    assert sorted(p.name for p in artifact.iterdir()) == sorted(p.name for p in tiny_artifact.iterdir())


@needs_rtx
def test_rebuild_replaces_our_plans_and_keeps_the_rest(tiny_artifact, tmp_path):
    from samexport.engines.artifact import build_artifact_engines
    from samexport.engines.builder import BuildConfig

    artifact = copy_artifact(tiny_artifact, tmp_path / "tiny")
    (artifact / "notes.txt").write_text("the user's own file")
    config = BuildConfig(workspace_bytes=1 << 30, prompts=(1, 1, 4), points=(1, 2, 4))
    first = build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    first_folder = (artifact / first.engines["encoder"].plan).parent
    second = build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    second_folder = (artifact / second.engines["encoder"].plan).parent
    assert second_folder != first_folder and not first_folder.exists() and second_folder.is_dir()
    assert (artifact / "notes.txt").read_text() == "the user's own file"
    references = second.references.file  # the stored PyTorch references (samexport.parity.references)
    assert {p.name for p in artifact.iterdir()} == {*C.GRAPH_FILES, C.MANIFEST, "notes.txt", second_folder.name, references}


@needs_rtx
def test_interrupted_run_leaves_the_artifact_as_it_was(tiny_artifact, tmp_path, monkeypatch):
    import samexport.engines.artifact as artifact_module
    from samexport.engines.builder import BuildConfig, build_engine

    artifact = copy_artifact(tiny_artifact, tmp_path / "tiny")
    config = BuildConfig(workspace_bytes=1 << 30, prompts=(1, 1, 4), points=(1, 2, 4))
    artifact_module.build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    before = {p.relative_to(artifact): p.read_bytes() for p in artifact.rglob("*") if p.is_file()}

    def interrupted(onnx_path, plan_path, *args, **kwargs):
        if Path(onnx_path).name == C.DECODER_ONNX:
            raise KeyboardInterrupt  # Ctrl-C during the second build
        return build_engine(onnx_path, plan_path, *args, **kwargs)

    monkeypatch.setattr(artifact_module, "build_engine", interrupted)
    with pytest.raises(KeyboardInterrupt):
        artifact_module.build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    after = {p.relative_to(artifact): p.read_bytes() for p in artifact.rglob("*") if p.is_file()}
    assert after == before


def test_stale_partial_folders_of_ours_are_removed_and_others_kept(tmp_path):
    from samexport.engines.artifact import MARKER, PARTIAL_PREFIX, remove_stale_partial_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{PARTIAL_PREFIX}1-{dead.stdout.strip()}"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"pid": int(dead.stdout)}))
    alive = tmp_path / f"{PARTIAL_PREFIX}2-{os.getppid()}"
    alive.mkdir()
    (alive / MARKER).write_text(json.dumps({"pid": os.getppid()}))
    foreign = tmp_path / f"{PARTIAL_PREFIX}3-user"  # same name pattern, no marker: not ours
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    assert remove_stale_partial_folders(tmp_path) == [stale]
    assert alive.is_dir() and (foreign / "data.bin").read_bytes() == b"keep"


def test_plugin_encoder_cannot_be_hardware_compatible():
    from samexport.engines.artifact import check_engine_request
    from samexport.engines.builder import BuildConfig

    with pytest.raises(SamExportError, match="compiled for the building GPU only"):
        check_engine_request("plugin", BuildConfig(hardware_compatibility="ampere_plus"), "tensorrt")
    with pytest.raises(SamExportError, match="TensorRT-RTX cannot build --attention plugin"):
        check_engine_request("plugin", BuildConfig(), "tensorrt_rtx")
    check_engine_request("fused-pattern", BuildConfig(hardware_compatibility="ampere_plus"), "tensorrt")


def test_unknown_builder_is_an_error(tiny_artifact):
    from samexport.engines.artifact import build_artifact_engines

    with pytest.raises(SamExportError, match="unknown builder 'tensorrt-llm'; valid: tensorrt, tensorrt-rtx"):
        build_artifact_engines(tiny_artifact, builder="tensorrt-llm")


def _tensorrt_like(version: str, levels: tuple[str, ...]):
    """A stand-in exposing only what ``check_build_settings`` reads (the names are those of the
    real bindings; which release has which is checked in tests/engines/test_trt_api.py)."""
    return SimpleNamespace(
        __version__=version,
        HardwareCompatibilityLevel=SimpleNamespace(**{level: object() for level in levels}),
        BuilderFlag=SimpleNamespace(VERSION_COMPATIBLE=object()),
    )


def test_same_compute_capability_needs_tensorrt_10_9(monkeypatch):
    """TensorRT 10.3 (JetPack 6) has no SAME_COMPUTE_CAPABILITY: a clear error, not the
    AttributeError the old builder raised from deep inside the build."""
    from samexport.engines import builder
    from samexport.engines.builder import BuildConfig, check_build_settings

    monkeypatch.setattr(builder, "is_jetson", lambda: False)
    config = BuildConfig(hardware_compatibility="same_compute_capability")
    with pytest.raises(SamExportError, match=r"SAME_COMPUTE_CAPABILITY.*needs TensorRT >= 10\.9; this is TensorRT 10\.3\.0\.30"):
        check_build_settings(_tensorrt_like("10.3.0.30", ("NONE", "AMPERE_PLUS")), config)
    check_build_settings(_tensorrt_like("10.9.0.34", ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")), config)


def test_hardware_compatibility_is_refused_on_jetson(monkeypatch):
    from samexport.engines import builder
    from samexport.engines.builder import BuildConfig, check_build_settings

    monkeypatch.setattr(builder, "is_jetson", lambda: True)
    with pytest.raises(SamExportError, match="not supported on Jetson"):
        check_build_settings(_tensorrt_like("10.3.0.30", ("NONE", "AMPERE_PLUS")), BuildConfig(hardware_compatibility="ampere_plus"))
    check_build_settings(_tensorrt_like("10.3.0.30", ("NONE", "AMPERE_PLUS")), BuildConfig())


@needs_rtx
def test_tensorrt_builder_config_clears_tf32():
    """TF32 is on by default in a TensorRT builder config: the config samexport hands the
    standard TensorRT build must clear it so fp32 graphs run in FP32 (checked here on
    TensorRT-RTX's builder, which has the same flag and the same default)."""
    from samexport.engines import load_tensorrt, polygraphy_trt
    from samexport.engines.builder import BuildConfig, _create_config

    pg = polygraphy_trt("tensorrt_rtx")
    trt = load_tensorrt("tensorrt_rtx")
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert builder.create_builder_config().get_flag(trt.BuilderFlag.TF32)  # the default we must undo
    config = _create_config(pg, trt, BuildConfig(), [], "tensorrt")(builder, network)
    assert not config.get_flag(trt.BuilderFlag.TF32)


@pytest.mark.parametrize(
    ("version", "jetson", "expected"),
    [
        ("10.3.0.30", True, {"attention plugin": "no (needs TensorRT >= 10.9)", "onnx attention": "no (needs TensorRT >= 10.14)",
                             "hardware compatibility ampere_plus": "no (not supported on Jetson)", "version compatibility": "yes"}),
        ("10.9.0.34", False, {"attention plugin": "yes", "onnx attention": "no (needs TensorRT >= 10.14)",
                              "hardware compatibility same_compute_capability": "yes"}),
        ("11.4.0.106", False, {"attention plugin": "yes", "onnx attention": "yes", "hardware compatibility ampere_plus": "yes"}),
    ],
)
def test_doctor_lists_tensorrt_features_per_release(version, jetson, expected):
    from samexport.doctor import tensorrt_features

    features = tensorrt_features(version, jetson=jetson)
    for prefix, status in expected.items():
        (name,) = [f for f in features if f.startswith(prefix)]
        assert features[name] == status, name


@needs_rtx
def test_auto_backend_skips_test_build_engines(tiny_artifact, tmp_path, monkeypatch):
    """An artifact whose plans are TensorRT-RTX test builds opens on ONNX Runtime under ``auto``
    even where TensorRT is importable, and the refusal reason names the test build."""
    from samexport.engines import Availability, GpuInfo
    from samexport.engines.artifact import build_artifact_engines
    from samexport.engines.builder import BuildConfig
    from samexport.runtime.predictor import SamPredictor
    from samexport.runtime.tensorrt_backend import why_engines_cannot_run

    artifact = copy_artifact(tiny_artifact, tmp_path / "tiny")
    manifest = build_artifact_engines(artifact, BuildConfig(workspace_bytes=1 << 30, prompts=(1, 1, 4)), builder="tensorrt-rtx")
    orin = GpuInfo(0, "Orin", "8.7")
    monkeypatch.setattr("samexport.runtime.tensorrt_backend.tensorrt_availability",
                        lambda flavour="tensorrt": Availability(True, "", "10.3.0.30", orin))
    monkeypatch.setattr("samexport.runtime.tensorrt_backend.cuda_devices", lambda: [orin])
    assert "test build" in why_engines_cannot_run(manifest)
    assert "onnxruntime" in SamPredictor(artifact).backend.name  # alone, or the decoder of openvino+onnxruntime
