"""``--backend openvino``: the artifact's ONNX graphs on OpenVINO, against the PyTorch weights and
against ONNX Runtime; the explicit inference precision (f32 / bf16 / auto and the device probe);
the compile cache keyed by the graphs' sha256; the backend spec's options."""

from __future__ import annotations

import numpy as np
import pytest
from support import SAMPLE_PHOTOS

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.integrity import FileRecord

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samexport[openvino]')")

from samexport.runtime import openvino_backend as ovb


def cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in ovb.device_capabilities(openvino.Core(), "CPU")


needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU reports no BF16 (no AVX512_BF16 / AMX): OpenVINO runs f32 here")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Compiled models go to a cache folder of this test session, not the user's."""
    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path_factory.getbasetemp() / "samexport-cache"))


@pytest.fixture(scope="module")
def photo() -> dict[str, np.ndarray]:
    from support import HELD_OUT_PHOTO, sample_photo

    return {HELD_OUT_PHOTO: sample_photo(HELD_OUT_PHOTO)}


def parity(artifact, checkpoint, spec, images):
    from samexport.parity import parity_for_artifact

    report, _ = parity_for_artifact(artifact, checkpoint, images=images, backend=spec)
    return report


# -- the backend against ONNX Runtime and PyTorch ------------------------------------------------


@pytest.mark.slow
def test_f32_equals_onnxruntime_and_passes_fp32_parity(tiny_artifact, tiny_checkpoint, photo):
    from samexport.runtime.backends import open_backend
    from samexport.transforms import preprocess

    ov, ort = open_backend(tiny_artifact, "openvino"), open_backend(tiny_artifact, "onnxruntime-cpu")
    assert (ov.name, ov.inference_precision) == ("openvino-cpu-f32", "f32")  # the default is f32
    image = preprocess(next(iter(photo.values())))
    embedding = ort.encode(image)
    np.testing.assert_allclose(ov.encode(image), embedding, atol=1e-4 * np.abs(embedding).max())
    coords = np.array([[[100.0, 200.0], [500, 600]], [[300, 300], [0, 0]]], np.float32)
    labels = np.array([[2, 3], [1, -1]], np.float32)
    mask, has_mask = np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)
    for ours, theirs in zip(ov.decode(embedding, coords, labels, mask, has_mask),
                            ort.decode(embedding, coords, labels, mask, has_mask)):
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())
    report = parity(tiny_artifact, tiny_checkpoint, "openvino:precision=f32", photo)
    assert report.precision == "fp32" and report.candidate == "openvino-cpu-f32"
    assert report, report.failures


def test_decoder_halves_give_the_decoder(tiny_artifact):
    from samexport.runtime.backends import open_backend

    ov = open_backend(tiny_artifact, "openvino")
    assert ov.has_decoder_halves and ov.shares_mask_input
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((1, 256, 64, 64), dtype=np.float32)
    coords = rng.uniform(0, 1024, (5, 1, 2)).astype(np.float32)
    labels = np.ones((5, 1), np.float32)
    mask, has_mask = np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)
    masks, iou = ov.decode(embedding, coords, labels, mask, has_mask)
    scores, mask_tokens, image_tokens = ov.decode_scores(embedding, coords, labels, mask, has_mask)
    np.testing.assert_allclose(scores, iou, atol=1e-5)
    picked = np.array([4, 1])
    np.testing.assert_allclose(ov.decode_masks(mask_tokens[picked], image_tokens[picked]), masks[picked],
                               atol=1e-4 * np.abs(masks).max())


@pytest.mark.slow
@needs_bf16
def test_bf16_is_held_to_the_bf16_row(tiny_artifact, tiny_checkpoint, photo):
    from samexport.parity import get_tolerances

    f32 = parity(tiny_artifact, tiny_checkpoint, "openvino:precision=f32", photo)
    bf16 = parity(tiny_artifact, tiny_checkpoint, "openvino:precision=bf16", photo)
    assert bf16.precision == "bf16" and bf16.candidate == "openvino-cpu-bf16"
    assert bf16, bf16.failures
    # bf16 really ran: far from f32's summation-order differences, and outside the fp32 row.
    assert bf16.summary["embedding_rel_max_abs"] > 100 * f32.summary["embedding_rel_max_abs"]
    assert bf16.summary["embedding_rel_max_abs"] > get_tolerances("fp32").embedding_rel_max_abs


