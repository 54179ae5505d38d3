"""TensorRT engines for SAM 2.1: its graphs build through SAM's code path, by the graph contract.

No GPU here: TensorRT-RTX parses and builds the random sam2.1_hiera_tiny artifact's graphs (the
session fixture ``sam2_tiny_artifact``), and the plans' tensors and profiles are checked against
the numbers SAM 2.1's contract gives (three encoder outputs; the decoder's two high-resolution
maps, dynamic prompt batch B and points N, the mask input). ``samexport engines`` runs in the
device's environment (no torch, onnx). What needs a TensorRT runtime, ``TensorRTBackend`` feeding
SAM 2.1's features and prompts, runs on stand-ins for Polygraphy's runners that run the graphs on
ONNX Runtime, so the feeding, the features kept on the device, the profile check and ``samexport
verify``'s comparison with the stored PyTorch references are exercised; on a GPU the real engines
are compared (``gpu`` marker, skipped without one).
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
from support import needs_rtx, onnxruntime_runner, run_on_device

from samexport import constants as C
from samexport.artifacts import read_manifest, write_manifest
from samexport.errors import InvalidInputError

pytestmark = pytest.mark.slow  # the SAM 2.1 artifact fixture builds for minutes on 2 loaded cores

# Literal, not read from the contract: what the plans must take and give.
ENCODER_OUTPUTS = [
    {"name": "image_embeddings", "dtype": "float", "shape": [1, 256, 64, 64]},
    {"name": "high_res_feats_0", "dtype": "float", "shape": [1, 32, 256, 256]},
    {"name": "high_res_feats_1", "dtype": "float", "shape": [1, 64, 128, 128]},
]
DECODER_INPUTS = [
    *ENCODER_OUTPUTS,
    {"name": "point_coords", "dtype": "float", "shape": [-1, -1, 2]},
    {"name": "point_labels", "dtype": "float", "shape": [-1, -1]},
    {"name": "mask_input", "dtype": "float", "shape": [-1, 1, 256, 256]},
    {"name": "has_mask_input", "dtype": "float", "shape": [-1]},
]
DECODER_OUTPUTS = [
    {"name": "low_res_masks", "dtype": "float", "shape": [-1, 4, 256, 256]},
    {"name": "iou_predictions", "dtype": "float", "shape": [-1, 4]},
    {"name": "object_score_logits", "dtype": "float", "shape": [-1, 1]},
]
# BuildConfig(prompts=(1, 2, 8), points=(1, 2, 4)): min / opt / max per input, as the manifest writes them.
DECODER_PROFILE = {
    "image_embeddings": [[1, 256, 64, 64]] * 3,
    "high_res_feats_0": [[1, 32, 256, 256]] * 3,
    "high_res_feats_1": [[1, 64, 128, 128]] * 3,
    "point_coords": [[1, 1, 2], [2, 2, 2], [8, 4, 2]],
    "point_labels": [[1, 1], [2, 2], [8, 4]],
    "mask_input": [[1, 1, 256, 256], [2, 1, 256, 256], [8, 1, 256, 256]],
    "has_mask_input": [[1], [2], [8]],
}


def small_config(points=(1, 2, 4)):
    from samexport.engines.builder import BuildConfig

    return BuildConfig(workspace_bytes=1 << 30, prompts=(1, 2, 8), points=points)


def check_sam2_plans(artifact: Path) -> dict:
    """The manifest's engine records (JSON as written) against the literal tensors and profile."""
    manifest = json.loads((artifact / C.MANIFEST).read_text())
    assert manifest["variant"] == "sam2.1_hiera_tiny" and manifest["skipped_engines"] == {}
    encoder, decoder = manifest["engines"]["encoder"], manifest["engines"]["decoder"]
    assert encoder["inputs"] == [{"name": "image", "dtype": "float", "shape": [1, 3, 1024, 1024]}]
    assert encoder["outputs"] == ENCODER_OUTPUTS and encoder["profiles"] == []
    assert decoder["inputs"] == DECODER_INPUTS and decoder["outputs"] == DECODER_OUTPUTS
    assert decoder["profiles"] == [DECODER_PROFILE]
    for name, record in manifest["engines"].items():
        plan = artifact / record["plan"]
        assert plan.name == f"{name}.plan" and plan.read_bytes()[:4] == b"vtrt"  # a plain TensorRT-RTX plan
        assert plan.stat().st_size == record["plan_bytes"] == manifest["files"][record["plan"]]["bytes"]
        assert record["builder"] == "tensorrt_rtx" and record["test_build"] is True and record["strongly_typed"] is True
    # the fp32 weights are in the plans: Hiera-T's encoder graph is ~110 MB, the decoder's ~17 MB
    assert encoder["plan_bytes"] > 0.9 * (artifact / C.ENCODER_ONNX).stat().st_size
    assert decoder["plan_bytes"] > 0.9 * (artifact / C.DECODER_ONNX).stat().st_size
    return manifest


