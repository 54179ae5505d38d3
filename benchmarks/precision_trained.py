"""Low precision on trained weights against random ones: FP16, INT8 and OpenVINO bf16 parity, same variant, same scenes.

    python benchmarks/precision_trained.py                      # weights/sam_tiny_shapes.pth, 12 held-out scenes
    python benchmarks/precision_trained.py --checkpoint NEW.pth --scenes 12 \\
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
  CPU) and with the openvino recipe (run on OpenVINO CPU, f32 hint, its integer kernels), and
  runs the fp32 graphs on OpenVINO CPU with the bf16 hint (encoder and decoder);
- compares each with the fp32 artifact on ONNX Runtime through ``samexport.parity`` (the whole
  prompt suite) on ``--scenes`` held-out scenes (seeds ``HELD_OUT_SEED`` up), and, for the trained
  weights, the median mask IoU against the scenes' true shapes of one interior point per shape
  (best-scored of three masks), fp32 next to each precision;
- lists every mask of the suite (``per_mask``: 104 a scene, the 4 tokens of 26 prompts): the
  minimum IoU against fp32 with percentiles beside it (one borderline mask sets the minimum), the
  masks under 0.9 counted by prompt and token, the minimum over masks of at least a scene's
  smallest instance (``MIN_AREA`` pixels, union of both sides: a mask of a few pixels loses its
  IoU on one pixel), and the worst five named: scene, prompt, its
  points or box in pixels, token (0 the single-mask output), both areas, both predicted IoUs
  (fp32, candidate), the pixels that differ, the share of the masks' union where the fp32 logit
  is within 1 of the threshold, the true shape the fp32 mask covers best and how well each
  side's mask covers a true shape.

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


class MaskLedger:
    """Every mask of the parity suite for one candidate (``run_parity``'s ``observe``): its IoU
    against the fp32 artifact's mask and where it came from, so the worst can be named (scene,
    prompt, its points or box, the mask token, the areas, and which true shape the mask covers)."""

    WORST = 5

    def __init__(self, scenes) -> None:
        self.scenes = scenes
        self.rows: list[dict] = []

    def __call__(self, decoded) -> None:
        from samexport import constants as C
        from samexport.testing import mask_iou

        seed = int(decoded.image.split()[-1])
        reference, candidate = decoded.reference > C.MASK_THRESHOLD, decoded.candidate > C.MASK_THRESHOLD
        for b in range(decoded.ious.shape[0]):
            for token in range(decoded.ious.shape[1]):
                iou = float(decoded.ious[b, token])
                ref, cand = reference[b, token], candidate[b, token]
                row = {"iou": iou, "scene": seed, "prompt": decoded.prompt.name, "index_in_batch": b, "token": token,
                       "reference_area": int(ref.sum()), "candidate_area": int(cand.sum()),
                       "predicted_iou": [round(float(decoded.reference_scores[b, token]), 4),
                                         round(float(decoded.candidate_scores[b, token]), 4)]}
                inputs = decoded.inputs
                if inputs["point_coords"] is not None:
                    row["points_xy"] = np.round(inputs["point_coords"][b].astype(float), 1).tolist()
                    row["labels"] = inputs["point_labels"][b].astype(int).tolist()
                if inputs["boxes"] is not None:
                    row["box_xyxy"] = np.round(inputs["boxes"][b].astype(float), 1).tolist()
                row["refine"] = decoded.prompt.refine
                union = ref | cand
                logits = decoded.reference[b, token]
                row["differing_pixels"] = int((ref ^ cand).sum())
                row["union_area"] = int(union.sum())
                row["union_share_with_abs_logit_under_1"] = float((np.abs(logits[union]) < 1).mean()) if union.any() else 0.0
                truths = [mask_iou(ref, truth) for truth in self.scenes[seed].masks]
                row["reference_best_truth"] = {"shape": int(np.argmax(truths)), "iou": round(float(max(truths)), 3),
                                               "shape_area": int(self.scenes[seed].masks[int(np.argmax(truths))].sum())}
                row["candidate_best_truth_iou"] = round(max(mask_iou(cand, truth) for truth in self.scenes[seed].masks), 3)
                self.rows.append(row)

    def summary(self) -> dict:
        from samexport.testing_scenes import MIN_AREA

        ious = np.array([row["iou"] for row in self.rows])
        worst = sorted(self.rows, key=lambda row: row["iou"])[: self.WORST]
        sized = sorted((row for row in self.rows if row["union_area"] >= MIN_AREA), key=lambda row: row["iou"])
        below = [row for row in self.rows if row["iou"] < 0.9]
        by_prompt: dict[str, int] = {}
        for row in below:
            key = f"{row['prompt']} token {row['token']}"
            by_prompt[key] = by_prompt.get(key, 0) + 1
        return {
            "masks": len(ious), "iou_min": float(ious.min()),
            **{f"iou_p{q}": float(np.percentile(ious, q)) for q in (1, 5, 10, 50)},
            "below_0.9": len(below), "below_0.5": int((ious < 0.5).sum()),
            # a mask of a few pixels flips its IoU on one pixel: the least IoU over masks whose
            # union is at least a scene's smallest instance, and that mask
            f"masks_of_{MIN_AREA}_px_or_more": len(sized),
            f"iou_min_of_{MIN_AREA}_px_or_more": sized[0]["iou"] if sized else None,
            f"worst_of_{MIN_AREA}_px_or_more": sized[0] if sized else None,
            "below_0.9_by_prompt_and_token": dict(sorted(by_prompt.items(), key=lambda kv: -kv[1])),
            "worst": worst,
        }


def study(label: str, checkpoint: Path, work: Path, scenes, calib_scenes, tmp: Path, only=None) -> dict:
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
    recipes = {target: recipe_for(target) for target in ("onnxruntime", "tensorrt", "openvino")}
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
    path = int8.quantize_with_ranges(encoder, folder / "int8-ov.onnx",
                                     {t: ranges[t] for t in int8.calibrated_tensors(model, recipes["openvino"])},
                                     recipes["openvino"])
    candidates["int8, openvino recipe (on OpenVINO f32)"] = (
        "int8", lambda p=path: OpenVINOBackend(p, decoder, device="CPU", precision="f32", cache=False))
    candidates["openvino bf16 (encoder and decoder)"] = (
        "fp16", lambda: OpenVINOBackend(encoder, decoder, device="CPU", precision="bf16", cache=False))

    if only:
        candidates = {name: c for name, c in candidates.items() if any(word in name for word in only)}
    results = {}
    for name, (precision, make) in candidates.items():
        start = time.perf_counter()
        candidate = make()
        ledger = MaskLedger(scenes)
        summary = run_parity(reference, candidate, images, precision=precision, observe=ledger).summary
        results[name] = {f: summary[f] for f in FIGURES}
        if label == "trained":
            results[name]["truth_point_iou_median"] = truth_iou(candidate, scenes.values())
        masks = ledger.summary()
        print(f"{label:8s} {name:36s} " + " ".join(f"{f} {v:.5g}" for f, v in results[name].items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        sized = next(key for key in masks if key.startswith("iou_min_of_"))
        print(f"{'':8s} per mask: {masks['masks']} masks, min {masks['iou_min']:.3f}, p1 {masks['iou_p1']:.3f}, "
              f"p5 {masks['iou_p5']:.3f}, below 0.9: {masks['below_0.9']}, {sized} {masks[sized]}; worst: "
              + json.dumps({k: v for k, v in masks["worst"][0].items() if k != "iou"}), flush=True)
        results[name]["per_mask"] = masks
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
    parser.add_argument("--scenes", type=int, default=12, help="held-out scenes compared (seeds HELD_OUT_SEED up)")
    parser.add_argument("--calib", type=int, default=4, help="held-out calibration scenes (seeds HELD_OUT_SEED + 500 up)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/precision-tiny-trained.json")
    parser.add_argument("--only", choices=("random", "trained"), help="run one weight set (default both)")
    parser.add_argument("--candidates", type=lambda text: text.split(","),
                        help="comma-separated words: run only the conversions whose name holds one (e.g. int8,bf16)")
    parser.add_argument("--random-from", type=Path,
                        help="take the random weights' results from an earlier output of the same scenes (the "
                             "random weights do not change; it records where they came from)")
    args = parser.parse_args()

    scenes = {HELD_OUT_SEED + i: make_scene(HELD_OUT_SEED + i) for i in range(args.scenes)}
    calib = {HELD_OUT_SEED + 500 + i: make_scene(HELD_OUT_SEED + 500 + i) for i in range(args.calib)}
    random_checkpoint = args.work / "tiny_random.pth"
    if not random_checkpoint.is_file():
        save_random_checkpoint("tiny", random_checkpoint)
    earlier = None
    if args.random_from:
        earlier = json.loads(args.random_from.read_text())
        random_half = earlier["weights"].get("random", {})
        if (earlier["scenes"], earlier["calibration_scenes"]) != (sorted(scenes), sorted(calib)) or \
                random_half.get("checkpoint_sha256") != sha256(random_checkpoint) or args.only == "random":
            parser.error(f"{args.random_from} holds no random-weight results of these scenes, calibration scenes "
                         "and random checkpoint (or --only random asks to run them again)")
    load_before = os.getloadavg()
    runs = {"random": random_checkpoint, "trained": args.checkpoint}
    with tempfile.TemporaryDirectory(prefix="samexport-precision-trained-") as tmp:
        weights = {label: study(label, checkpoint, args.work, scenes, calib, Path(tmp), args.candidates)
                   for label, checkpoint in runs.items()
                   if args.only in (None, label) and not (label == "random" and earlier)}
    if earlier:
        weights = {"random": earlier["weights"]["random"] | {
            "results_from": {"file": str(args.random_from), "command": earlier["command"], "machine": earlier["machine"]}},
            **weights}
    elif "random" in weights:
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
