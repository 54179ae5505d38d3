"""TensorRT runtime backend: compatibility checks on CPU; real engines only on a GPU."""

from __future__ import annotations

import pytest

from samexport.engine_records import EngineRecord
from samexport.engines import GpuInfo, tensorrt_availability
from samexport.errors import SamExportError
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.tensorrt_backend import check_engine_compatibility as check_record

ORIN = GpuInfo(0, "Orin", "8.7")
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0")
RECORD = {
    "tensorrt_version": "10.3.0.26",
    "gpu": "Orin",
    "compute_capability": "8.7",
    "config": {"version_compatible": False, "hardware_compatibility": "none"},
    "plan": "encoder.plan",
}


def check_engine_compatibility(record: dict, **kwargs) -> None:
    """The check on an engine record in its ``manifest.json`` form, read as ``Manifest.from_dict``
    reads it (so records written before ``test_build`` existed are covered too)."""
    check_record(EngineRecord.from_dict(record), **kwargs)


def test_same_version_and_gpu_is_accepted():
    check_engine_compatibility(RECORD, name="encoder", tensorrt_version="10.3.0.26", gpu=ORIN)


def test_build_number_must_match_unless_version_compatible():
    """TensorRT: a plan runs on the exact version that built it (the old check ignored the build
    number and accepted 10.3.0.26 plans on 10.3.0.30)."""
    with pytest.raises(SamExportError, match=r"built with TensorRT 10\.3\.0\.26, this is TensorRT 10\.3\.0\.30: rebuild"):
        check_engine_compatibility(RECORD, name="encoder", tensorrt_version="10.3.0.30", gpu=ORIN)
    record = {**RECORD, "config": {**RECORD["config"], "version_compatible": True}}
    check_engine_compatibility(record, name="encoder", tensorrt_version="10.3.0.30", gpu=ORIN)


def test_other_tensorrt_release_is_refused_with_what_to_do():
    with pytest.raises(SamExportError, match=r"built with TensorRT 10\.3\.0\.26, this is TensorRT 10\.8\.0\.43: rebuild.*samexport engines"):
        check_engine_compatibility(RECORD, name="encoder", tensorrt_version="10.8.0.43", gpu=ORIN)


def test_version_compatible_plans_follow_the_documented_rules():
    """Same major and newer: yes; older: no; a 10.x plan on 11.x: yes (documented); 11 -> 12: no."""
    record = {**RECORD, "config": {**RECORD["config"], "version_compatible": True}}
    check_engine_compatibility(record, name="decoder", tensorrt_version="10.8.0.43", gpu=ORIN)
    check_engine_compatibility(record, name="decoder", tensorrt_version="11.4.0.106", gpu=ORIN)
    with pytest.raises(SamExportError, match="rebuild"):
        check_engine_compatibility(record, name="decoder", tensorrt_version="10.2.0.19", gpu=ORIN)
    eleven = {**record, "tensorrt_version": "11.0.0.10"}
    with pytest.raises(SamExportError, match="rebuild"):
        check_engine_compatibility(eleven, name="decoder", tensorrt_version="10.16.0.72", gpu=ORIN)
    with pytest.raises(SamExportError, match="rebuild"):
        check_engine_compatibility(eleven, name="decoder", tensorrt_version="12.0.0.1", gpu=ORIN)


def test_other_gpu_is_refused_unless_hardware_compatible():
    with pytest.raises(SamExportError, match=r"built for Orin \(compute capability 8\.7\), this GPU is NVIDIA H100.*\(9\.0\)"):
        check_engine_compatibility(RECORD, name="encoder", tensorrt_version="10.3.0.26", gpu=H100)
    ampere_plus = {**RECORD, "config": {**RECORD["config"], "hardware_compatibility": "ampere_plus"}}
    check_engine_compatibility(ampere_plus, name="encoder", tensorrt_version="10.3.0.26", gpu=H100)
    with pytest.raises(SamExportError):
        check_engine_compatibility(ampere_plus, name="encoder", tensorrt_version="10.3.0.26", gpu=GpuInfo(0, "T4", "7.5"))
    same_cc = {**RECORD, "config": {**RECORD["config"], "hardware_compatibility": "same_compute_capability"}}
    check_engine_compatibility(same_cc, name="encoder", tensorrt_version="10.3.0.26", gpu=GpuInfo(0, "Orin NX", "8.7"))
    with pytest.raises(SamExportError):
        check_engine_compatibility(same_cc, name="encoder", tensorrt_version="10.3.0.26", gpu=H100)


