"""``backend="auto"`` on a CPU with OpenVINO (the encoder on OpenVINO f32, the decoder on ONNX
Runtime, :class:`~samexport.runtime.split_backend.SplitBackend`), what ``info`` says it runs, and
the ``openvino`` spec at every place a backend is chosen (predict_batch, the CLI's predict /
segment-all / embed, the dataset jobs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samexport.errors import SamExportError

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'samexport[openvino]')")

from samexport.runtime import backends
from samexport.runtime import openvino_backend as ovb
from samexport.runtime.split_backend import SplitBackend

SPLIT = "openvino-cpu-f32+onnxruntime-cpu"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Compiled models go to a cache folder of this test session, not the user's."""
    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path_factory.getbasetemp() / "samexport-cache"))


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """As on a machine whose ONNX Runtime has no CUDA provider, whatever this one has."""
    monkeypatch.setattr(backends, "onnxruntime_providers", lambda device="auto": ["CPUExecutionProvider"])


def _image(seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 1024, 1024), dtype=np.float32)


def _prompts():
    coords = np.array([[[100.0, 200.0], [500, 600]], [[300, 300], [0, 0]]], np.float32)
    labels = np.array([[2, 3], [1, -1]], np.float32)
    return coords, labels, np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)


@pytest.mark.parametrize("capabilities", [("FP32", "INT8"), ("BF16", "FP32", "INT8")], ids=["no-bf16", "bf16"])
def test_auto_runs_the_encoder_on_openvino_f32_and_the_decoder_on_onnxruntime(tiny_artifact, monkeypatch, capabilities):
    """With or without bf16 on the CPU (probe forced), auto computes in f32: the encoder's
    embedding is ONNX Runtime's within 1e-4 of scale, the decoder is ONNX Runtime's own session,
    so no stage changes precision and the decoder (slower on OpenVINO f32) stays where it was."""
    monkeypatch.setattr(ovb, "device_capabilities", lambda core, device: capabilities)
    auto, ort = backends.open_backend(tiny_artifact, "auto"), backends.open_backend(tiny_artifact, "onnxruntime-cpu")
    assert isinstance(auto, SplitBackend) and auto.name == SPLIT and auto.inference_precision == "f32"
    assert auto.graphs == {"encoder": "openvino-cpu-f32", "decoder": "onnxruntime-cpu"}
    assert isinstance(auto.decoder_backend, backends.OnnxRuntimeBackend) and auto.decoder_backend.encoder is None
    assert auto.encoder_backend.decoder is None  # each graph compiled once, on one runtime
    embedding = ort.encode(_image())
    got = auto.encode(_image())
    np.testing.assert_allclose(got, embedding, atol=1e-4 * np.abs(embedding).max())
    for ours, theirs in zip(auto.decode(embedding, *_prompts()), ort.decode(embedding, *_prompts())):
        np.testing.assert_array_equal(ours, theirs)
    scores = auto.decode_scores(embedding, *_prompts())
    for ours, theirs in zip(scores, ort.decode_scores(embedding, *_prompts())):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(auto.decode_masks(*scores[1:]), ort.decode_masks(*scores[1:]))
    # The GraphRunner seam (what SAM 2's predictor calls) goes to the same two sides.
    assert auto.contract is ort.contract
    np.testing.assert_allclose(auto.run_encoder(_image())[0], got, atol=1e-6 * np.abs(got).max())
    for ours, theirs in zip(auto.run_decoder((embedding,), *_prompts()), ort.run_decoder((embedding,), *_prompts())):
        np.testing.assert_array_equal(ours, theirs)
    assert backends.backend_lock(auto) is None  # decoder calls may overlap; the encoder locks itself
    with pytest.raises(SamExportError, match="without the decoder"):
        auto.encoder_backend.decode(embedding, *_prompts())
    with pytest.raises(SamExportError, match="without the encoder"):
        auto.decoder_backend.encode(_image())


def test_auto_is_onnxruntime_without_openvino_or_where_it_cannot_compile(tiny_artifact, monkeypatch):
    monkeypatch.setattr(backends, "cpu_auto_uses_openvino", lambda: False)
    backend = backends.open_backend(tiny_artifact, "auto")
    assert isinstance(backend, backends.OnnxRuntimeBackend) and backend.name == "onnxruntime-cpu"
    assert backends.describe_auto(tiny_artifact) == "onnxruntime-cpu"
    monkeypatch.undo()
    monkeypatch.setattr(backends, "onnxruntime_providers", lambda device="auto": ["CPUExecutionProvider"])

    def refuse(self, path):
        raise SamExportError(f"OpenVINO could not compile {path} for CPU: unsupported op")

    monkeypatch.setattr(ovb.OpenVINOBackend, "_compile", refuse)
    backend = backends.open_backend(tiny_artifact, "auto")
    assert isinstance(backend, backends.OnnxRuntimeBackend) and backend.encoder is not None


