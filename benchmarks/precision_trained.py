"""Low precision on trained weights against random ones: FP16, INT8 and OpenVINO bf16 parity, same variant, same scenes.

    python benchmarks/precision_trained.py                      # weights/sam_tiny_shapes.pth, 4 held-out scenes
    python benchmarks/precision_trained.py --checkpoint NEW.pth --scenes 4 \\
        --output benchmarks/results/precision-tiny-trained.json

The other precision studies (``fp16_islands.py``, ``int8_float_tail.py``, ``openvino_int8.py``)
run on seeded random weights and photos; random weights have no activation outliers, and those
are what break low precision (LayerNorm overflow in FP16, INT8 ranges set by a few channels).
This study takes the ``tiny`` variant twice, with the seeded random weights of the test suite and
with ``--checkpoint`` (the tiny SAM trained on ``samexport.testing_scenes``, whose sha256 the
results record), and for each:

- builds its fp32 artifact (``samexport.build``, cached per checkpoint sha256 under ``--work``);
- calibrates INT8 ranges once (every tensor the onnxruntime recipe quantizes, inputs and outputs)
  on ``--calib`` held-out scenes (seeds ``HELD_OUT_SEED + 500`` up), and reports their spread
  (``activation_ranges``: the largest max|x| over the median one: the outliers);
- makes the encoder in FP16 (the variant's FP32 islands, and none), INT8 with the onnxruntime
  and tensorrt (FP16 Q/DQ) recipes from those ranges (each with the fp32 decoder, ONNX Runtime
  CPU), and runs the fp32 graphs on OpenVINO CPU with the bf16 hint (encoder and decoder);
- compares each with the fp32 artifact on ONNX Runtime through ``samexport.parity`` (the whole
  prompt suite) on ``--scenes`` held-out scenes (seeds ``HELD_OUT_SEED`` up), and, for the trained
  weights, the median mask IoU against the scenes' true shapes of one interior point per shape
  (best-scored of three masks), fp32 next to each precision.

Writes ``--output`` (default ``benchmarks/results/precision-tiny-trained.json``) with the load and
the CPU flags. Accuracy only: the tiny encoder's times say nothing about vit_b's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("embedding_cosine", "embedding_rel_max_abs", "logits_rel_max_abs", "mask_iou_min", "mask_iou_mean",
           "iou_score_max_abs")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def artifact_for(checkpoint: Path, work: Path) -> Path:
    from samexport.pipeline import build

    out = work / f"tiny-{sha256(checkpoint)[:12]}-fp32"
    if not (out / "manifest.json").is_file():
        print(f"building {out}", flush=True)
        build("tiny", checkpoint=checkpoint, output=out, precision="fp32", engines="skip", parity=False)
    return out


def truth_iou(backend, scenes) -> float:
    """Median IoU against the true shape of the best-scored mask of one interior point per shape."""
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import mask_iou
    from samexport.testing_scenes import interior_point

    predictor, ious = SamPredictor(backend), []
    for scene in scenes:
        predictor.set_image(scene.image)
        for truth in scene.masks:
            masks, scores, _ = predictor.predict(np.array([interior_point(truth)], np.float32), np.ones(1))
            ious.append(mask_iou(masks[int(np.argmax(scores))], truth))
    return float(statistics.median(ious))


def study(label: str, checkpoint: Path, work: Path, scenes, calib_scenes, tmp: Path) -> dict:
    import onnx
    from PIL import Image

    from samexport import constants as C
    from samexport.parity import run_parity
    from samexport.precision import calibration, int8
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.precision.recipes import recipe_for
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.runtime.openvino_backend import OpenVINOBackend
    from samexport.variants import get_variant

    artifact = artifact_for(checkpoint, work)
    encoder, decoder = artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX
    images = {f"scene {seed}": scene.image for seed, scene in scenes.items()}
    reference = OnnxRuntimeBackend(encoder, decoder, device="cpu")
    folder = tmp / label
    (folder / "calib").mkdir(parents=True)
    for seed, scene in calib_scenes.items():
        Image.fromarray(scene.image).save(folder / "calib" / f"{seed}.png")

    model = onnx.load(str(encoder), load_external_data=False)
    recipes = {"onnxruntime": recipe_for("onnxruntime"), "tensorrt": recipe_for("tensorrt")}
    tensors = list(dict.fromkeys(t for r in recipes.values() for t in int8.calibrated_tensors(model, r)))
    ranges = calibration.collect_ranges(encoder, tensors, calibration.encoder_feeds(calibration.list_images(folder / "calib")))
    peaks = np.array(list(ranges.values()))
    worst = max(ranges, key=ranges.get)

    candidates = {}
    islands = get_variant("tiny").fp32_ops
    for name, ops in (("fp16, variant islands", islands), ("fp16, no islands", frozenset())):
        path = convert_to_fp16(encoder, folder / f"{name.replace(', ', '-').replace(' ', '_')}.onnx", fp32_ops=ops)
        candidates[name] = ("fp16", lambda p=path: OnnxRuntimeBackend(p, decoder, device="cpu", memory_arena=False))
    path = int8.quantize_with_ranges(encoder, folder / "int8-ort.onnx",
                                     {t: ranges[t] for t in int8.calibrated_tensors(model, recipes["onnxruntime"])},
                                     recipes["onnxruntime"])
    candidates["int8, onnxruntime recipe"] = ("int8", lambda p=path: OnnxRuntimeBackend(p, decoder, device="cpu"))
    qdq = int8.quantize_with_ranges(encoder, folder / "int8-trt-fp32.onnx",
                                    {t: ranges[t] for t in int8.calibrated_tensors(model, recipes["tensorrt"])},
                                    recipes["tensorrt"])
    path = int8.qdq_to_fp16(qdq, folder / "int8-trt.onnx")
    candidates["int8, tensorrt recipe (fp16 Q/DQ)"] = ("int8", lambda p=path: OnnxRuntimeBackend(p, decoder, device="cpu"))
    candidates["openvino bf16 (encoder and decoder)"] = (
        "fp16", lambda: OpenVINOBackend(encoder, decoder, device="CPU", precision="bf16", cache=False))

    results = {}
    for name, (precision, make) in candidates.items():
        start = time.perf_counter()
        candidate = make()
        summary = run_parity(reference, candidate, images, precision=precision).summary
        results[name] = {f: summary[f] for f in FIGURES}
        if label == "trained":
            results[name]["truth_point_iou_median"] = truth_iou(candidate, scenes.values())
        print(f"{label:8s} {name:36s} " + " ".join(f"{f} {v:.5g}" for f, v in results[name].items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        del candidate
    out = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint),
        "activation_ranges": {
            "tensors": len(ranges), "max": float(peaks.max()), "median": float(np.median(peaks)),
            "max_over_median": float(peaks.max() / np.median(peaks)), "largest_tensor": worst,
            "largest_five": dict(sorted(ranges.items(), key=lambda kv: -kv[1])[:5]),
        },
        "results": results,
    }
    if label == "trained":
        out["fp32_truth_point_iou_median"] = truth_iou(reference, scenes.values())
    return out


def main() -> None:
    from samexport.bench.run import cpu_flags
    from samexport.testing import save_random_checkpoint
    from samexport.testing_scenes import HELD_OUT_SEED, make_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "weights/sam_tiny_shapes.pth")
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes compared (seeds HELD_OUT_SEED up)")
    parser.add_argument("--calib", type=int, default=4, help="held-out calibration scenes (seeds HELD_OUT_SEED + 500 up)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/precision-tiny-trained.json")
    args = parser.parse_args()

    scenes = {HELD_OUT_SEED + i: make_scene(HELD_OUT_SEED + i) for i in range(args.scenes)}
    calib = {HELD_OUT_SEED + 500 + i: make_scene(HELD_OUT_SEED + 500 + i) for i in range(args.calib)}
    random_checkpoint = args.work / "tiny_random.pth"
    if not random_checkpoint.is_file():
        save_random_checkpoint("tiny", random_checkpoint)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="samexport-precision-trained-") as tmp:
        weights = {
            "random": study("random", random_checkpoint, args.work, scenes, calib, Path(tmp)),
            "trained": study("trained", args.checkpoint, args.work, scenes, calib, Path(tmp)),
        }
    weights["random"]["checkpoint"] = "seeded random (samexport.testing.save_random_checkpoint('tiny'))"
    document = {
        "what": ("tiny SAM encoder (and for OpenVINO bf16 the decoder) in low precision against its fp32 artifact on "
                 "ONNX Runtime CPU, parity over the prompt suite; seeded random weights against trained ones"),
        "command": " ".join(["python", "benchmarks/precision_trained.py", *sys.argv[1:]]),
        "scenes": sorted(scenes), "calibration_scenes": sorted(calib),
        "weights": weights,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "versions": {name: __import__(name).__version__ for name in ("onnxruntime", "openvino", "numpy", "torch")},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