def test_hardware_compatible_plugin_plan_is_refused_on_another_gpu():
    """The plugin's PTX is compiled for the building GPU: ampere_plus does not extend to it."""
    ampere_plus = {**RECORD, "config": {**RECORD["config"], "hardware_compatibility": "ampere_plus"}}
    with pytest.raises(SamExportError, match="attention plugin kernel is compiled for that GPU only"):
        check_engine_compatibility(ampere_plus, name="encoder", tensorrt_version="10.3.0.26", gpu=H100, gpu_specific_kernels=True)
    check_engine_compatibility(ampere_plus, name="encoder", tensorrt_version="10.3.0.26", gpu=ORIN, gpu_specific_kernels=True)


def test_plan_built_without_gpu_is_refused():
    record = {**RECORD, "gpu": None, "compute_capability": None}
    with pytest.raises(SamExportError, match="built without a GPU"):
        check_engine_compatibility(record, name="encoder", tensorrt_version="10.3.0.26", gpu=ORIN)


def test_tensorrt_rtx_test_build_is_refused():
    record = {**RECORD, "builder": "tensorrt_rtx", "test_build": True, "tensorrt_module": "tensorrt_rtx_bindings",
              "tensorrt_version": "1.7.1.116"}
    with pytest.raises(SamExportError, match=r"test build .*samexport engines"):
        check_engine_compatibility(record, name="encoder", tensorrt_version="10.3.0.26", gpu=ORIN)


def test_asking_for_tensorrt_without_engines_says_why(tiny_artifact):
    """The tiny artifact has no engines: that is the error, with or without TensorRT and a GPU."""
    with pytest.raises(SamExportError, match=r"has no TensorRT encoder or decoder engine .*samexport engines"):
        SamPredictor(tiny_artifact, backend="tensorrt")
    # auto falls back to ONNX Runtime, for the same reason
    assert "onnxruntime" in SamPredictor(tiny_artifact).backend.name  # alone, or the decoder of openvino+onnxruntime


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_predictor_matches_torch(precision, tiny_checkpoint, tiny_sam, tmp_path):
    """End to end on a GPU: build with engines, run SamPredictor(backend="tensorrt"), compare with
    the torch reference: embedding error, mask IoU, IoU-score error."""
    import numpy as np

    from samexport.pipeline import build
    from samexport.runtime.torch_backend import TorchBackend
    from samexport.testing import make_image, mask_iou

    availability = tensorrt_availability()
    if not availability:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {availability.reason}")
    result = build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / precision, precision=precision,
                   engines="require")
    assert set(result.manifest.engines) == {"encoder", "decoder"}
    trt = SamPredictor(result.artifact_dir, backend="tensorrt")
    reference = SamPredictor(TorchBackend(tiny_sam))
    image = make_image(480, 640, seed=1)
    trt.set_image(image)
    reference.set_image(image)
    emb, emb_ref = trt.embedding, reference.embedding
    tolerance = 1e-3 if precision == "fp32" else 2e-2
    assert np.abs(emb - emb_ref).max() <= tolerance * np.abs(emb_ref).max()
    boxes = np.array([[50, 40, 300, 400], [200, 100, 600, 470]], np.float32)
    masks, scores, _ = trt.predict_batch(boxes=boxes)
    masks_ref, scores_ref, _ = reference.predict_batch(boxes=boxes)
    assert np.abs(scores - scores_ref).max() <= 10 * tolerance
    assert min(mask_iou(a, b) for a, b in zip(masks.reshape(-1, 480, 640), masks_ref.reshape(-1, 480, 640))) >= 0.97
