"""OpenVINO and ONNX Runtime side by side on the CPU, per stage, in one round-robin run.

    python benchmarks/openvino_cpu.py --work /tmp/ovw --rounds 3

For each artifact (``<work>/vit_b-fp32``, ``<work>/vit_b-int8`` (``--int8-for onnxruntime``),
``<work>/mobile_sam-fp32``: built from seeded random weights as ``benchmarks/run_cpu.sh`` does;
latency does not depend on them) times, through ``SamPredictor`` on a 1500x2250 image: the encoder
(``set_image``), ``predict`` with one point (the official notebook's call: the decoder, the
upscaling to the image and the thresholding) and the decoder alone with 1 box and with 16 boxes
(``decode_low_res``), on ONNX Runtime (``onnxruntime-cpu``), OpenVINO f32, OpenVINO bf16 where the
CPU has it, and ``auto`` (what it opens here: the encoder on OpenVINO f32, the decoder on ONNX
Runtime). Every round runs every (artifact, backend, stage) once, all artifacts in the same round,
so a noisy machine slows them alike; reports medians over the rounds and the median of the
per-round ratios against ONNX Runtime on the same artifact, and for the int8 artifact also against
ONNX Runtime on the fp32 one (the issue's ">= 3x for int8 artifacts").

Also our overhead: the same compiled OpenVINO f32 graphs called raw (``transforms.preprocess`` +
a plain infer request, and the decoder's infer request on a ready feed) against
``SamPredictor.set_image`` and ``decode_low_res`` on the OpenVINO backend. Records the CPU's bf16 / VNNI / AMX flags and the load
average before and after. Writes ``benchmarks/results/openvino-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("encoder", "predict_point_1", "set_image_and_predict", "decoder_box_1", "decoder_boxes_16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--artifacts", default="vit_b-fp32,vit_b-int8,mobile_sam-fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="open each (artifact, backend) predictor in its turn of every round, warm it up "
                             "untimed and close it after its turn, instead of holding them all for the run: a "
                             "vit_b predictor holds 2-3 GB, so all of them at once need ~20 GB")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from samexport.bench.inputs import decoder_prompts, default_bench_image
    from samexport.bench.run import cpu_flags
    from samexport.runtime.backends import open_backend
    from samexport.runtime.predictor import SamPredictor
    from samexport.transforms import preprocess
    from samexport.utils import package_versions

    image_name, image = default_bench_image()
    load_before = os.getloadavg()
    specs = {"onnxruntime-cpu": "onnxruntime-cpu", "openvino f32": "openvino:precision=f32"}
    if "bf16" in cpu_flags_bf16():
        specs["openvino bf16"] = "openvino:precision=bf16"
    specs["auto"] = "auto"
    prompts = decoder_prompts(image.shape[:2], (1, 16))
    times: dict[tuple, list[float]] = {}

    def timed(key, fn):
        start = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - start)

    # All artifacts in every round (per-round ratios across artifacts: int8 against fp32); the raw
    # calls use a second infer request on the backend's own compiled model (the same graph).
    names = args.artifacts.split(",")
    point = prompts["decoder_point"]

    def opened(name, label):
        predictor = SamPredictor(open_backend(args.work / name, specs[label]))
        predictor.set_image(image)  # warm-up
        predictor.predict(point_coords=point["point_coords"][0], point_labels=point["point_labels"][0])
        return predictor

    keys = [(name, label) for name in names for label in specs]
    held = {} if args.one_at_a_time else {key: opened(*key) for key in keys}
    auto_names = {}
    for round_ in range(args.rounds):
        for name, label in keys:
            predictor = held.get((name, label)) or opened(name, label)
            if label == "auto":
                auto_names[name] = predictor.backend.name
            timed((name, label, "encoder"), lambda: predictor.set_image(image))
            timed((name, label, "predict_point_1"), lambda: predictor.predict(
                point_coords=point["point_coords"][0], point_labels=point["point_labels"][0]))
            times.setdefault((name, label, "set_image_and_predict"), []).append(
                times[(name, label, "encoder")][-1] + times[(name, label, "predict_point_1")][-1])
            for n in (1, 16):
                kwargs = prompts[f"decoder_boxes_{n}"]
                predictor.decode_low_res(**kwargs)  # untimed: the first call of this batch size
                timed((name, label, f"decoder_{'box_1' if n == 1 else 'boxes_16'}"),
                      lambda: predictor.decode_low_res(**kwargs))
            if label == "openvino f32":
                backend = predictor.backend
                encoder = backend.encoder.compiled.create_infer_request()
                decoder = backend.decoder.compiled.create_infer_request()
                timed((name, label, "raw_encoder"), lambda: encoder.infer({0: preprocess(image)}))
                decoder_feed = _decoder_feed(predictor, prompts["decoder_boxes_1"])
                decoder.infer(decoder_feed)
                timed((name, label, "raw_decoder_box_1"), lambda: decoder.infer(decoder_feed))
                timed((name, label, "ours_decoder_box_1_backend"), lambda: backend.decode(*decoder_feed.values()))
            predictor = backend = encoder = decoder = None  # with --one-at-a-time: closed after its turn
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    del held
    load_after = os.getloadavg()
    document = _document(args, times, specs, image_name, load_before, load_after, cpu_flags(),
                         package_versions("samexport", "openvino", "onnxruntime", "numpy"))
    document["auto_opens"] = auto_names
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino-cpu.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "openvino-cpu.md").write_text(to_markdown(document))
    print(to_markdown(document))


def cpu_flags_bf16() -> str:
    import openvino

    return "bf16" if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else ""


def _decoder_feed(predictor, kwargs) -> dict:
    """The decoder's inputs for ``kwargs`` exactly as ``decode_low_res`` builds them."""
    from samexport import constants as C

    captured = {}
    backend = predictor.backend
    original = backend.decode

    def capture(*arrays):
        captured.update({spec.name: np.array(a) for spec, a in zip(C.DECODER_INPUTS, arrays)})
        return original(*arrays)

    backend.decode = capture
    try:
        predictor.decode_low_res(**kwargs)
    finally:
        del backend.decode
    return captured


