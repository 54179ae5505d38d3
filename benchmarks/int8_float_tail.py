"""Which quantized nodes cost an INT8 encoder its parity: parity per set of nodes left in float.

    python benchmarks/int8_float_tail.py                   # mobile_sam, ONNX Runtime recipe
    python benchmarks/int8_float_tail.py --group 9 --tails 2 6 --timing-runs 5
    python benchmarks/int8_float_tail.py --checkpoint weights/sam_tiny_shapes.pth --scenes 4   # trained tiny

Builds (or reuses) the fp32 artifact of ``--variant`` from seeded random weights (as
``fp16_islands.py``), calibrates the ``--target`` recipe's ranges once on scikit-image's
``coffee`` and ``chelsea`` (the calibration photos of ``tests/models/test_mobile_sam.py``), then
quantizes the encoder with every node the recipe quantizes, with each run of ``--group``
consecutive nodes left in float, and with the last ``--tails`` nodes left in float
(``Int8Recipe.float_tail``). Each encoder runs with the fp32 decoder through
``samexport.parity`` against the fp32 artifact on ``astronaut`` (held out) and a synthetic
portrait with the whole prompt suite (ONNX Runtime CPU), the images of the MobileSAM parity test.
The encoders of the tail sets and the fp32 encoder are then timed round robin.

``--checkpoint`` takes trained weights (``--variant`` defaults to ``tiny`` then; the sha256 is
recorded) and ``--scenes N`` calibrates on N held-out procedural scenes (seeds ``HELD_OUT_SEED +
500`` up) and compares on N others (from ``HELD_OUT_SEED``) instead of the photos.

Writes ``benchmarks/results/{variant}[-trained]-int8-{target}-float-tail.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
FIGURES = ("embedding_cosine", "embedding_rel_max_abs", "mask_iou_min", "mask_iou_mean", "iou_score_max_abs")


def main() -> None:
    import onnx
    import onnxruntime as ort
    from fp16_islands import fp32_artifact
    from PIL import Image

    from samexport import constants as C
    from samexport.image_sources import sample_images
    from samexport.parity import run_parity
    from samexport.precision import calibration, int8, recipes
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.testing import make_image
    from samexport.variants import get_variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help="default mobile_sam, or tiny with --checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (official layout) instead of random ones")
    parser.add_argument("--scenes", type=int, default=0, help="calibrate and compare on held-out procedural scenes")
    parser.add_argument("--target", default="onnxruntime", choices=sorted(recipes.RECIPES))
    parser.add_argument("--group", type=int, default=9, help="consecutive nodes per float group (0: none)")
    parser.add_argument("--tails", type=int, nargs="*", default=[2, 6])
    parser.add_argument("--timing-runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    variant = get_variant(args.variant or ("tiny" if args.checkpoint else "mobile_sam"))
    artifact = fp32_artifact(variant.name, args.work, args.checkpoint)
    encoder, decoder = artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX
    recipe = recipes.recipe_for(args.target)  # as is: the sets below are what is measured
    if args.scenes:
        from samexport.testing_scenes import HELD_OUT_SEED, make_scene

        images = {f"scene {s}": make_scene(s).image for s in range(HELD_OUT_SEED, HELD_OUT_SEED + args.scenes)}
        photos = {f"scene {s}": make_scene(s).image
                  for s in range(HELD_OUT_SEED + 500, HELD_OUT_SEED + 500 + args.scenes)}
        calibration_names = sorted(photos)
    else:
        photos, _ = sample_images(("astronaut", "coffee", "chelsea"))
        images = {"astronaut": photos["astronaut"], "portrait": make_image(700, 450, seed=11)}
        calibration_names = ["coffee", "chelsea"]
    reference = OnnxRuntimeBackend(encoder, decoder, device="cpu")

    model = onnx.load(str(encoder), load_external_data=False)
    nodes = [n.name for n in int8.quantized_nodes(model, recipe)]
    sets: dict[str, dict] = {"all quantized": {"float_tail": 0}}
    if args.group:
        for start in range(0, len(nodes), args.group):
            stop = min(start + args.group, len(nodes))
            sets[f"nodes {start}-{stop - 1} in float"] = {"float_nodes": nodes[start:stop]}
    sets |= {f"last {tail} in float": {"float_tail": tail} for tail in args.tails}

    results, timed = {}, {"fp32": encoder}
    with tempfile.TemporaryDirectory(prefix="samexport-int8-tail-") as tmp:
        calib = Path(tmp) / "calib"
        calib.mkdir()
        for name in calibration_names:
            Image.fromarray(photos[name]).save(calib / f"{name.replace(' ', '-')}.png")
        # Ranges for every node the recipe quantizes; a subset of them is used per set.
        ranges = calibration.collect_ranges(
            encoder, int8.calibrated_tensors(model, recipe), calibration.encoder_feeds(calibration.list_images(calib))
        )
        for label, spec in sets.items():
            chosen = dataclasses.replace(recipe, float_tail=spec.get("float_tail", 0))
            floats = set(spec.get("float_nodes", ()))
            path = Path(tmp) / f"encoder-{len(results)}.onnx"
            int8.quantize_with_ranges(encoder, path, ranges, chosen, float_nodes=floats)
            candidate = OnnxRuntimeBackend(path, decoder, device="cpu")
            summary = run_parity(reference, candidate, images, precision="int8").summary
            results[label] = {**spec, **{f: summary[f] for f in FIGURES}}
            print(f"{label:28s} " + " ".join(f"{f} {summary[f]:.5f}" for f in FIGURES), flush=True)
            if "float_tail" in spec:
                timed[label] = path

        image = np.random.default_rng(0).standard_normal(C.IMAGE.shape).astype(np.float32)
        sessions = {label: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for label, p in timed.items()}
        seconds: dict[str, list[float]] = {label: [] for label in sessions}
        for session in sessions.values():
            session.run(None, {C.IMAGE.name: image})  # warm-up
        load_before = os.getloadavg()
        for _ in range(args.timing_runs):
            for label, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {C.IMAGE.name: image})
                seconds[label].append(time.perf_counter() - start)
        load_after = os.getloadavg()

    trained = "-trained" if args.checkpoint else ""
    output = args.output or ROOT / f"benchmarks/results/{variant.name}{trained}-int8-{args.target}-float-tail.json"
    weights = "seeded random (samexport.testing)"
    if args.checkpoint:
        import hashlib

        weights = f"{args.checkpoint} sha256 {hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()}"
    output.write_text(json.dumps({
        "what": f"{variant.name} int8 ({args.target} recipe) encoder parity vs the fp32 artifact per set of nodes left in float",
        "quantizable_nodes": nodes,
        "parity": results,
        "encoder_seconds": {
            label: {"median": statistics.median(v), "fp32_over_this": statistics.median(
                a / b for a, b in zip(seconds["fp32"], v))} for label, v in seconds.items()
        },
        "weights": weights,
        "images": sorted(images), "calibration": calibration_names,
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "command": "python benchmarks/int8_float_tail.py " + " ".join(sys.argv[1:]),
    }, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
