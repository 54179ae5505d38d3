"""MobileSAM's encoder against vit_b's on ONNX Runtime CPU, fp32 and int8, in one run.

    python benchmarks/mobile_sam.py                       # WORK=/tmp/samexport-bench, 7 rounds
    python benchmarks/mobile_sam.py --runs 9 --note "quiet machine"

Builds (or reuses) four artifacts from seeded random weights (``samexport.testing``'s
``random_state_dict``: latency does not depend on the weights): vit_b and mobile_sam, fp32 and
int8 with the ONNX Runtime recipe (``--int8-for onnxruntime``, calibrated on the photos
``run_cpu.sh`` uses). Then times ``encoder.onnx`` of each on the same preprocessed photo, round
robin (one run of each artifact per round, after one warm-up each), so a noisy machine slows all
four alike; reports the median over the rounds and the mobile_sam / vit_b ratios per round (their
median too). Writes ``benchmarks/results/cpu-mobile_sam-vs-vit_b.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = (("vit_b", "fp32"), ("vit_b", "int8"), ("mobile_sam", "fp32"), ("mobile_sam", "int8"))


def _calibration_folder(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photos = {"hubble": data.hubble_deep_field(), "ihc": data.immunohistochemistry(),
              "moto_right": data.stereo_motorcycle()[1]}
    for name, image in photos.items():
        if not (folder / f"{name}.png").exists():
            Image.fromarray(image[..., :3]).save(folder / f"{name}.png")
    return folder


def _artifacts(work: Path) -> dict[tuple[str, str], Path]:
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    calib = _calibration_folder(work / "calib")
    found = {}
    for variant, precision in CONFIGS:
        checkpoint = work / f"{variant}_random.pth"
        if not checkpoint.exists():
            save_random_checkpoint(variant, checkpoint)
        out = work / f"{variant}-{precision}"
        if not (out / "manifest.json").exists():
            print(f"building {out}", flush=True)
            extra = dict(calib_dir=calib, int8_target="onnxruntime") if precision == "int8" else {}
            build(variant, checkpoint=checkpoint, output=out, precision=precision, engines="skip", **extra)
        found[(variant, precision)] = out
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--runs", type=int, default=7, help="rounds (>= 5)")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")

    from samexport import constants as C
    from samexport.artifacts import read_manifest
    from samexport.bench.flops import encoder_gflop
    from samexport.image_sources import sample_images
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.transforms import preprocess
    from samexport.utils import package_versions

    artifacts = _artifacts(args.work)
    images, _ = sample_images(("astronaut",))
    image = preprocess(images["astronaut"])
    sessions = {
        key: OnnxRuntimeBackend(path / C.ENCODER_ONNX, path / C.DECODER_ONNX, device="cpu")
        for key, path in artifacts.items()
    }
    load_before = os.getloadavg()
    for backend in sessions.values():  # warm-up
        backend.encode(image)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for round_ in range(args.runs):
        for key, backend in sessions.items():
            start = time.perf_counter()
            backend.encode(image)
            times[key].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.runs}: " + ", ".join(f"{v}-{p} {times[(v, p)][-1] * 1e3:.0f} ms"
                                                              for v, p in sessions), flush=True)
    load_after = os.getloadavg()

    results = []
    for (variant, precision), runs in times.items():
        manifest = read_manifest(artifacts[(variant, precision)])
        parity = manifest.get("parity") or {}
        median = statistics.median(runs)
        results.append({
            "variant": variant, "precision": precision,
            "graphs": manifest["graphs"],
            "median_ms": round(median * 1e3, 1), "min_ms": round(min(runs) * 1e3, 1),
            "max_ms": round(max(runs) * 1e3, 1), "runs_ms": [round(t * 1e3, 1) for t in runs],
            "gflop": round(encoder_gflop(variant), 1),
            "gflops": round(encoder_gflop(variant) / median, 1),
            "parity_vs_torch": {"passed": parity.get("passed"),
                                "embedding_cosine": (parity.get("summary") or {}).get("embedding_cosine")},
        })
    ratios = {}
    for precision in ("fp32", "int8"):
        per_round = [m / v for m, v in zip(times[("mobile_sam", precision)], times[("vit_b", precision)])]
        ratios[precision] = {
            "median_of_per_round_ratios": round(statistics.median(per_round), 4),
            "ratio_of_medians": round(statistics.median(times[("mobile_sam", precision)])
                                      / statistics.median(times[("vit_b", precision)]), 4),
            "per_round": [round(r, 4) for r in per_round],
        }
    document = {
        "what": "image encoder latency (encoder.onnx, 1x3x1024x1024 -> 1x256x64x64), ONNX Runtime CPU, "
                "samexport's session options; round robin over the four artifacts",
        "command": "python benchmarks/mobile_sam.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "image": "scikit-image astronaut (512x512), preprocessed once",
        "weights": "seeded random (samexport.testing.random_state_dict); latency does not depend on them",
        "int8": "--int8-for onnxruntime, calibrated on hubble_deep_field, immunohistochemistry, stereo_motorcycle (right)",
        "rounds": args.runs,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "versions": package_versions("samexport", "onnxruntime", "onnx", "torch"),
        "results": results,
        "mobile_sam_over_vit_b": ratios,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-mobile_sam-vs-vit_b.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "cpu-mobile_sam-vs-vit_b.md").write_text(to_markdown(document))
    print(to_markdown(document))


def to_markdown(doc: dict) -> str:
    lines = [
        "# MobileSAM vs vit_b: image encoder on ONNX Runtime CPU",
        "",
        f"{doc['what']}. {doc['rounds']} rounds, median. Image: {doc['image']}. Weights: {doc['weights']}. "
        f"INT8: {doc['int8']}. Machine: {doc['machine']['cores']} cores, load average "
        f"{doc['machine']['load_average_before']} before, {doc['machine']['load_average_after']} after"
        + (f"; {doc['note']}" if doc["note"] else "") + ".",
        "",
        "| variant | precision | median ms | min ms | max ms | GFLOP | GFLOP/s | parity vs torch (embedding cosine) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        parity = r["parity_vs_torch"]
        cosine = f"{parity['embedding_cosine']:.6f}" if parity["embedding_cosine"] is not None else "n/a"
        verdict = {True: "pass", False: "FAIL", None: "not run"}[parity["passed"]]
        lines.append(f"| {r['variant']} | {r['precision']} | {r['median_ms']} | {r['min_ms']} | {r['max_ms']} | "
                     f"{r['gflop']} | {r['gflops']} | {verdict} ({cosine}) |")
    lines += ["", "mobile_sam / vit_b latency, same run:", ""]
    for precision, ratio in doc["mobile_sam_over_vit_b"].items():
        lines.append(f"- {precision}: {ratio['median_of_per_round_ratios']:.4f} (median of per-round ratios; "
                     f"ratio of medians {ratio['ratio_of_medians']:.4f}), i.e. "
                     f"{1 / ratio['median_of_per_round_ratios']:.1f}x faster")
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
