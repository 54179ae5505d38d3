"""Benchmarks: timing arithmetic, compute counts, target evaluation, and a --runs 1 run on tiny."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from samexport.bench import BenchConfig, Timing, measure
from samexport.bench.flops import encoder_gflop, encoder_macs
from samexport.bench.inputs import decoder_prompts
from samexport.bench.report import evaluate_targets, peer_ratios, stage_order, to_markdown
from samexport.cli import app
from samexport.errors import SamExportError
from samexport.testing import make_image
from samexport.variants import get_variant

runner = CliRunner()

BACKEND_STAGES = {
    "encoder", "decoder_point", "decoder_box_point", "decoder_10_points", "decoder_mask_input",
    "decoder_boxes_1", "decoder_boxes_4", "predict_point", "predict_point_single",
}


def test_timing_from_samples():
    timing = Timing.from_samples([0.003, 0.001, 0.002, 0.010], items=4)
    assert (timing.median_ms, timing.min_ms, timing.max_ms, timing.runs) == pytest.approx((2.5, 1, 10, 4))
    assert timing.per_item_ms == pytest.approx(0.625)
    assert timing.to_dict() == {"median_ms": 2.5, "min_ms": 1.0, "max_ms": 10.0, "runs": 4,
                                "items": 4, "per_item_ms": 0.625}
    assert "items" not in Timing.from_samples([0.001]).to_dict()
    with pytest.raises(ValueError):
        Timing.from_samples([])


def test_measure_warms_up_then_times():
    calls = []
    timing = measure(lambda: calls.append(1), runs=3, warmup=2)
    assert len(calls) == 5 and timing.runs == 3
    with pytest.raises(ValueError, match="runs"):
        measure(lambda: None, runs=0)


@pytest.mark.parametrize(("variant", "gmac"), [("vit_b", 486), ("vit_l", 1493), ("vit_h", 2981)])
def test_encoder_macs_match_published_counts(variant, gmac):
    assert encoder_macs(get_variant(variant)) / 1e9 == pytest.approx(gmac, rel=2e-3)
    assert encoder_gflop(get_variant(variant)) == pytest.approx(2 * gmac, rel=2e-3)


@pytest.mark.parametrize(("variant", "gmac"), [("sam2.1_hiera_tiny", 146.2), ("sam2.1_hiera_large", 911.4)])
def test_encoder_macs_of_sam2_are_hieras(variant, gmac):
    """The benchmark's count for a SAM 2.1 model is Hiera's (checked against torch's own count in
    tests/models/test_sam2.py), reached through the same call as SAM's."""
    assert encoder_macs(variant) / 1e9 == pytest.approx(gmac, rel=1e-3)
    assert encoder_gflop(variant) == pytest.approx(2 * gmac, rel=1e-3)


def test_decoder_prompts_shapes():
    prompts = decoder_prompts((300, 450), (1, 16, 64))
    assert prompts["decoder_10_points"]["point_coords"].shape == (1, 10, 2)
    assert prompts["decoder_boxes_64"]["boxes"].shape == (64, 4)
    boxes = prompts["decoder_boxes_16"]["boxes"]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 450).all() and (boxes[:, 3] <= 300).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"artifact_dirs": ()}, "at least one artifact"),
        ({"backends": ("tensorrt", "cuda")}, "unknown backend 'cuda'"),
        ({"runs": 0}, "runs must be >= 1"),
        ({"batch_sizes": (16, 64)}, "include 1"),
    ],
)
def test_bench_config_rejects(kwargs, message, tmp_path):
    with pytest.raises(SamExportError, match=message):
        BenchConfig(**{"artifact_dirs": (tmp_path,), **kwargs})


