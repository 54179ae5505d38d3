"""Images per second of ``samexport.datasets.embed``: local executor and Ray Data, 1 and 2 workers.

    python benchmarks/datasets.py --workdir /tmp/samexport-datasets \\
        --json benchmarks/results/datasets-embed-tiny-cpu.json --markdown benchmarks/results/datasets-embed-tiny-cpu.md

Each configuration embeds the same ``--images`` synthetic pictures (``--size``, PNG) into a fresh
output folder ``--repeats`` times; a run's time is the whole ``embed`` call (listing, manifest,
opening the artifact in every worker, encoding, Parquet writes), so it includes each run's
worker start-up: the local pool's spawned processes, Ray's actors. Ray is initialised once
(``ray.init(num_cpus=os.cpu_count())``, timed separately) and shared by the Ray runs. The
per-image Ray overhead is (Ray 1-worker median - local 1-worker median) / images. Each
configuration also embeds a single image ``--repeats`` times: that median is its fixed start-up
cost, and (images - 1) / (median - start-up) its steady images/s. Threads: one
worker uses every core (ONNX Runtime's default locally, ``cpus // workers`` on Ray); two workers
get half the cores each.

The artifact defaults to the tiny variant with seeded random weights (built on first use into
``--workdir``); ``--artifact`` times another one (vit_b takes ~5 s per image on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]


def _tiny_artifact(workdir: Path) -> Path:
    artifact = workdir / "tiny-fp32"
    if not artifact.is_dir():
        from samexport.pipeline import build
        from samexport.testing import save_random_checkpoint

        checkpoint = save_random_checkpoint("tiny", workdir / "sam_tiny_random.pth")
        build("tiny", checkpoint=checkpoint, output=artifact, parity=False)
    return artifact


def _images(workdir: Path, count: int, height: int, width: int) -> Path:
    from PIL import Image

    from samexport.testing import make_image

    folder = workdir / f"images-{count}-{height}x{width}"
    if not folder.is_dir():
        staging = workdir / f".{folder.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(make_image(height, width, seed=i)).save(staging / f"img{i:04d}.png")
        staging.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/samexport-datasets"))
    parser.add_argument("--artifact", type=Path, help="artifact directory (default: tiny, random weights)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="480x640", help="HxW of the synthetic pictures")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--note", default="")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    import ray

    import samexport
    from samexport.datasets import embed, read_rows

    args.workdir.mkdir(parents=True, exist_ok=True)
    height, width = (int(v) for v in args.size.split("x"))
    artifact = args.artifact or _tiny_artifact(args.workdir)
    folder = _images(args.workdir, args.images, height, width)
    cpus = os.cpu_count() or 1

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start

    def timed(images: list[Path], expected: int, executor, workers, threads, name) -> float:
        output = args.workdir / f"out-{name}"
        shutil.rmtree(output, ignore_errors=True)
        result = embed(artifact, images, output, executor=executor, workers=workers,
                       batch_size=args.batch_size, threads=threads, progress=False)
        assert result.written == expected == read_rows(output, columns=["path"]).num_rows
        shutil.rmtree(output)
        print(f"{name}: {result.seconds:.2f} s", file=sys.stderr)
        return result.seconds

    load_before = os.getloadavg()
    one_image = [min(folder.iterdir())]
    results = []
    for executor, workers in CONFIGS:
        threads = None if workers == 1 and executor == "local" else max(1, cpus // workers)
        seconds, startup = [], []
        for repeat in range(args.repeats):
            seconds.append(timed([folder], args.images, executor, workers, threads, f"{executor}-x{workers}-{repeat}"))
            startup.append(timed(one_image, 1, executor, workers, threads, f"{executor}-x{workers}-one-{repeat}"))
        median, fixed = statistics.median(seconds), statistics.median(startup)
        results.append({
            "executor": executor, "workers": workers, "threads_per_worker": threads or cpus,
            "seconds": seconds, "median_s": median, "images_per_s": args.images / median,
            "one_image_seconds": startup, "startup_s": fixed,
            "steady_images_per_s": (args.images - 1) / (median - fixed) if median > fixed else None,
        })
    ray.shutdown()
    load_after = os.getloadavg()

    by = {(r["executor"], r["workers"]): r for r in results}
    overhead = (by["ray", 1]["median_s"] - by["local", 1]["median_s"]) / args.images
    import onnxruntime

    from samexport.artifacts import read_manifest

    manifest = read_manifest(artifact)
    command = ["python", "benchmarks/datasets.py", "--images", str(args.images), "--size", args.size,
               "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
    command += ["--artifact", str(args.artifact)] if args.artifact else []
    command += ["--json", str(args.json)] if args.json else []
    command += ["--markdown", str(args.markdown)] if args.markdown else []
    report = {
        "what": "samexport.datasets.embed images/s, whole call per run, median of repeats",
        "variant": manifest.get("variant"), "precision": manifest.get("precision"),
        "images": args.images, "size": [height, width], "batch_size": args.batch_size, "repeats": args.repeats,
        "load_average_before_after": [load_before, load_after], "ray_init_s": ray_init_s, "ray_overhead_s_per_image_1_worker": overhead, "results": results,
        "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"samexport": samexport.__version__, "ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
        "note": args.note, "command": " ".join(command),
    }
    lines = [
        f"# `embed` throughput: {report['variant']} {report['precision']}, {args.images} images {height}x{width}",
        "",
        *([f"> {args.note}", ""] if args.note else []),
        (
            f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; "
            f"after: {', '.join(f'{v:.1f}' for v in load_after)} on {cpus} CPUs."
        ),
        "",
        "| executor | workers | threads / worker | median s | images/s | start-up s (1-image job) | steady images/s | runs (s) |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['executor']} | {r['workers']} | {r['threads_per_worker']} | {r['median_s']:.2f} | "
          f"{r['images_per_s']:.2f} | {r['startup_s']:.2f} | "
          f"{'n/a' if r['steady_images_per_s'] is None else format(r['steady_images_per_s'], '.2f')} | "
          f"{', '.join(f'{s:.2f}' for s in r['seconds'])} |" for r in results),
        "",
        (
            f"Ray overhead at 1 worker: {overhead * 1000:.0f} ms per image over the local executor "
            f"(actor start-up included; `ray.init` took {ray_init_s:.1f} s once, not included)."
        ),
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
