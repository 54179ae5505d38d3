"""The FP32 attention form of an FP16 encoder: what deriving it costs, and its CPU latency.

    python benchmarks/fp32_attention.py ARTIFACT_DIR [--rounds 3] [--derive 3]

``ARTIFACT_DIR`` is an fp16 artifact (``samexport build --fp16 --no-engines``). Reports, for the
decision of issue 24 (carry the safe graph in the artifact, or derive it on the device):

- the artifact's size and its ``encoder.onnx`` size (what carrying a second encoder would add);
- the wall time of ``upcast_attention`` on ``encoder.onnx`` (load, rewrite, save), ``--derive``
  times, median: what ``samexport engines --fallback`` spends on the device before its build;
- the encoder's ONNX Runtime CPU latency, plain FP16 graph against the safe form, one session
  each (no memory arena, as samexport opens fp16 graphs), run round robin ``--rounds`` times on
  one preprocessed photo-like image, medians and the median of per-round ratios.

Writes ``benchmarks/results/fp32-attention-<variant>-cpu.json`` with the machine's load and CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.precision.attention_fp32 import upcast_attention
from samexport.testing import make_image
from samexport.transforms import preprocess


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted(set(re.findall(r"\b(avx512_bf16|avx512_vnni|amx_bf16|avx512f|avx2)\b", text)))


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--derive", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1 or args.derive < 1:
        parser.error("--rounds and --derive must be at least 1")
    load_before = os.getloadavg()
    manifest = read_manifest(args.artifact)
    encoder = args.artifact / C.ENCODER_ONNX
    artifact_bytes = sum(p.stat().st_size for p in args.artifact.rglob("*") if p.is_file())

    with tempfile.TemporaryDirectory() as tmp:
        safe = Path(tmp) / "encoder-fp32-attention.onnx"
        derive = []
        for _ in range(args.derive):
            start = time.perf_counter()
            report = upcast_attention(encoder, safe)
            derive.append(time.perf_counter() - start)
        safe_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())

        image = preprocess(make_image(768, 1024))
        sessions = {"fp16": session(encoder), "fp32-attention": session(safe)}
        outputs = {name: s.run(None, {C.IMAGE.name: image})[0] for name, s in sessions.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {C.IMAGE.name: image})
                times[name].append(time.perf_counter() - start)

    ratios = [b / a for a, b in zip(times["fp16"], times["fp32-attention"])]
    a, b = outputs["fp16"], outputs["fp32-attention"]
    result = {
        "variant": manifest.variant,
        "precision": manifest.precision,
        "attention": manifest.attention,
        "artifact_mb": round(artifact_bytes / 1e6, 1),
        "encoder_onnx_mb": round(encoder.stat().st_size / 1e6, 1),
        "safe_encoder_onnx_mb": round(safe_bytes / 1e6, 1),
        "derive_seconds": [round(t, 2) for t in derive],
        "derive_median_s": round(statistics.median(derive), 2),
        "cores": report.cores,
        "fp32_nodes": report.fp32_nodes,
        "latency_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "latency_median_s": {name: round(statistics.median(ts), 3) for name, ts in times.items()},
        "ratio_safe_over_fp16_median": round(statistics.median(ratios), 3),
        "embedding_cosine_safe_vs_fp16": float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))),
        "machine": {
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_before": load_before, "load_after": os.getloadavg(), "cpu_flags": cpu_flags(),
        },
        "command": f"python benchmarks/fp32_attention.py {args.artifact} --rounds {args.rounds} --derive {args.derive}",
    }
    out = Path(__file__).parent / "results" / f"fp32-attention-{manifest.variant}-cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
