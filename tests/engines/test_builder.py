"""samexport.engines: build settings, availability report, and TensorRT-family builds.

On a CPU-only machine TensorRT-RTX (``tensorrt-rtx-cu12-libs`` + ``-bindings`` from PyPI) parses
and builds engines, which proves every graph samexport emits (fp32, fp16, int8) is accepted by a
TensorRT builder. GPU tests build with standard TensorRT and run the engines against the torch
model; they are skipped here with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import needs_rtx, run_engine

from samexport import constants as C


def gpu_skip_reason() -> str | None:
    from samexport.engines import tensorrt_availability

    availability = tensorrt_availability("tensorrt")
    return None if availability else availability.reason


# ---------------------------------------------------------------------------------------------
# settings and availability (no TensorRT needed)


def test_build_config_defaults_and_decoder_profile():
    from samexport.engines.builder import BuildConfig

    config = BuildConfig()
    assert config.prompts == (1, 1, 64) and config.points == (1, 2, 16)
    profile = config.decoder_profile()
    assert set(profile) == {spec.name for spec in C.DECODER_INPUTS}
    assert profile[C.POINT_COORDS.name] == ((1, 1, 2), (1, 2, 2), (64, 16, 2))
    assert profile[C.MASK_INPUT.name][2] == (64, 1, 256, 256)
    assert profile[C.IMAGE_EMBEDDINGS.name][0] == profile[C.IMAGE_EMBEDDINGS.name][2] == C.IMAGE_EMBEDDINGS.shape
    custom = BuildConfig(prompts=(1, 4, 8), points=(2, 3, 5)).decoder_profile()
    assert custom[C.HAS_MASK_INPUT.name] == ((1,), (4,), (8,))
    assert custom[C.POINT_LABELS.name] == ((1, 2), (4, 3), (8, 5))
    assert BuildConfig().to_dict()["points"] == (1, 2, 16)


def test_profiles_follow_each_graph_contract():
    """One rule for every family: each dynamic axis takes its range, fixed axes stay fixed. SAM
    2.1's decoder gets its seven inputs, the two high-resolution maps at their one shape; no
    encoder has a dynamic axis, so none gets a profile."""
    from samexport.engines.builder import BuildConfig

    config = BuildConfig(prompts=(1, 4, 8), points=(2, 3, 5))
    assert config.profiles("decoder") == [config.decoder_profile()] == [config.decoder_profile(C.SAM_GRAPHS)]
    assert config.profiles("encoder", C.SAM_GRAPHS) is None and config.profiles("encoder", C.SAM2_GRAPHS) is None
    (sam2,) = config.profiles("decoder", C.SAM2_GRAPHS)
    assert list(sam2) == ["image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                          "mask_input", "has_mask_input"]
    assert sam2["high_res_feats_0"] == ((1, 32, 256, 256),) * 3
    assert sam2["high_res_feats_1"] == ((1, 64, 128, 128),) * 3
    assert sam2["image_embeddings"] == ((1, 256, 64, 64),) * 3
    assert sam2["point_coords"] == ((1, 2, 2), (4, 3, 2), (8, 5, 2))
    assert sam2["point_labels"] == ((1, 2), (4, 3), (8, 5))
    assert sam2["mask_input"] == ((1, 1, 256, 256), (4, 1, 256, 256), (8, 1, 256, 256))
    assert sam2["has_mask_input"] == ((1,), (4,), (8,))


def test_plan_tensors_are_checked_against_the_contract():
    """A plan whose tensors differ from its family's contract is refused, naming both: SAM's
    decoder tensors under SAM 2.1's contract (two maps missing), an output order swapped."""
    from samexport.engine_records import EngineRecord
    from samexport.engines.builder import check_engine_io, expected_io
    from samexport.errors import SamExportError

    def record(inputs, outputs):
        return EngineRecord(plan="decoder.plan", inputs=tuple(inputs), outputs=tuple(outputs))

    sam2 = C.SAM2_GRAPHS
    assert expected_io((C.HIGH_RES_FEATS_0, C.POINT_COORDS)) == [
        {"name": "high_res_feats_0", "dtype": "float", "shape": [1, 32, 256, 256]},
        {"name": "point_coords", "dtype": "float", "shape": [-1, -1, 2]},
    ]
    good = record(expected_io(sam2.decoder_inputs), expected_io(sam2.decoder_outputs))
    check_engine_io(good, "decoder", sam2)
    with pytest.raises(SamExportError, match=r"decoder plan's inputs are not the sam2 graph contract's.*high_res_feats_0"):
        check_engine_io(record(expected_io(C.DECODER_INPUTS), expected_io(sam2.decoder_outputs)), "decoder", sam2)
    swapped = expected_io(sam2.decoder_outputs)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(SamExportError, match="decoder plan's outputs are not the sam2"):
        check_engine_io(record(expected_io(sam2.decoder_inputs), swapped), "decoder", sam2)
    with pytest.raises(SamExportError, match="encoder plan's outputs are not the sam graph contract's"):
        check_engine_io(record(expected_io(sam2.encoder_inputs), expected_io(sam2.encoder_outputs)), "encoder", C.SAM_GRAPHS)