@needs_rtx
def test_rtx_builds_sam2_plans_verified_through_the_seam(sam2_tiny_artifact, tmp_path):
    """``samexport engines`` on SAM 2.1: both plans built by the contract's profiles, checked
    against the stored references through the runner seam (the artifact's graphs on ONNX Runtime,
    fed by the contract), committed with the verdict."""
    from samexport.parity.engines import build_verified_engines

    folder = shutil.copytree(sam2_tiny_artifact, tmp_path / "artifact")
    manifest = build_verified_engines(folder, small_config(), builder="tensorrt-rtx", runner=onnxruntime_runner())
    check_sam2_plans(folder)
    verdict = manifest.engines_verification
    assert verdict.status == "passed" and verdict.backend == "onnxruntime-cpu", verdict
    assert verdict.summary["embedding_cosine"] >= 0.99999 and verdict.summary["mask_iou_min"] >= 0.999
    assert read_manifest(folder).engine("decoder").max_prompts == 8


@needs_rtx
def test_sam2_plans_failing_verification_leave_the_artifact(sam2_tiny_artifact, tmp_path):
    """One element of SAM 2.1's second high-resolution map moved by 3e-3 of its scale: the new
    plans fail on ``embedding_rel_max_abs`` (the features' figure, every map included) and nothing
    of the artifact changes."""
    from samexport.parity.engines import build_verified_engines
    from samexport.parity.verify import VerificationError

    folder = shutil.copytree(sam2_tiny_artifact, tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name == C.MANIFEST}
    with pytest.raises(VerificationError) as caught:
        build_verified_engines(folder, small_config(), builder="tensorrt-rtx", runner=onnxruntime_runner(rel=3e-3))
    value = caught.value.report.summary["embedding_rel_max_abs"]
    assert value == pytest.approx(3e-3, rel=0.2)
    assert "embedding_rel_max_abs" in str(caught.value) and "not kept; the artifact is unchanged" in str(caught.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name == C.MANIFEST} == before
    assert not any(p.name.startswith(("plans-", ".plans-")) for p in folder.iterdir())


@needs_rtx
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_rtx_builds_sam2_reduced_precision_graphs(sam2_tiny_artifact, precision, tmp_path):
    """The fp16 graphs (FP32 islands) and the int8 encoder of ``--int8-for tensorrt`` (INT8 Q/DQ on
    the FP16 graph, calibrated through SAM 2.1's preprocessing) parse and build strongly typed; the
    plans keep the contract's float32 tensors and are smaller than the fp32 graph."""
    from support import write_calibration_folder

    from samexport.engines.builder import build_engine, check_engine_io
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.precision.int8 import quantize_encoder_int8
    from samexport.precision.recipes import recipe_for
    from samexport.sam2_transforms import preprocess_sam2

    config = small_config()
    graphs = {"decoder": convert_to_fp16(sam2_tiny_artifact / C.DECODER_ONNX, tmp_path / C.DECODER_ONNX)}
    if precision == "fp16":
        graphs["encoder"] = convert_to_fp16(sam2_tiny_artifact / C.ENCODER_ONNX, tmp_path / C.ENCODER_ONNX)
    else:
        calib = write_calibration_folder(tmp_path / "calib", ("chelsea", "rocket"))
        graphs["encoder"] = quantize_encoder_int8(sam2_tiny_artifact / C.ENCODER_ONNX, tmp_path / C.ENCODER_ONNX, calib,
                                                  recipe=recipe_for("tensorrt"), preprocess=preprocess_sam2)
    fp32_bytes = (sam2_tiny_artifact / C.ENCODER_ONNX).stat().st_size
    for graph in ("encoder", "decoder"):
        record = build_engine(graphs[graph], tmp_path / f"{graph}.plan", config,
                              profiles=config.profiles(graph, C.SAM2_GRAPHS), flavour="tensorrt_rtx")
        check_engine_io(record, graph, C.SAM2_GRAPHS)
        data = record.to_dict()
        assert data["outputs"] == (ENCODER_OUTPUTS if graph == "encoder" else DECODER_OUTPUTS)
        assert data["inputs"] == (DECODER_INPUTS if graph == "decoder" else [
            {"name": "image", "dtype": "float", "shape": [1, 3, 1024, 1024]}])
        if graph == "encoder":  # fp16 weights about half the fp32 graph, int8 weights less still
            high = 0.8 if precision == "fp16" else 0.5
            assert 0.2 < record.plan_bytes / fp32_bytes < high, (record.plan_bytes, fp32_bytes)