@pytest.mark.parametrize(("capabilities", "expected"), [(("FP32", "INT8"), "f32"), (("BF16", "FP32", "INT8"), "bf16"),
                                                        (("FP32", "FP16"), "f16")])
def test_auto_precision_follows_the_device_probe(tiny_artifact, monkeypatch, capabilities, expected):
    """``precision=auto`` asks OPTIMIZATION_CAPABILITIES: forced here both ways."""
    from samexport.runtime.backends import open_backend

    monkeypatch.setattr(ovb, "device_capabilities", lambda core, device: capabilities)
    if expected == "f16":  # the CPU plugin may not take an f16 hint; the choice is what counts
        assert ovb.resolve_precision("auto", capabilities, "GPU") == "f16"
        return
    backend = open_backend(tiny_artifact, "openvino:precision=auto")
    assert backend.inference_precision == expected and backend.name == f"openvino-cpu-{expected}"


def test_no_bf16_on_the_device(tiny_artifact, monkeypatch):
    """Without BF16, ``auto`` runs f32 (the same numbers as precision=f32), and an explicit bf16 is
    an error naming the way out."""
    from samexport.runtime.backends import open_backend

    monkeypatch.setattr(ovb, "device_capabilities", lambda core, device: ("FP32", "INT8"))
    image = np.random.default_rng(1).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    auto = open_backend(tiny_artifact, "openvino:precision=auto").encode(image)
    np.testing.assert_array_equal(auto, open_backend(tiny_artifact, "openvino:precision=f32").encode(image))
    with pytest.raises(SamExportError, match="cannot compute in bf16.*precision=f32"):
        open_backend(tiny_artifact, "openvino:precision=bf16")


# -- parity against the PyTorch weights, per artifact precision and inference precision ---------


@pytest.fixture(scope="module")
def built(built_artifact, request):
    """(variant, precision) -> (artifact dir, checkpoint): the session's shared artifacts (conftest's
    ``built_artifact``), int8 calibrated on the six sample photos."""

    def get(variant: str, precision: str):
        """``precision``: fp32, fp16, or int8-<target> (the ``--int8-for`` recipe)."""
        base, _, target = precision.partition("-")
        extra = dict(int8_target=target, calibration=SAMPLE_PHOTOS) if base == "int8" else {}
        return built_artifact(variant, base, **extra), request.getfixturevalue(f"{variant}_checkpoint")

    return get


PARITY_CASES = [
    *(pytest.param(variant, precision, inference, id=f"{variant}-{precision}-{inference}",
                   marks=[needs_bf16] if inference == "bf16" else [])
      for variant in ("tiny", "mobile_sam")
      for precision, inference in (("fp32", "f32"), ("fp32", "bf16"), ("fp16", "f32"), ("int8-onnxruntime", "f32"),
                                   ("int8-tensorrt", "f32"), ("int8-openvino", "f32"))),
    pytest.param("tiny", "int8-onnxruntime", "bf16", id="tiny-int8-onnxruntime-bf16", marks=[needs_bf16]),
    pytest.param("vit_b", "fp32", "f32", id="vit_b-fp32-f32"),
    pytest.param("vit_b", "fp32", "bf16", id="vit_b-fp32-bf16", marks=[needs_bf16]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "precision", "inference"), PARITY_CASES)
def test_parity_against_torch(built, photo, variant, precision, inference):
    """OpenVINO on each artifact precision, in f32 and bf16, passes the parity row that applies
    (the artifact's, or bf16's for an fp32 / fp16 graph run in bf16) on the full prompt suite."""
    from samexport.parity import tolerance_key

    artifact, checkpoint = built(variant, precision)
    report = parity(artifact, checkpoint, f"openvino:precision={inference}", photo)
    assert report.candidate == f"openvino-cpu-{inference}"
    assert report.precision == tolerance_key(precision.split("-")[0], inference)
    assert report, (report.summary, report.failures)


