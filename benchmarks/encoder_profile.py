"""Where the vit_b encoder's time goes on ONNX Runtime CPU: time per op type, per attention mode.

    python benchmarks/encoder_profile.py                          # plain and fused-pattern, 3 runs
    python benchmarks/encoder_profile.py --modes plain onnx-attention --runs 5

Exports the encoder of a vit_b with seeded random weights (``samexport.testing``; latency does
not depend on the weights) once per ``--attention`` mode, then, round robin so that a noisy
machine slows every mode alike, runs each graph with ONNX Runtime's profiler on. ONNX Runtime
writes one event per node run; the events are summed per op type (MatMul, Add, Softmax, ...)
and per run, and the median over the runs is reported next to the median wall time of a run and
the machine's peak matmul GFLOP/s measured in the same process (``bench.flops``), which is the
figure issue 14's "65 % of peak" target is stated against.

Writes ``benchmarks/results/encoder-profile-vit_b-cpu.json`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def export_graphs(modes: list[str], folder: Path, variant: str) -> dict[str, Path]:
    """One ``encoder.onnx`` per attention mode, from the same random weights."""
    from samexport import constants as C
    from samexport.export.to_onnx import export_encoder
    from samexport.testing import random_state_dict
    from samexport.variants import build_sam

    sam = build_sam(variant).eval()
    sam.load_state_dict(random_state_dict(variant))
    graphs = {}
    for mode in modes:
        path = folder / f"encoder-{variant}-{mode}.onnx"
        if not path.exists():
            print(f"exporting the {variant} encoder, --attention {mode}", flush=True)
            export_encoder(sam, path, opset=C.default_opset(mode), attention=mode)
        graphs[mode] = path
    return graphs


def profiled_run(session, image: np.ndarray) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run and the milliseconds ONNX Runtime's profiler gives each op type,
    and each op type with its output shape (``"Add 12x4096x64x64"``: which Add is the costly one)."""
    start = time.perf_counter()
    session.run(None, {"image": image})
    seconds = time.perf_counter() - start
    profile = Path(session.end_profiling())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            shapes = [next(iter(t.values())) for t in event["args"].get("output_type_shape", [])]
            per_op[op] += event["dur"] / 1000
            per_op[f"{op} " + ",".join("x".join(map(str, s)) for s in shapes)] += event["dur"] / 1000
    profile.unlink()
    return seconds, dict(per_op)


def open_profiled(path: Path, profile_dir: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_dir / path.stem)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--modes", nargs="+", default=["plain", "fused-pattern"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    import onnxruntime as ort

    from samexport.bench.flops import encoder_gflop, measure_peak_matmul

    args.work.mkdir(parents=True, exist_ok=True)
    graphs = export_graphs(args.modes, args.work, args.variant)
    image = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    peak = measure_peak_matmul()
    seconds: dict[str, list[float]] = {m: [] for m in args.modes}
    op_ms: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as profiles:
        for round_ in range(args.runs + 1):  # round 0 warms every session up and is dropped
            for mode in args.modes:
                session = open_profiled(graphs[mode], Path(profiles), args.threads)
                if round_ == 0:
                    session.run(None, {"image": image})
                    Path(session.end_profiling()).unlink()
                    continue
                wall, per_op = profiled_run(session, image)
                seconds[mode].append(wall)
                op_ms[mode].append(per_op)
                print(f"round {round_} {mode}: {wall:.2f} s", flush=True)

    gflop = encoder_gflop(args.variant)
    results = {}
    for mode in args.modes:
        keys = sorted({key for run in op_ms[mode] for key in run})
        all_medians = {key: statistics.median(run.get(key, 0.0) for run in op_ms[mode]) for key in keys}
        medians = {key: ms for key, ms in all_medians.items() if " " not in key}  # op types alone
        by_shape = {key: ms for key, ms in all_medians.items() if " " in key}
        total = sum(medians.values())
        wall = statistics.median(seconds[mode])
        results[mode] = {
            "median_seconds": wall,
            "gflops": gflop / wall,
            "fraction_of_peak": gflop / wall / peak["gflops"],
            "op_type_ms": dict(sorted(medians.items(), key=lambda kv: -kv[1])),
            "op_type_share": {op: ms / total for op, ms in sorted(medians.items(), key=lambda kv: -kv[1])},
            "op_and_output_shape_ms_top": dict(sorted(by_shape.items(), key=lambda kv: -kv[1])[:20]),
            "seconds": seconds[mode],
            # per round, so a machine that slowed one round slows both sides of the ratio
            f"ratio_to_{args.modes[0]}_median": statistics.median(
                t / base for t, base in zip(seconds[mode], seconds[args.modes[0]])),
        }
    record = {
        "command": "python benchmarks/encoder_profile.py " + " ".join(
            ["--variant", args.variant, "--modes", *args.modes, "--runs", str(args.runs)]
            + (["--threads", str(args.threads)] if args.threads else [])),
        "note": args.note,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "loadavg_at_end": os.getloadavg()},
        "onnxruntime": ort.__version__,
        "encoder_gflop": gflop,
        "peak_matmul": peak,
        "modes": results,
    }
    output = args.output or ROOT / "benchmarks" / "results" / f"encoder-profile-{args.variant}-cpu.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    for mode, r in results.items():
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(r["op_type_share"].items())[:6])
        ratio = r[f"ratio_to_{args.modes[0]}_median"]
        print(f"{mode}: {r['median_seconds']:.2f} s median ({ratio:.2f}x the time of {args.modes[0]}), "
              f"{r['fraction_of_peak']:.0%} of peak; {top}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