@needs_rtx
def test_engines_command_on_sam2_without_torch(device_python, sam2_tiny_artifact, tmp_path):
    """The device-side command on a SAM 2.1 artifact, with neither torch nor onnx installed."""
    folder = shutil.copytree(sam2_tiny_artifact, tmp_path / "artifact")
    result = run_on_device(device_python, "engines", str(folder), "--builder", "tensorrt-rtx",
                           "--max-batch", "8", "--max-points", "4", "--workspace-gb", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IMPORTED-HEAVY []" in result.stdout and "verification: not run (test build)" in result.stdout
    manifest = json.loads((folder / C.MANIFEST).read_text())
    assert manifest["engines"]["decoder"]["profiles"][0]["high_res_feats_0"] == [[1, 32, 256, 256]] * 3
    assert manifest["engines"]["decoder"]["profiles"][0]["point_coords"] == [[1, 1, 2], [1, 2, 2], [8, 4, 2]]
    assert manifest["engines"]["encoder"]["outputs"] == ENCODER_OUTPUTS
    assert manifest["engines_verification"]["status"] == "not run (test build)"


# ---------------------------------------------------------------------------------------------
# TensorRTBackend on SAM 2.1, with Polygraphy's runners replaced by ONNX Runtime stand-ins


class DeviceArray:
    """Stands in for ``polygraphy.cuda.DeviceView``: an output left on the device."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def numpy(self) -> np.ndarray:
        return self.array.copy()


class FakeEngine:
    """What ``TensorRTBackend._check_profile`` asks of the engine, from the plan's record."""

    def __init__(self, record) -> None:
        self.record = record

    def get_tensor_shape(self, name):
        return next(io["shape"] for io in self.record.inputs if io["name"] == name)

    def get_tensor_profile_shape(self, name, profile):
        return self.record.profiles[profile][name]


class FakeRunner:
    """``polygraphy.backend.trt.TrtRunner`` running the plan's ONNX graph on ONNX Runtime; counts
    the inputs it was handed as device buffers."""

    runners: typing.ClassVar[dict[str, FakeRunner]] = {}

    def __init__(self, loader, name) -> None:
        import onnxruntime as ort

        plan, manifest = loader
        self.record = manifest.engine(name)
        assert Path(plan).name == f"{name}.plan"
        graph = Path(plan).parent.parent / {"encoder": C.ENCODER_ONNX, "decoder": C.DECODER_ONNX}[name]
        self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        self.engine = FakeEngine(self.record)
        self.is_active = False
        self.device_inputs: list[str] = []
        self.batches: list[int] = []  # prompts per decoder call
        FakeRunner.runners[name] = self

    def activate(self):
        self.is_active = True

    def deactivate(self):
        self.is_active = False

    def infer(self, feeds, copy_outputs_to_host=True):
        arrays = {}
        for name, value in feeds.items():
            if isinstance(value, DeviceArray):
                self.device_inputs.append(name)
                value = value.array
            arrays[name] = value
        if C.POINT_COORDS.name in arrays:
            self.batches.append(len(arrays[C.POINT_COORDS.name]))
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, arrays)))
        return outputs if copy_outputs_to_host else {k: DeviceArray(v) for k, v in outputs.items()}


