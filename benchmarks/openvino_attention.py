"""The ``--attention`` forms of one vit_b attention core on OpenVINO (f32, bf16) next to ONNX Runtime.

    python benchmarks/openvino_attention.py --rounds 5                       # a global block (64x64 tokens)
    python benchmarks/openvino_attention.py --grid 14 --windows 25 --rounds 5  # a windowed block

The graphs are ``attention_forms.py``'s (this folder): one block's attention core with the
decomposed relative-position bias computed inside the graph, in the encoder's ``--attention``
forms ``plain``, ``fused-pattern`` and ``onnx-attention`` (``plugin`` runs only in TensorRT),
seeded random weights. Each graph runs on ONNX Runtime's CPU provider and on OpenVINO's CPU with
``INFERENCE_PRECISION_HINT`` f32 and, where the CPU has bf16, bf16; round robin, every (form,
runtime) once per round, so that a noisy machine slows each alike. Reports medians, the median
of per-round ratios against ``plain`` on the same runtime and against ONNX Runtime's ``plain``,
and each output's largest difference from the torch attention. A block, not the whole encoder,
so that a shared machine can run it: the encoder's 12 blocks are 4 such global and 8 windowed.
Writes ``benchmarks/results/openvino-attention-vit_b-{global,window}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "fused-pattern", "onnx-attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64, help="tokens per side: 64 global, 14 windowed")
    parser.add_argument("--windows", type=int, default=1, help="windows per image: 1 global, 25 windowed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import onnxruntime as ort
    import openvino as ov
    from attention_forms import (  # this folder's script (Python puts a script's folder first on its path)
        Core,
        export,
        random_block,
    )

    from samexport.bench.run import cpu_flags
    from samexport.utils import package_versions

    attn, qkv, reference = random_block(args.grid, args.windows)
    feed = qkv.numpy()
    core = ov.Core()
    hints = ["f32"] + (["bf16"] if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else [])
    runtimes = ["onnxruntime", *(f"openvino {h}" for h in hints)]
    runners, errors = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:
            path = Path(folder) / f"{mode}.onnx"
            export(Core(attn, mode, args.grid).eval(), qkv, path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            runners[(mode, "onnxruntime")] = lambda s=session: s.run(None, {"qkv": feed})[0]
            for hint in hints:
                request = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()
                runners[(mode, f"openvino {hint}")] = lambda r=request: r.infer({0: feed}, share_outputs=False)[0]
    for key, run in runners.items():  # the warm-up, and the outputs checked
        errors[key] = float(np.abs(run().reshape(reference.shape) - reference).max())
    load_before = os.getloadavg()
    times: dict[tuple, list[float]] = {key: [] for key in runners}
    for round_ in range(args.rounds):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    load_after = os.getloadavg()

    def ratio(base: tuple, key: tuple) -> float:
        return round(statistics.median(b / t for b, t in zip(times[base], times[key])), 3)

    results = {
        f"{mode} {runtime}": {
            "median_ms": round(statistics.median(times[(mode, runtime)]) * 1e3, 2),
            "runs_ms": [round(t * 1e3, 2) for t in times[(mode, runtime)]],
            "speedup_vs_plain_same_runtime": ratio(("plain", runtime), (mode, runtime)),
            "speedup_vs_onnxruntime_plain": ratio(("plain", "onnxruntime"), (mode, runtime)),
            "max_abs_error_vs_torch": errors[(mode, runtime)],
        }
        for mode in MODES for runtime in runtimes
    }
    scope = "global" if args.windows == 1 else "window"
    document = {
        "command": shlex.join(["python", "benchmarks/openvino_attention.py", *sys.argv[1:]]),
        "block": {"scope": scope, "windows": args.windows, "tokens": args.grid**2},
        "rounds": args.rounds, "note": args.note,
        "machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "versions": package_versions("samexport", "openvino", "onnxruntime"),
        "results": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"openvino-attention-vit_b-{scope}"
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(document, runtimes))
    print(to_markdown(document, runtimes))


def to_markdown(doc: dict, runtimes: list[str]) -> str:
    machine, block = doc["machine"], doc["block"]
    lines = [
        f"# `--attention` forms of one vit_b {block['scope']} attention core on ONNX Runtime and OpenVINO (CPU)",
        "",
        f"{block['windows']} window(s) of {block['tokens']} tokens, 12 heads. {doc['rounds']} round-robin rounds in "
        "one run, medians; in brackets the median of per-round speed-ups against ONNX Runtime's `plain`. "
        f"CPU flags {', '.join(machine['cpu_flags'])}, {machine['cores']} cores; load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after"
        + (f"; {doc['note']}" if doc["note"] else "") + f". Versions: {doc['versions']}.",
        "",
        "| mode | " + " | ".join(runtimes) + " |",
        "|---|" + "---|" * len(runtimes),
    ]
    for mode in MODES:
        cells = []
        for runtime in runtimes:
            row = doc["results"][f"{mode} {runtime}"]
            cells.append(f"{row['median_ms']:.1f} ms ({row['speedup_vs_onnxruntime_plain']:.2f}x)")
        lines.append(f"| `{mode}` | " + " | ".join(cells) + " |")
    lines += ["", "Largest difference from the torch attention: " + ", ".join(
        f"{key} {row['max_abs_error_vs_torch']:.1e}" for key, row in doc["results"].items()), "",
        f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