@pytest.mark.parametrize("field, value", [("prompts", (2, 1, 4)), ("points", (0, 1, 2)), ("hardware_compatibility", "x")])
def test_build_config_rejects_bad_values(field, value):
    from samexport.engines.builder import BuildConfig
    from samexport.errors import SamExportError

    with pytest.raises(SamExportError):
        BuildConfig(**{field: value})


@pytest.mark.parametrize("machine", ["no tensorrt", "no gpu", "ready"])
def test_availability_says_why(monkeypatch, machine):
    """Each branch of ``tensorrt_availability``, on any machine: TensorRT missing, TensorRT without
    a GPU, and both present (the module and the driver replaced by stand-ins)."""
    import types

    from samexport import engines

    orin = engines.GpuInfo(0, "Orin", "8.7")
    if machine == "no tensorrt":
        monkeypatch.setitem(engines._MODULES, "tensorrt", ("samexport_no_such_module",))
    else:
        monkeypatch.setattr(engines, "load_tensorrt", lambda flavour: types.SimpleNamespace(__version__="10.3.0.30"))

    def no_gpu():
        raise engines.NoGpuError("no NVIDIA driver (libcuda.so.1 not found)")

    monkeypatch.setattr(engines, "cuda_devices", (lambda: [orin]) if machine == "ready" else no_gpu)
    availability = engines.tensorrt_availability("tensorrt")
    if machine == "ready":
        assert availability and availability.gpu == orin and availability.reason == ""
        assert availability.tensorrt_version == "10.3.0.30"
    elif machine == "no gpu":
        assert not availability
        assert availability.reason == "tensorrt 10.3.0.30 is installed but no NVIDIA driver (libcuda.so.1 not found)"
    else:
        assert not availability and "not importable" in availability.reason and "samexport[tensorrt]" in availability.reason


def test_missing_tensorrt_names_the_extra(monkeypatch):
    from samexport import engines
    from samexport.errors import MissingExtraError

    monkeypatch.setitem(engines._MODULES, "tensorrt", ("samexport_no_such_module",))
    with pytest.raises(MissingExtraError, match=r"samexport\[tensorrt\]"):
        engines.load_tensorrt("tensorrt")
    assert "samexport[tensorrt]" in engines.tensorrt_availability("tensorrt").reason


# ---------------------------------------------------------------------------------------------
# TensorRT-RTX builds of the tiny graphs (fp32, fp16, int8)