def _results(fp32_encoder_ms=1000.0, int8_encoder_ms=None, fraction=0.7):
    def backend(label, precision, encoder_ms):
        stages = {
            "encoder": {"median_ms": encoder_ms, "min_ms": encoder_ms, "max_ms": encoder_ms, "runs": 1},
            "decoder_boxes_1": {"median_ms": 40.0, "min_ms": 40.0, "max_ms": 40.0, "runs": 1},
            "decoder_boxes_64": {"median_ms": 1280.0, "min_ms": 1280.0, "max_ms": 1280.0, "runs": 1,
                                 "items": 64, "per_item_ms": 20.0},
            "predict_point": {"median_ms": 30.0, "min_ms": 30.0, "max_ms": 30.0, "runs": 1},
            "predict_point_single": {"median_ms": 25.0, "min_ms": 25.0, "max_ms": 25.0, "runs": 1},
        }
        return {"label": label, "kind": "onnxruntime-cpu", "precision": precision, "stages": stages,
                "encoder": {"gflop": 972.0, "gflops": 150.0, "fraction_of_peak": fraction}}

    backends = [backend("onnxruntime-cpu fp32", "fp32", fp32_encoder_ms)]
    if int8_encoder_ms:
        backends.append(backend("onnxruntime-cpu int8", "int8", int8_encoder_ms))
    backends.append({"label": "tensorrt", "kind": "tensorrt", "skipped": "no GPU"})
    results = {
        "backends": backends,
        "peer_baseline": {
            "image_size": [1500, 2250], "recipe": "official", "weights": "random",
            "stages": {
                "official_decoder_4_masks": {"median_ms": 100.0, "min_ms": 90.0, "max_ms": 110.0, "runs": 1},
                "official_decoder_best_mask": {"median_ms": 75.0, "min_ms": 70.0, "max_ms": 80.0, "runs": 1},
            },
        },
    }
    results["peer_baseline"]["ratios"] = peer_ratios(results)
    return results


def test_targets_by_hand():
    results = _results()
    assert results["peer_baseline"]["ratios"]["onnxruntime-cpu fp32"] == {
        "multimask_vs_official_4_masks": 0.3, "single_vs_official_best_mask": pytest.approx(0.333),
    }
    peer, batch, encoder, int8 = evaluate_targets(results)
    assert (peer["value"], peer["met"]) == (0.3, True) and "1500x2250" in peer["name"]
    assert (batch["value"], batch["met"]) == (2.0, True)
    assert (encoder["value"], encoder["met"]) == (0.7, True)
    assert int8["met"] is None and "int8" in int8["not_measured"]

    _, _, encoder, int8 = evaluate_targets(_results(int8_encoder_ms=800.0, fraction=0.5))
    assert encoder["met"] is False
    assert (int8["value"], int8["met"]) == (1.25, False)


