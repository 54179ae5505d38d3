"""The encoder's ``--attention`` forms on OpenVINO (f32 and bf16) next to ONNX Runtime, one run.

    python benchmarks/openvino_attention.py --work /tmp/ovw --rounds 3

Exports the vit_b encoder with seeded random weights once per mode (``encoder_profile.py``'s
``export_graphs``; latency does not depend on the weights), then, round robin so that a noisy
machine slows every runner alike, times one encoder call per (mode, runtime) per round: ONNX
Runtime's CPU provider, OpenVINO CPU with ``INFERENCE_PRECISION_HINT`` f32 and, where the CPU has
bf16, bf16. ``plugin`` is not timed: its nodes run only in TensorRT. Reports medians and the
median of per-round ratios against ``plain`` on the same runtime, and the largest difference of
each mode's embedding from ``plain``'s on that runtime (same weights, so the forms must agree).
Writes ``benchmarks/results/openvino-attention-vit_b.{json,md}``.
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
MODES = ("plain", "fused-pattern", "onnx-attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import onnxruntime as ort
    import openvino as ov

    from encoder_profile import export_graphs  # this folder's script (sys.path[0])
    from samexport.bench.run import cpu_flags
    from samexport.utils import package_versions

    args.work.mkdir(parents=True, exist_ok=True)
    graphs = export_graphs(list(MODES), args.work, args.variant)
    image = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    core = ov.Core()
    hints = ["f32"] + (["bf16"] if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else [])
    runners = {}
    for mode, path in graphs.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runners[(mode, "onnxruntime")] = lambda s=session: s.run(None, {"image": image})[0]
        for hint in hints:
            request = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()
            runners[(mode, f"openvino {hint}")] = lambda r=request: r.infer({0: image}, share_outputs=False)[0]
    outputs = {key: run() for key, run in runners.items()}  # warm-up, and the outputs compared
    load_before = os.getloadavg()
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    for round_ in range(args.rounds):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    load_after = os.getloadavg()

    runtimes = ["onnxruntime", *(f"openvino {h}" for h in hints)]
    results = {}
    for mode in MODES:
        for runtime in runtimes:
            key, plain = (mode, runtime), ("plain", runtime)
            reference = outputs[plain]
            results[f"{mode} {runtime}"] = {
                "median_ms": round(statistics.median(times[key]) * 1e3, 1),
                "runs_ms": [round(t * 1e3, 1) for t in times[key]],
                "vs_plain_same_runtime": round(statistics.median(
                    p / t for p, t in zip(times[plain], times[key])), 3),
                "vs_onnxruntime_plain": round(statistics.median(
                    p / t for p, t in zip(times[("plain", "onnxruntime")], times[key])), 3),
                "max_abs_diff_vs_plain": float(np.abs(outputs[key] - reference).max()),
            }
    document = {
        "command": shlex.join(["python", "benchmarks/openvino_attention.py", *sys.argv[1:]]),
        "variant": args.variant, "rounds": args.rounds, "note": args.note,
        "input": "seeded standard-normal 1x3x1024x1024; seeded random weights",
        "machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "versions": package_versions("samexport", "openvino", "onnxruntime"),
        "results": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"openvino-attention-{args.variant}"
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(document, runtimes))
    print(to_markdown(document, runtimes))


def to_markdown(doc: dict, runtimes: list[str]) -> str:
    machine = doc["machine"]
    lines = [
        f"# `--attention` forms of the {doc['variant']} encoder on ONNX Runtime and OpenVINO (CPU)",
        "",
        f"{doc['rounds']} round-robin rounds in one run, medians; in brackets the median of per-round ratios "
        f"against `plain` on the same runtime. Input: {doc['input']}. CPU flags {', '.join(machine['cpu_flags'])}, "
        f"{machine['cores']} cores; load average {machine['load_average_before']} before, "
        f"{machine['load_average_after']} after" + (f"; {doc['note']}" if doc["note"] else "")
        + f". Versions: {doc['versions']}.",
        "",
        "| mode | " + " | ".join(runtimes) + " |",
        "|---|" + "---|" * len(runtimes),
    ]
    for mode in MODES:
        cells = [f"{doc['results'][f'{mode} {r}']['median_ms']:.0f} ms ({doc['results'][f'{mode} {r}']['vs_plain_same_runtime']:.2f}x)"
                 for r in runtimes]
        lines.append(f"| `{mode}` | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
