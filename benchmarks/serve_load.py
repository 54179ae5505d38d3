"""Prompt requests per second against ``samexport serve``: 1, 4 and 16 concurrent clients,
prompts batched across requests (adaptive window, fixed window) against decoded one by one.

    python benchmarks/serve_load.py                          # builds the tiny artifact
    python benchmarks/serve_load.py --artifact engines/vit_b-fp32 --requests 64

Three servers run side by side on 127.0.0.1 (``samexport serve`` subprocesses, free ports):
``adaptive`` (``--batch-window-ms 5 --max-batch 32``, the defaults: the batch closes as soon as
no other prompt is queued or on its way, 5 ms at most), ``fixed`` (the same with
``--fixed-window``: every batch that is not full waits the whole 5 ms) and ``one_by_one``
(``--max-batch 1``). One image is uploaded to each; then, for each client count, each server in
turn (alternating, ``--rounds`` times) answers ``--requests`` single-point prompt requests
(multimask, RLE output) sent by closed-loop client threads (each sends its next request when the
previous answer arrives). Reported per server and client count: requests per second and latency
percentiles (medians over rounds), the mean prompts per decoder call, each batched server's
throughput over one-by-one's, and the machine's load average before and after each level. The tiny variant's decoder is SAM's decoder (only its encoder is
small), so the decoder work per prompt is vit_b's; the weights are random.

Writes ``benchmarks/results/serve-cpu.json`` and ``.md``. Clients and servers share the machine's
cores: on a 2-core machine the figures include the clients' own work.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "adaptive": ["--batch-window-ms", "5", "--max-batch", "32", "--adaptive-window"],
    "fixed": ["--batch-window-ms", "5", "--max-batch", "32", "--fixed-window"],
    "one_by_one": ["--max-batch", "1"],
}
BATCHED = ("adaptive", "fixed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(artifact: Path, options: list[str]):
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "samexport.cli", "serve", str(artifact), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"samexport serve exited: {process.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("samexport serve did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(60)


def run_level(base: str, image_id: str, clients: int, requests: int, size: tuple[int, int]) -> dict:
    """``requests`` prompt requests from ``clients`` closed-loop threads; throughput and latency."""
    import httpx

    height, width = size
    rng = np.random.default_rng(clients)
    points = np.column_stack([rng.uniform(0, width, requests), rng.uniform(0, height, requests)]).tolist()
    latencies, batches = [], []
    lock, next_index = threading.Lock(), iter(range(requests))
    barrier = threading.Barrier(clients)

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            http.get("/v1/health")  # connect before the clock starts
            barrier.wait()
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                start = time.perf_counter()
                answer = http.post("/v1/masks", json={"image_id": image_id, "points": [points[i]], "labels": [1]})
                elapsed = time.perf_counter() - start
                answer.raise_for_status()
                with lock:
                    latencies.append(elapsed * 1000)
                    batches.append(answer.json()["batch_size"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    seconds = time.perf_counter() - start
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"requests_per_s": requests / seconds, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "mean_batch": float(np.mean(batches))}


def main() -> None:
    import httpx
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="artifact directory (default: build the tiny variant)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="prompt requests per client count, server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/serve-cpu")
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="samexport-serve-load-") as tmp:
        artifact = args.artifact
        if artifact is None:
            from samexport.pipeline import build
            from samexport.testing import save_random_checkpoint

            checkpoint = save_random_checkpoint("tiny", Path(tmp) / "tiny.pth")
            artifact = build("tiny", checkpoint=checkpoint, output=Path(tmp) / "tiny-fp32").artifact_dir
        pixels = (np.random.default_rng(0).random((*args.image_size, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        with contextlib.ExitStack() as stack:
            bases = {mode: stack.enter_context(server(artifact, options)) for mode, options in MODES.items()}
            ids = {}
            for mode, base in bases.items():
                answer = httpx.post(f"{base}/v1/images", files={"image": ("x.png", buffer.getvalue())}, timeout=600)
                ids[mode] = answer.raise_for_status().json()["image_id"]
                run_level(base, ids[mode], 1, 4, tuple(args.image_size))  # warm up
            runs = {mode: {c: [] for c in args.clients} for mode in MODES}
            loads = []
            for _ in range(args.rounds):
                for clients in args.clients:
                    for mode, base in bases.items():
                        loads.append(os.getloadavg()[0])
                        runs[mode][clients].append(run_level(base, ids[mode], clients, args.requests, tuple(args.image_size)))
            loads.append(os.getloadavg()[0])

    table = {mode: {str(c): {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in levels.items()}
             for mode, levels in runs.items()}
    ratios = {mode: {str(c): table[mode][str(c)]["requests_per_s"] / table["one_by_one"][str(c)]["requests_per_s"]
                     for c in args.clients} for mode in BATCHED}
    flags = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_bf16", "avx512_vnni", "amx_bf16"}) \
        if Path("/proc/cpuinfo").exists() else []
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "artifact": str(args.artifact or "tiny (built, random weights; SAM's decoder)"),
        "image_size": args.image_size, "requests": args.requests, "rounds": args.rounds,
        "modes": {m: " ".join(o) for m, o in MODES.items()},
        "results": table, "throughput_ratio_over_one_by_one": ratios,
        "machine": {"cpus": os.cpu_count(), "cpu_flags": flags, "load_1min_during": [min(loads), max(loads)],
                    "python": platform.python_version()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# samexport serve: prompt requests on the CPU", "",
        (
            f"`python benchmarks/{result['command']}`; {args.requests} single-point requests per client count, "
            f"server and round, medians of {args.rounds} rounds; image {args.image_size[1]}x{args.image_size[0]}; "
            f"{result['artifact']}; {os.cpu_count()} CPUs, flags {', '.join(flags) or 'none of avx512_bf16/vnni/amx'}; "
            f"1-minute load average {min(loads):.1f} to {max(loads):.1f} during the run (other jobs share the machine). "
            "Clients run on the same cores."
        ),
        "",
        "| clients | server | requests/s | p50 ms | p90 ms | p99 ms | prompts per decoder call |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in args.clients:
        for mode in MODES:
            r = table[mode][str(c)]
            lines.append(f"| {c} | {mode} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['mean_batch']:.2f} |")
    lines.append("")
    for mode in BATCHED:
        lines.append(f"Throughput {mode} / one by one: " + ", ".join(f"{c} clients {ratios[mode][str(c)]:.2f}x" for c in args.clients))
    lines.append("")
    args.output.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
