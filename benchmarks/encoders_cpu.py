"""Image encoders of SAM 2.1 (four sizes), vit_b and mobile_sam on the CPU backends, in one run.

    python benchmarks/encoders_cpu.py --work /tmp/encw --rounds 3

Builds one fp32 artifact per variant from seeded random weights (``samexport.testing``'s
``save_random_checkpoint``, the official checkpoint layouts; latency does not depend on the
weights), without the build's parity check or stored references, one variant at a time. Then
times the encoder graph (``backend.run_encoder`` on the family's preprocessed 1x3x1024x1024
input of one photo: SAM 2.1's three outputs, SAM's one) on ONNX Runtime (``onnxruntime-cpu``),
OpenVINO f32 and, where the CPU has it, OpenVINO bf16, with samexport's session options.

Every round runs every (variant, backend) once, in the same order, so a loaded machine slows them
alike; each (variant, backend) is opened in its turn, warmed up with ``--warmup`` untimed calls
(default 1) and closed after its turn (``--one-at-a-time`` in ``openvino_cpu.py``): one model in memory at a time.
Reports medians over the rounds and, per backend, the median of the per-round ratios against
vit_b on ONNX Runtime (and against vit_b on the same backend). Records the CPU flags and the load
average before and after. Writes ``benchmarks/results/cpu-encoders-sam2.{json,md}``; deletes the
artifacts and checkpoints it made unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The baseline first, then the cheaper encoders: on a loaded machine a cut-short run (--report-only)
# still has the baseline and the small models in its last round.
VARIANTS = ("vit_b", "sam2.1_hiera_tiny", "sam2.1_hiera_small", "mobile_sam", "sam2.1_hiera_base_plus",
            "sam2.1_hiera_large")
BASELINE = ("vit_b", "onnxruntime-cpu")


def _build(variant: str, work: Path) -> Path:
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    out = work / f"{variant}-fp32"
    if not (out / "manifest.json").exists():
        checkpoint = work / f"{variant}_random.pt"
        if not checkpoint.exists():
            save_random_checkpoint(variant, checkpoint)
        print(f"building {out}", flush=True)
        build(variant, checkpoint=checkpoint, output=out, engines="skip", parity=False, references=False)
        checkpoint.unlink()  # the artifact is all the benchmark needs; checkpoints are ~0.1-0.9 GB
    return out


def _input(variant: str, image):
    from samexport.family_transforms import preprocess_for
    from samexport.variants import get_model

    return preprocess_for(get_model(variant).contract)(image)


def _gflop(variant: str) -> float:
    from samexport.bench.flops import encoder_gflop

    return encoder_gflop(variant)  # either family's count


def _ratio(numerators: list[float], denominators: list[float]) -> dict:
    per_round = [n / d for n, d in zip(numerators, denominators)]
    return {"median_of_per_round": round(statistics.median(per_round), 4), "per_round": [round(r, 4) for r in per_round]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-encoders")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls after opening, per turn (0: the timed call is the first after opening, "
                             "for a loaded machine where a round of warm-ups does not fit)")
    parser.add_argument("--note", default="")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts in --work (default: delete them)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the results from <work>/times.json (saved after every call) of a run that was cut "
                             "short: every call measured, ratios over the rounds each pair has in common")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if "vit_b" not in variants or args.rounds < 1 or args.warmup < 0:
        parser.error("--variants must include vit_b (the baseline) and --rounds be at least 1")

    import openvino

    from samexport.bench.inputs import default_bench_image
    from samexport.bench.run import cpu_flags
    from samexport.runtime.backends import open_backend
    from samexport.runtime.openvino_backend import device_capabilities
    from samexport.utils import package_versions

    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "times.json"
    specs = {"onnxruntime-cpu": "onnxruntime-cpu", "openvino f32": "openvino:precision=f32"}
    if "BF16" in device_capabilities(openvino.Core(), "CPU"):
        specs["openvino bf16"] = "openvino:precision=bf16"
    image_name, image = default_bench_image()
    if args.report_only:
        state = json.loads(saved.read_text())
        times = {tuple(key.split("|")): runs for key, runs in state["times"].items()}
        args.rounds, args.warmup, args.note = state["rounds"], state["warmup"], state["note"]
        sys.argv[1:] = state["argv"]  # the command recorded is the run's
        variants = [v for v in variants if (v, "onnxruntime-cpu") in times]
        _report(args, variants, specs, times, image_name, state["load_before"], os.getloadavg(), state["uptime_before"],
                _uptime(), cpu_flags(), package_versions, complete=False)
        return
    uptime_before = _uptime()
    artifacts = {variant: _build(variant, args.work) for variant in variants}
    times: dict[tuple[str, str], list[float]] = {}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for variant in variants:
            x = _input(variant, image)
            for label, spec in specs.items():
                backend = open_backend(artifacts[variant], spec)
                for _ in range(args.warmup):
                    backend.run_encoder(x)  # untimed
                start = time.perf_counter()
                backend.run_encoder(x)
                times.setdefault((variant, label), []).append(time.perf_counter() - start)
                backend = None  # closed after its turn: one model in memory at a time
                print(f"  {variant} {label}: {times[(variant, label)][-1] * 1e3:.0f} ms", flush=True)
                saved.write_text(json.dumps({"times": {"|".join(k): v for k, v in times.items()}, "load_before": load_before,
                                             "uptime_before": uptime_before, "argv": sys.argv[1:], "rounds": args.rounds,
                                             "warmup": args.warmup, "note": args.note}))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{v} {label} {times[(v, label)][-1] * 1e3:.0f} ms" for v in variants for label in specs), flush=True)
    load_after = os.getloadavg()
    uptime_after = _uptime()
    _report(args, variants, specs, times, image_name, load_before, load_after, uptime_before, uptime_after,
            cpu_flags(), package_versions, complete=True)
    if not args.keep:
        for path in artifacts.values():
            shutil.rmtree(path, ignore_errors=True)


def _report(args, variants, specs, times, image_name, load_before, load_after, uptime_before, uptime_after, flags,
            package_versions, *, complete: bool) -> None:
    results = {}
    for variant in variants:
        row = {"gflop": round(_gflop(variant), 1)}
        for label in specs:
            runs = times.get((variant, label))
            if not runs:
                continue
            row[label] = {
                "median_ms": round(statistics.median(runs) * 1e3, 1), "min_ms": round(min(runs) * 1e3, 1),
                "max_ms": round(max(runs) * 1e3, 1), "runs_ms": [round(t * 1e3, 1) for t in runs],
                "over_vit_b_onnxruntime": _ratio(runs, times[BASELINE]),
                "over_vit_b_same_backend": _ratio(runs, times[("vit_b", label)]),
            }
        results[variant] = row
    document = {
        "what": "image encoder graph latency (backend.run_encoder on the family's preprocessed 1x3x1024x1024 input; "
                "SAM 2.1: embedding + two high-resolution maps, SAM: the embedding), fp32 artifacts, "
                "samexport's session options; each (variant, backend) opened in its turn (compiled, for OpenVINO), "
                f"{args.warmup} untimed call(s), then one timed call per round",
        "command": shlex.join(["python", "benchmarks/encoders_cpu.py", *sys.argv[1:]]),
        "note": args.note, "rounds": args.rounds, "warmup_calls": args.warmup, "image": image_name,
        "complete": complete,  # False: written by --report-only from the calls a cut-short run saved
        "weights": "seeded random (samexport.testing.save_random_checkpoint, official checkpoint layouts); "
                   "latency does not depend on them",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "cpu_flags": flags,
                    "openvino_bf16": "openvino bf16" in specs,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after],
                    "uptime_before": uptime_before, "uptime_after": uptime_after},
        "versions": package_versions("samexport", "onnxruntime", "openvino", "onnx", "torch", "numpy"),
        "backends": specs, "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-encoders-sam2.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "cpu-encoders-sam2.md").write_text(to_markdown(document))
    print(to_markdown(document))


def _uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()


def to_markdown(doc: dict) -> str:
    labels = list(doc["backends"])
    machine = doc["machine"]
    lines = [
        "# Image encoders on the CPU: SAM 2.1 (four sizes), vit_b, mobile_sam",
        "",
        f"{doc['what']}. {doc['rounds']} round-robin rounds asked for in one run"
        + ("" if doc.get("complete", True) else " (cut short: n = the calls each made; 'not reached' = none)")
        + "; median ms, and in brackets the median "
        f"of the per-round ratios against vit_b on ONNX Runtime (< 1: faster) and n. Image: {doc['image']}. "
        f"Weights: {doc['weights']}. Machine: {machine['cores']} cores, CPU flags {', '.join(machine['cpu_flags'])}; "
        f"`uptime` before: `{machine['uptime_before']}`, after: `{machine['uptime_after']}`"
        + (f"; {doc['note']}" if doc["note"] else "") + f". Versions: {doc['versions']}.",
        "",
        "| variant | GFLOP | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for variant, row in doc["results"].items():
        cells = [f"{row[label]['median_ms']:.0f} ms ({row[label]['over_vit_b_onnxruntime']['median_of_per_round']:.2f}; "
                 f"n={len(row[label]['runs_ms'])})" if label in row else "not reached" for label in labels]
        lines.append(f"| {variant} | {row['gflop']} | " + " | ".join(cells) + " |")
    lines += ["", "Against vit_b on the same backend (median of per-round ratios):", ""]
    for variant, row in doc["results"].items():
        if variant != "vit_b":
            lines.append(f"- {variant}: " + ", ".join(
                f"{label} {row[label]['over_vit_b_same_backend']['median_of_per_round']:.2f}" for label in labels if label in row))
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