@pytest.fixture
def sam2_gpu_artifact(sam2_tiny_artifact, tmp_path, monkeypatch):
    """A copy of the SAM 2.1 artifact whose plans (TensorRT-RTX builds) are recorded as if built
    by TensorRT 10.3.0.30 on an Orin, and a TensorRT module, GPU and Polygraphy that match."""
    import types

    import samexport.runtime.tensorrt_backend as trt_backend
    from samexport.engines import GpuInfo
    from samexport.engines.artifact import build_artifact_engines

    folder = shutil.copytree(sam2_tiny_artifact, tmp_path / "artifact")
    # up to 16 points a prompt: the stored reference suite has prompts of 11 points
    manifest = build_artifact_engines(folder, small_config(points=(1, 2, 16)), builder="tensorrt-rtx")
    as_built_on_orin = {
        name: record.replace(builder="tensorrt", test_build=False, tensorrt_module="tensorrt",
                             tensorrt_version="10.3.0.30", gpu="Orin", compute_capability="8.7")
        for name, record in manifest.engines.items()
    }
    manifest = write_manifest(folder, manifest.replace(engines=as_built_on_orin))
    fake_pg = types.SimpleNamespace(
        EngineFromPath=lambda plan: (plan, read_manifest(folder)),
        TrtRunner=FakeRunner,
    )
    monkeypatch.setattr(trt_backend, "load_tensorrt", lambda flavour="tensorrt": types.SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(trt_backend, "polygraphy_trt", lambda flavour="tensorrt": fake_pg)
    monkeypatch.setattr(trt_backend, "cuda_devices", lambda: [GpuInfo(0, "Orin", "8.7")])
    FakeRunner.runners = {}
    return folder


@needs_rtx
def test_tensorrt_backend_feeds_sam2_by_its_contract(sam2_gpu_artifact):
    """``TensorRTBackend`` on SAM 2.1: three features out of the encoder, kept on the device and fed
    back to the decoder with the prompts; outputs equal ONNX Runtime's on the same graphs; a batch
    past the profile is the caller's error."""
    from samexport.runtime.backends import OnnxRuntimeBackend, open_backend
    from samexport.sam2_transforms import preprocess_sam2
    from samexport.testing import make_image

    backend = open_backend(sam2_gpu_artifact, "tensorrt")
    assert type(backend).__name__ == "TensorRTBackend" and backend.contract is C.SAM2_GRAPHS and backend.max_prompts == 8
    reference = OnnxRuntimeBackend(sam2_gpu_artifact / C.ENCODER_ONNX, sam2_gpu_artifact / C.DECODER_ONNX,
                                   device="cpu", contract=C.SAM2_GRAPHS)
    image = preprocess_sam2(make_image(300, 450, seed=3))
    features = backend.run_encoder(image)
    assert [f.shape for f in features] == [(1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128)]
    expected = reference.run_encoder(image)
    for ours, theirs in zip(features, expected):
        np.testing.assert_array_equal(ours, theirs)
    rng = np.random.default_rng(0)
    prompts = (
        (rng.uniform(0, 1024, (3, 2, 2)).astype(np.float32), np.array([[1, 0], [1, 1], [2, 3]], np.float32),
         np.zeros((3, 1, 256, 256), np.float32), np.zeros(3, np.float32)),
        (rng.uniform(0, 1024, (1, 1, 2)).astype(np.float32), np.ones((1, 1), np.float32),
         rng.normal(size=(1, 1, 256, 256)).astype(np.float32), np.ones(1, np.float32)),
    )
    decoder = FakeRunner.runners["decoder"]
    for k, batch in enumerate(prompts):
        outputs = backend.run_decoder(features, *batch)
        assert [o.shape for o in outputs] == [(len(batch[0]), 4, 256, 256), (len(batch[0]), 4), (len(batch[0]), 1)]
        for ours, theirs in zip(outputs, reference.run_decoder(expected, *batch)):
            # the same graph; the reference's decoder session has other options (fusions, threads)
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * max(1.0, float(np.abs(theirs).max())))
        # the three features went from the encoder's device buffers straight to the decoder
        assert decoder.device_inputs == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"] * (k + 1)
    copies = tuple(f.copy() for f in features)  # features from elsewhere (e.g. a stored row) go from the host
    backend.run_decoder(copies, *prompts[1])
    assert decoder.device_inputs == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"] * 2
    too_many = tuple(np.repeat(a, 9, axis=0) for a in prompts[1])
    with pytest.raises(InvalidInputError, match=r"point_coords shape \(9, 1, 2\) is outside the decoder engine's profile \(1, 1, 2\)..\(8, 16, 2\)"):
        backend.run_decoder(features, *too_many)
    with pytest.raises(InvalidInputError, match="takes 3 features and 4 prompt inputs; got 1 and 4"):
        backend.run_decoder(features[:1], *prompts[1])
    backend.close()