def test_stage_order_sorts_batches_numerically():
    keys = ["predict_point", "decoder_boxes_64", "encoder", "decoder_boxes_16", "decoder_boxes_1"]
    assert stage_order(keys) == ["encoder", "decoder_boxes_1", "decoder_boxes_16", "decoder_boxes_64",
                                 "predict_point"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_images")
    Image.fromarray(make_image(90, 120, seed=4)).save(folder / "a.png")
    Image.fromarray(make_image(120, 80, seed=5)).save(folder / "b.png")
    return folder


@pytest.mark.slow
def test_cli_bench_on_tiny(tiny_artifact, image_dir, tmp_path):
    """--runs 1 on the tiny variant: well-formed JSON with every stage key, Markdown, PNG."""
    out, md, png = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "bench.png"
    args = ["bench", str(tiny_artifact), "--backend", "onnxruntime-cpu", "--backend", "torch",
            "--backend", "tensorrt", "--images", str(image_dir), "--runs", "1", "--warmup", "0",
            "--batch-sizes", "1,4", "--json", str(out), "--markdown", str(md)]
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, [*args, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["command"].startswith("samexport bench ")
    assert data["model"]["variant"] == "tiny"
    assert set(data["shared_stages"]) == {"preprocess", "postprocess_1_mask", "postprocess_3_masks"}
    assert [i["size"] for i in data["config"]["images"]] == [[90, 120], [120, 80]]
    ran = [b for b in data["backends"] if "stages" in b]
    skipped = {b["label"]: b["skipped"] for b in data["backends"] if "skipped" in b}
    assert [b["label"] for b in ran] == ["onnxruntime-cpu fp32"]
    assert set(ran[0]["stages"]) == BACKEND_STAGES
    assert "--checkpoint" in skipped["torch"] and skipped["tensorrt"]
    for timing in ran[0]["stages"].values():
        assert timing["runs"] == 1 and 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert ran[0]["stages"]["decoder_boxes_4"]["items"] == 4
    assert 0 < ran[0]["encoder"]["fraction_of_peak"] and data["peak_matmul"]["gflops"] > 0
    peer = data["peer_baseline"]
    assert set(peer["stages"]) == {"official_decoder_4_masks", "official_decoder_best_mask"}
    assert peer["image_size"] == [90, 120] and "random" in peer["weights"]
    assert set(peer["ratios"]["onnxruntime-cpu fp32"]) == {
        "multimask_vs_official_4_masks", "single_vs_official_best_mask"}
    assert [t["met"] is None for t in data["targets"]] == [False, True, False, True]
    assert md.read_text() == to_markdown(data) and "## Latency per stage" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_bench_on_sam2_tiny(sam2_tiny_artifact, sam2_tiny_checkpoint, image_dir, tmp_path):
    """`samexport bench` on a SAM 2.1 artifact: every stage timed on ONNX Runtime and on the
    PyTorch reference (SAM2ImagePredictor over each backend), Hiera's compute, and the peer
    baseline skipped with its reason (the official SAM 2.1 has no ONNX decoder recipe)."""
    out = tmp_path / "bench.json"
    result = runner.invoke(app, [
        "bench", str(sam2_tiny_artifact), "--backend", "onnxruntime-cpu", "--backend", "torch",
        "--checkpoint", str(sam2_tiny_checkpoint), "--images", str(image_dir), "--runs", "1",
        "--warmup", "0", "--batch-sizes", "1,4", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["model"]["variant"] == "sam2.1_hiera_tiny"
    assert set(data["shared_stages"]) == {"preprocess", "postprocess_1_mask", "postprocess_3_masks"}
    ran = {b["label"]: b for b in data["backends"] if "stages" in b}
    assert set(ran) == {"onnxruntime-cpu fp32", "torch fp32"}
    for backend in ran.values():
        assert set(backend["stages"]) == BACKEND_STAGES
        assert backend["stages"]["decoder_boxes_4"]["items"] == 4
        assert backend["encoder"]["gflop"] == pytest.approx(2 * 146.2, abs=0.1)
    assert "no ONNX decoder recipe" in data["peer_baseline"]["skipped"]
    peer_target = data["targets"][0]
    assert peer_target["met"] is None and "peer baseline" in peer_target["not_measured"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "no_such_dir"], "artifact directory not found"),
        (["bench", "ARTIFACT", "--backend", "cuda"], "unknown backend 'cuda'"),
        (["bench", "ARTIFACT", "--batch-sizes", "1,x"], "--batch-sizes expects integers"),
        (["bench", "ARTIFACT", "--batch-sizes", "16,64"], "include 1"),
        (["bench", "ARTIFACT", "--images", "no_such_dir"], "image folder not found"),
        (["bench", "ARTIFACT", "--checkpoint", "missing.pth", "--backend", "torch"], "checkpoint not found"),
    ],
)
def test_cli_bench_errors(args, message, tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [str(tiny_artifact) if a == "ARTIFACT" else a for a in args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_bench_needs_an_artifact():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 2 and "Missing argument 'ARTIFACT_DIR'" in result.output


def test_benchmarks_take_shared_helpers_from_samexport_testing():
    """The benchmark scripts import random checkpoints from ``samexport.testing``, not from
    ``tests/`` put on ``sys.path``."""
    from pathlib import Path

    scripts = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert "sys.path" not in text and "conftest" not in text, script.name
