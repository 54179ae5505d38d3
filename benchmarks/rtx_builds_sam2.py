"""TensorRT-RTX builds of SAM 2.1's plans on a machine without a GPU: build seconds and plan bytes.

    python benchmarks/rtx_builds_sam2.py --work /tmp/rtxw --variants sam2.1_hiera_tiny sam2.1_hiera_small \
        --precisions fp32 fp16 [--calib-dir photos/ --precisions int8]

For each variant and precision: an artifact from seeded random weights (``save_random_checkpoint``,
the official layout; build time and plan size do not depend on the weights), built without parity
check, references or engines, then ``samexport engines --builder tensorrt-rtx`` on it with the
default engine settings (``BuildConfig()``: prompts 1/1/64, points 1/2/16, 4 GiB workspace),
through :func:`samexport.engines.artifact.build_artifact_engines`, the code path of every family.
Records each plan's ``build_seconds`` (the TensorRT build alone, as the manifest has it), bytes, and
the graph's bytes, the load average before and after, the TensorRT-RTX version. One model at a time;
artifacts are deleted after their plans are measured unless ``--keep``. Writes
``benchmarks/results/rtx-builds-sam2.{json,md}``. TensorRT-RTX plans are test builds (they prove
the graphs parse and build; they are not the plans a GPU's TensorRT would make).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _measure(variant: str, precision: str, work: Path, calib_dir: Path | None, keep: bool) -> dict:
    from samexport import constants as C
    from samexport.engines.artifact import build_artifact_engines
    from samexport.engines.builder import BuildConfig
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    out = work / f"{variant}-{precision}"
    checkpoint = work / f"{variant}_random.pt"
    if not (out / C.MANIFEST).exists():
        if not checkpoint.exists():
            save_random_checkpoint(variant, checkpoint)
        print(f"building {out}", flush=True)
        extra = {"int8_target": "tensorrt", "calib_dir": calib_dir} if precision == "int8" else {}
        build(variant, checkpoint=checkpoint, output=out, precision=precision, engines="skip", parity=False,
              references=False, **extra)
    load_before = _load()
    started = time.perf_counter()
    manifest = build_artifact_engines(out, BuildConfig(), builder="tensorrt-rtx", on_step=print)
    wall = time.perf_counter() - started
    row = {
        "variant": variant, "precision": precision, "graphs": manifest.graphs.to_dict(),
        "load_before": load_before, "load_after": _load(), "wall_seconds": round(wall, 1),
        "tensorrt_module": manifest.engine("encoder").tensorrt_module,
        "tensorrt_version": manifest.engine("encoder").tensorrt_version,
    }
    for name, graph in (("encoder", C.ENCODER_ONNX), ("decoder", C.DECODER_ONNX)):
        record = manifest.engine(name)
        graph_bytes = sum((out / f).stat().st_size for f in (graph, f"{graph}.data") if (out / f).exists())
        row[name] = {"build_seconds": record.build_seconds, "plan_bytes": record.plan_bytes, "graph_bytes": graph_bytes,
                     "profiles": record.to_dict()["profiles"]}
    if not keep:
        shutil.rmtree(out)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["sam2.1_hiera_tiny", "sam2.1_hiera_small"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--calib-dir", type=Path, help="calibration photos (needed for int8)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "rtx-builds-sam2")
    args = parser.parse_args(argv)
    if "int8" in args.precisions and args.calib_dir is None:
        parser.error("int8 needs --calib-dir")
    os.environ.setdefault("SAMEXPORT_CACHE", str(args.work / "cache"))  # calibration cache out of the user's
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants:
        for precision in args.precisions:
            rows.append(_measure(variant, precision, args.work, args.calib_dir, args.keep))
            print(json.dumps(rows[-1]), flush=True)
        (args.work / f"{variant}_random.pt").unlink(missing_ok=True)
    command = "python benchmarks/rtx_builds_sam2.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "rows": rows}
    args.results.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# TensorRT-RTX builds of SAM 2.1's plans (no GPU)", "",
        (f"`{command}` ({result['when']}, {result['cpus']} CPUs; TensorRT-RTX "
         f"{rows[0]['tensorrt_version'] if rows else '?'}; default engine settings: prompts 1/1/64, points 1/2/16)."),
        "Build seconds are the TensorRT build alone (parse excluded), on a shared machine: read the load.", "",
        "| variant | precision | encoder s | encoder plan MB | encoder graph MB | decoder s | decoder plan MB | decoder graph MB | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        e, d = row["encoder"], row["decoder"]
        lines.append(
            f"| {row['variant']} | {row['precision']} | {e['build_seconds']:.1f} | {e['plan_bytes'] / 1e6:.1f} | "
            f"{e['graph_bytes'] / 1e6:.1f} | {d['build_seconds']:.1f} | {d['plan_bytes'] / 1e6:.1f} | "
            f"{d['graph_bytes'] / 1e6:.1f} | {row['load_before']} / {row['load_after']} |"
        )
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