@pytest.fixture(scope="session")
def tiny_graphs(tiny_onnx, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """precision -> (encoder.onnx, decoder.onnx); int8 quantizes the encoder (Q/DQ on fp16), decoder stays fp16."""
    from support import write_calibration_folder

    from samexport.precision.fp16 import convert_to_fp16
    from samexport.precision.int8 import quantize_encoder_int8
    from samexport.precision.recipes import recipe_for

    folder = tmp_path_factory.mktemp("engine-graphs")
    encoder, decoder = tiny_onnx
    fp16 = (convert_to_fp16(encoder, folder / "encoder_fp16.onnx"), convert_to_fp16(decoder, folder / "decoder_fp16.onnx"))
    calib = write_calibration_folder(folder / "calib", ("coffee", "chelsea"))
    # The graph `samexport build --int8` writes for TensorRT: Q/DQ on the FP16 graph.
    int8 = quantize_encoder_int8(encoder, folder / "encoder_int8.onnx", calib, recipe=recipe_for("tensorrt"))
    return {"fp32": (encoder, decoder), "fp16": fp16, "int8": (int8, fp16[1])}


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_builds_tiny_engines(tiny_graphs, precision, tmp_path):
    from samexport.engines.builder import BuildConfig, build_engine

    config = BuildConfig()
    encoder, decoder = tiny_graphs[precision]
    info = build_engine(encoder, tmp_path / "encoder.plan", config, flavour="tensorrt_rtx")
    assert info.inputs == ({"name": C.IMAGE.name, "dtype": "float", "shape": list(C.IMAGE.shape)},)
    assert [o["name"] for o in info.outputs] == [C.IMAGE_EMBEDDINGS.name]
    assert info.tensorrt_version and info.strongly_typed
    assert (tmp_path / "encoder.plan").stat().st_size == info.plan_bytes > 0

    info = build_engine(decoder, tmp_path / "decoder.plan", config, profiles=[config.decoder_profile()], flavour="tensorrt_rtx")
    shapes = {i["name"]: i["shape"] for i in info.inputs}
    assert shapes[C.POINT_COORDS.name] == [-1, -1, 2] and shapes[C.HAS_MASK_INPUT.name] == [-1]
    assert info.profiles[0][C.POINT_COORDS.name] == ((1, 1, 2), (1, 2, 2), (64, 16, 2))
    assert info.max_prompts == 64 and info.to_dict()["profiles"][0][C.POINT_COORDS.name] == [[1, 1, 2], [1, 2, 2], [64, 16, 2]]
    assert [o["name"] for o in info.outputs] == [s.name for s in C.DECODER_OUTPUTS]
    assert all(o["dtype"] == "float" for o in info.outputs)  # fp32 API whatever the precision


@needs_rtx
def test_rtx_plan_is_plain(tiny_onnx, tmp_path):
    """The plan is exactly TensorRT's serialized engine: it opens with TensorRT-RTX's own magic
    (deserializing needs a GPU, see the gpu tests), no samexport header in front."""
    from samexport.engines.builder import BuildConfig, build_engine

    plan = tmp_path / "encoder.plan"
    info = build_engine(tiny_onnx[0], plan, BuildConfig(), flavour="tensorrt_rtx")
    data = plan.read_bytes()
    assert data[:4] == b"vtrt" and len(data) == info.plan_bytes


@needs_rtx
def test_rtx_dynamic_decoder_needs_a_profile(tiny_onnx, tmp_path):
    from samexport.engines.builder import BuildConfig, build_engine
    from samexport.errors import SamExportError

    with pytest.raises(SamExportError, match="dynamic"):
        build_engine(tiny_onnx[1], tmp_path / "d.plan", BuildConfig(), flavour="tensorrt_rtx")
    partial = {C.POINT_COORDS.name: BuildConfig().decoder_profile()[C.POINT_COORDS.name]}
    with pytest.raises(SamExportError, match="no shapes"):
        build_engine(tiny_onnx[1], tmp_path / "d.plan", BuildConfig(), profiles=[partial], flavour="tensorrt_rtx")


@needs_rtx
def test_rtx_build_failure_carries_tensorrt_errors(tiny_onnx, tmp_path):
    from samexport.engines.builder import BuildConfig, build_engine
    from samexport.errors import SamExportError

    config = BuildConfig(workspace_bytes=16 << 20, optimization_level=1)  # decoder at B=64 needs more
    with pytest.raises(SamExportError, match="(?s)OutOfMemory.*workspace_bytes=16777216 is too small"):
        build_engine(tiny_onnx[1], tmp_path / "d.plan", config, profiles=[config.decoder_profile()], flavour="tensorrt_rtx")
    assert not (tmp_path / "d.plan").exists()


@needs_rtx
def test_rtx_parse_errors_are_reported(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from samexport.engines.builder import BuildConfig, build_engine
    from samexport.errors import SamExportError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery")], "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(SamExportError, match="(?s)could not parse.*NoSuchOp"):
        build_engine(path, tmp_path / "bad.plan", BuildConfig(), flavour="tensorrt_rtx")
    assert not (tmp_path / "bad.plan").exists()


# ---------------------------------------------------------------------------------------------
# GPU: standard TensorRT, engines run and compared with torch


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_engines_match_torch(tiny_sam, tiny_graphs, precision, tmp_path):
    """Embedding error, mask IoU and IoU-score error of TensorRT engines vs the torch model."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import torch
    from support import HELD_OUT_PHOTO, cosine, decoder_feed, mask_iou, sample_photo

    from samexport.engines.builder import BuildConfig, build_engine
    from samexport.export.wrappers import DecoderGraph, EncoderGraph
    from samexport.transforms import preprocess

    config = BuildConfig()
    encoder, decoder = tiny_graphs[precision]
    build_engine(encoder, tmp_path / "e.plan", config)
    info = build_engine(decoder, tmp_path / "d.plan", config, profiles=[config.decoder_profile()])
    assert info.gpu and info.compute_capability

    image = preprocess(sample_photo(HELD_OUT_PHOTO))
    with torch.no_grad():
        reference = EncoderGraph(tiny_sam)(torch.from_numpy(image)).numpy()
    embedding = run_engine(tmp_path / "e.plan", {C.IMAGE.name: image})[C.IMAGE_EMBEDDINGS.name]
    tolerance = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.995}[precision]
    assert cosine(reference, embedding) >= tolerance

    feed = decoder_feed(reference)
    with torch.no_grad():
        masks_ref, iou_ref = (t.numpy() for t in DecoderGraph(tiny_sam)(*(torch.from_numpy(feed[s.name]) for s in C.DECODER_INPUTS)))
    out = run_engine(tmp_path / "d.plan", feed)
    assert mask_iou(masks_ref, out[C.LOW_RES_MASKS.name]).min() >= 0.98
    assert np.abs(iou_ref - out[C.IOU_PREDICTIONS.name]).max() <= 0.01