def _stats(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples) * 1e3, 2), "min_ms": round(min(samples) * 1e3, 2),
            "max_ms": round(max(samples) * 1e3, 2), "runs_ms": [round(s * 1e3, 2) for s in samples]}


def _ratio(numerators: list[float], denominators: list[float]) -> dict:
    per_round = [n / d for n, d in zip(numerators, denominators)]
    return {"median_of_per_round": round(statistics.median(per_round), 3), "per_round": [round(r, 3) for r in per_round]}


def _document(args, times, specs, image_name, load_before, load_after, flags, versions) -> dict:
    artifacts = args.artifacts.split(",")
    results = {}
    for name in artifacts:
        for stage in STAGES:
            base = times[(name, "onnxruntime-cpu", stage)]
            row = {}
            for label in specs:
                samples = times[(name, label, stage)]
                row[label] = {**_stats(samples), "speedup_vs_onnxruntime": _ratio(base, samples)}
            if "-int8" in name and (fp32 := name.split("-int8")[0] + "-fp32") in artifacts:  # -int8, -int8ov, ...
                fp32_base = times[(fp32, "onnxruntime-cpu", stage)]
                for label in specs:
                    row[label]["speedup_vs_onnxruntime_fp32_artifact"] = _ratio(fp32_base, times[(name, label, stage)])
            results[f"{name} {stage}"] = row
    overhead = {}
    for (name, label, stage), samples in times.items():
        if stage == "raw_encoder":
            overhead[f"{name} {label}"] = {
                "encoder: set_image / (preprocess + raw infer)": _ratio(times[(name, label, "encoder")], samples),
                "decoder 1 box: backend.decode / raw infer": _ratio(
                    times[(name, label, "ours_decoder_box_1_backend")], times[(name, label, "raw_decoder_box_1")]),
                "decoder 1 box: decode_low_res / raw infer": _ratio(
                    times[(name, label, "decoder_box_1")], times[(name, label, "raw_decoder_box_1")]),
                "raw_encoder": _stats(samples), "raw_decoder_box_1": _stats(times[(name, label, "raw_decoder_box_1")]),
            }
    return {
        "what": "per stage, SamPredictor on each backend: encoder = set_image (preprocess + encoder); "
                "predict_point_1 = predict with one point (3 masks at the image size); set_image_and_predict = "
                "their sum per round; decoder = decode_low_res (prompt encoding + decoder, low-res outputs) "
                "for 1 box and 16 boxes in one call",
        "command": shlex.join(["python", "benchmarks/openvino_cpu.py", *sys.argv[1:]]),
        "note": args.note, "rounds": args.rounds, "image": image_name,
        "weights": "seeded random (samexport.testing.random_state_dict); latency does not depend on them",
        "machine": {"cpu_flags": flags, "cores": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "versions": versions, "results": results, "overhead_vs_raw_openvino": overhead,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def to_markdown(doc: dict) -> str:
    labels = list(next(iter(doc["results"].values())))
    lines = [
        "# OpenVINO vs ONNX Runtime on the CPU, per stage",
        "",
        f"{doc['what']}. {doc['rounds']} round-robin rounds in one run, medians; speedup = median of the "
        f"per-round ratios ONNX Runtime / backend. Image: {doc['image']}. Weights: {doc['weights']}. "
        f"Machine: {doc['machine']['cores']} cores, CPU flags {', '.join(doc['machine']['cpu_flags'])}; load average "
        f"{doc['machine']['load_average_before']} before, {doc['machine']['load_average_after']} after"
        + (f"; {doc['note']}" if doc["note"] else "") + f". Versions: {doc['versions']}.",
        "",
        "| artifact, stage | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, row in doc["results"].items():
        cells = [f"{row[c]['median_ms']:.1f} ms ({row[c]['speedup_vs_onnxruntime']['median_of_per_round']:.2f}x)" for c in labels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    int8 = [(key, row) for key, row in doc["results"].items()
            if "speedup_vs_onnxruntime_fp32_artifact" in next(iter(row.values()))]
    if int8:
        lines += ["", "int8 artifacts against ONNX Runtime on the fp32 artifact (median of per-round ratios):", ""]
        for key, row in int8:
            parts = [f"{c} {row[c]['speedup_vs_onnxruntime_fp32_artifact']['median_of_per_round']:.2f}x" for c in labels]
            lines.append(f"- {key}: " + ", ".join(parts))
    if doc.get("auto_opens"):
        lines += ["", "`auto` opened (encoder+decoder): " + ", ".join(f"{k}: `{v}`" for k, v in doc["auto_opens"].items())]
    lines += ["", "Our overhead against raw OpenVINO on the same graphs (median of per-round ratios; 1.00 = none):", ""]
    for key, row in doc["overhead_vs_raw_openvino"].items():
        parts = [f"{k} {v['median_of_per_round']:.3f}" for k, v in row.items() if "median_of_per_round" in v]
        lines.append(f"- {key}: " + "; ".join(parts))
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