@needs_rtx
def test_verify_on_tensorrt_compares_sam2_features(sam2_gpu_artifact):
    """``samexport verify --backend tensorrt`` on SAM 2.1 runs the plans through SAM 2.1's parity
    loop against its stored references (the stand-in runs the same graphs, so it passes at the
    storage error), and ``SAM2ImagePredictor(backend="tensorrt")`` decodes 10 boxes in calls within
    the plan's profile (8 prompts at most): 5 + 5, the same masks as ONNX Runtime in one call."""
    import samexport
    from samexport.parity.verify import verify_artifact_backend
    from samexport.testing import make_image

    report = verify_artifact_backend(sam2_gpu_artifact, "tensorrt")
    assert report.passed and report.candidate == "tensorrt", report.summary
    assert report.summary["embedding_cosine"] >= 0.99999 and report.summary["mask_iou_min"] >= 0.999
    assert report.summary["embedding_rel_max_abs"] < 1e-3  # the references' float16 storage (4e-4)
    predictor = samexport.SAM2ImagePredictor(sam2_gpu_artifact, backend="tensorrt")
    assert predictor.backend.name == "tensorrt" and predictor.backend.contract is C.SAM2_GRAPHS
    assert predictor.max_prompts_per_call == 8
    reference = samexport.SAM2ImagePredictor(sam2_gpu_artifact, backend="onnxruntime-cpu")
    image = make_image(240, 320, seed=2)
    rng = np.random.default_rng(1)
    corners = np.sort(rng.uniform(0, 1, (10, 2, 2)), axis=1) * [320, 240]
    boxes = corners.reshape(10, 4).astype(np.float32)
    outputs = []
    for each in (predictor, reference):
        each.set_image(image)
        outputs.append(each.predict(box=boxes, multimask_output=True))
    (masks, scores, logits), (masks_ref, scores_ref, logits_ref) = outputs
    assert FakeRunner.runners["decoder"].batches[-2:] == [5, 5]
    assert masks.shape == masks_ref.shape == (10, 3, 240, 320) and logits.shape == (10, 3, 256, 256)
    np.testing.assert_allclose(scores, scores_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits, logits_ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(logits_ref).max())))
    assert (masks != masks_ref).mean() < 1e-4


@pytest.mark.gpu
def test_gpu_sam2_engines_match_torch(sam2_tiny_checkpoint, tmp_path):
    """On a GPU: build SAM 2.1 with engines (verified by the build against its references), run
    ``SAM2ImagePredictor(backend="tensorrt")`` and compare with the PyTorch reference."""
    from samexport.engines import tensorrt_availability

    availability = tensorrt_availability()
    if not availability:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {availability.reason}")
    import samexport
    from samexport.pipeline import build
    from samexport.testing import make_image, mask_iou

    result = build("sam2.1_hiera_tiny", checkpoint=sam2_tiny_checkpoint, output=tmp_path / "fp32", engines="require")
    assert set(result.manifest.engines) == {"encoder", "decoder"}
    assert result.manifest.engines_verification.status == "passed", result.manifest.engines_verification
    image = make_image(480, 640, seed=1)
    trt = samexport.SAM2ImagePredictor(result.artifact_dir, backend="tensorrt")
    onnx = samexport.SAM2ImagePredictor(result.artifact_dir, backend="onnxruntime-cpu")
    for predictor in (trt, onnx):
        predictor.set_image(image)
    box = np.array([50, 40, 300, 400], np.float32)
    masks, scores, _ = trt.predict(box=box)
    masks_ref, scores_ref, _ = onnx.predict(box=box)
    assert np.abs(scores - scores_ref).max() <= 1e-2
    assert min(mask_iou(a, b) for a, b in zip(masks, masks_ref)) >= 0.97