def test_auto_keeps_onnxruntime_cuda_on_a_gpu_machine(tiny_artifact, monkeypatch):
    monkeypatch.setattr(backends, "onnxruntime_providers",
                        lambda device="auto": ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not backends.cpu_auto_uses_openvino()
    assert backends.describe_auto(tiny_artifact) == "onnxruntime-cuda"


def test_info_says_what_auto_runs(tiny_artifact):
    from typer.testing import CliRunner

    from samexport.cli import app

    result = CliRunner().invoke(app, ["info", str(tiny_artifact)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["variant"] == "tiny" and shown["auto_backend_here"] == SPLIT
    assert backends.open_backend(tiny_artifact, "auto").name == shown["auto_backend_here"]


# -- the openvino spec wherever a backend is chosen ----------------------------------------------


def test_predict_batch_on_openvino_equals_onnxruntime(tiny_artifact):
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import make_image

    image = make_image(200, 300, seed=1)
    boxes = np.array([[20.0, 30.0, 200.0, 180.0], [5, 5, 100, 90], [150, 20, 290, 190]])
    results = []
    for spec in ("openvino:precision=f32", "onnxruntime-cpu"):
        predictor = SamPredictor(tiny_artifact, backend=spec)
        predictor.set_image(image)
        results.append(predictor.predict_batch(boxes=boxes, return_logits=True))
    (logits, scores, low), (logits_o, scores_o, low_o) = results
    np.testing.assert_allclose(scores, scores_o, atol=1e-4)
    np.testing.assert_allclose(logits, logits_o, atol=1e-3 * np.abs(logits_o).max())
    np.testing.assert_allclose(low, low_o, atol=1e-3 * np.abs(low_o).max())


def test_cli_commands_take_the_openvino_spec(tiny_artifact, tmp_path):
    """predict, segment-all (one image) and embed (a dataset job, local worker) with
    ``--backend openvino:precision=f32`` give ONNX Runtime's result and record the backend."""
    from PIL import Image
    from typer.testing import CliRunner

    from samexport.cli import app
    from samexport.datasets import read_rows
    from samexport.datasets.restore import embedding_from_row
    from samexport.testing import make_image

    image = tmp_path / "scene.png"
    Image.fromarray(make_image(240, 320, seed=4)).save(image)
    outputs = {}
    for spec in ("openvino:precision=f32", "onnxruntime-cpu"):
        tag = spec.split(":")[0]
        mask = tmp_path / f"mask-{tag}.png"
        result = CliRunner().invoke(app, ["predict", str(tiny_artifact), str(image), "--point", "100,80",
                                          "--output", str(mask), "--backend", spec])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(app, ["embed", str(tiny_artifact), str(image), "--output", str(tmp_path / f"e-{tag}"),
                                          "--threads", "1", "--no-progress", "--backend", spec])
        assert result.exit_code == 0, result.output
        outputs[tag] = np.array(Image.open(mask)), embedding_from_row(read_rows(tmp_path / f"e-{tag}").to_pylist()[0])
    assert (outputs["openvino"][0] != outputs["onnxruntime-cpu"][0]).mean() < 1e-3
    np.testing.assert_allclose(outputs["openvino"][1], outputs["onnxruntime-cpu"][1], atol=2e-3)  # float16 rows
    shown = {}
    for spec in ("openvino", "onnxruntime-cpu"):
        output = tmp_path / f"masks-{spec}.json"
        result = CliRunner().invoke(app, ["segment-all", str(tiny_artifact), str(image), "--output", str(output),
                                          "--backend", spec, "--points-per-side", "2", "--pred-iou-thresh", "0",
                                          "--stability-score-thresh", "0", "--no-progress"])
        assert result.exit_code == 0, result.output
        shown[spec] = json.loads(output.read_text())["annotations"]
    assert len(shown["openvino"]) == len(shown["onnxruntime-cpu"]) >= 1
    for ours, theirs in zip(shown["openvino"], shown["onnxruntime-cpu"]):
        np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=2)
        assert abs(ours["area"] - theirs["area"]) <= 0.001 * theirs["area"] + 2
        assert ours["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-4)