def test_mask_generator_on_openvino_equals_onnxruntime(tiny_artifact):
    """Both decoder halves on OpenVINO (f32): the same masks as on ONNX Runtime."""
    from support.official import assert_same_masks

    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import make_image

    scene = make_image(240, 360, seed=3)
    params = dict(points_per_side=4, pred_iou_thresh=0.02, stability_score_offset=0.05,
                  stability_score_thresh=0.09, box_nms_thresh=1.0)
    theirs = AutomaticMaskGenerator(SamPredictor(tiny_artifact, backend="onnxruntime-cpu"), **params).generate(scene)
    ov = SamPredictor(tiny_artifact, backend="openvino")
    ours = AutomaticMaskGenerator(ov, **params).generate(scene)
    assert ov.backend.name == "openvino-cpu-f32" and ov.backend._halves is not None  # the halves ran
    assert 10 <= len(theirs)
    assert_same_masks(ours, theirs)


# -- the compile cache --------------------------------------------------------------------------


def test_compiled_models_are_cached_per_graph_hash(tiny_artifact, tmp_path, monkeypatch):
    from samexport.artifacts import read_manifest
    from samexport.runtime.backends import open_backend

    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path))
    backend = open_backend(tiny_artifact, "openvino")
    backend.decode_masks(np.zeros((1, 4, 256), np.float32), np.zeros((1, 4096, 256), np.float32))
    files = read_manifest(tiny_artifact).files
    keys = {ovb.graph_cache_key(tiny_artifact / name, files) for name in C.GRAPH_FILES}
    root = tmp_path / "openvino"
    assert {p.name for p in root.iterdir()} == keys and len(keys) == len(C.GRAPH_FILES)
    assert all(any(f.suffix == ".blob" for f in (root / key).iterdir()) for key in keys)
    blobs = sorted(root.rglob("*.blob"))
    open_backend(tiny_artifact, "openvino")
    assert sorted(root.rglob("*.blob")) == blobs  # the second start reads them, adds none
    # A changed graph (another sha256) gets another folder; so does a graph without a record.
    changed = {**files, C.ENCODER_ONNX: FileRecord(files[C.ENCODER_ONNX].bytes, "0" * 64)}
    assert ovb.graph_cache_key(tiny_artifact / C.ENCODER_ONNX, changed) not in keys
    assert ovb.graph_cache_key(tiny_artifact / C.ENCODER_ONNX, {}) == ovb.graph_cache_key(
        tiny_artifact / C.ENCODER_ONNX, {}) != ovb.graph_cache_key(tiny_artifact / C.DECODER_ONNX, {})


# -- the spec and its errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [("openvino:device", "key=value"), ("openvino:colour=red", "no option 'colour'.*device, precision"),
     ("openvino:precision=fp64", "precision='fp64' is not one of f32, bf16, f16, auto"),
     ("openvino:device=CPU,device=GPU", "each key once"), ("onnxruntime-cpu:device=GPU", "no option 'device'"),
     ("openvino:device=XPU", "no device 'XPU'.*available: CPU")],
)
def test_bad_specs(tiny_artifact, spec, message):
    from samexport.runtime.backends import open_backend

    with pytest.raises(SamExportError, match=message):
        open_backend(tiny_artifact, spec)


def test_auto_device_runs(tiny_artifact):
    from samexport.runtime.backends import open_backend

    backend = open_backend(tiny_artifact, "openvino:device=AUTO,precision=f32")
    assert backend.name == "openvino-auto-f32"
    image = np.random.default_rng(2).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    np.testing.assert_allclose(backend.encode(image), open_backend(tiny_artifact, "openvino").encode(image), atol=1e-5)


def test_verify_against_stored_references(tiny_artifact):
    """``samexport verify --backend openvino:...``: the stored PyTorch references, at the row the
    backend's inference precision calls for."""
    from samexport.parity.verify import verify_artifact_backend

    inference = "bf16" if cpu_has_bf16() else "f32"
    report = verify_artifact_backend(tiny_artifact, f"openvino:precision={inference}")
    assert report.candidate == f"openvino-cpu-{inference}"
    assert report.precision == {"bf16": "bf16", "f32": "fp32"}[inference]
    assert report, report.failures
