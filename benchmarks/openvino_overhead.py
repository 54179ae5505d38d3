"""samexport's OpenVINO decoder call against a raw OpenVINO infer request on the same compiled graph.

    python benchmarks/openvino_overhead.py /tmp/ovw/vit_b-fp32 /tmp/ovw/mobile_sam-fp32 --pairs 300

The decoder call is 10-30 ms, so ``openvino_cpu.py``'s three rounds of one sample each cannot show a
5% difference on a shared machine. This times many pairs instead: for each pair the raw call
(``compiled.create_infer_request().infer(feed)``) and the backend's ``decode`` on the same feed
(the arrays ``decode_low_res`` builds for one box), in alternating order, and reports the median of
the per-pair ratios backend / raw. ``decode_low_res`` (prompt encoding included) is timed on its own
for reference. Writes ``benchmarks/results/openvino-overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino-overhead.json")
    args = parser.parse_args()

    _decoder_feed = _sibling("openvino_cpu")._decoder_feed  # the feed decode_low_res builds, as there

    from samexport.bench.inputs import decoder_prompts, default_bench_image
    from samexport.bench.run import cpu_flags
    from samexport.runtime.backends import open_backend
    from samexport.runtime.predictor import SamPredictor
    from samexport.utils import package_versions

    image_name, image = default_bench_image()
    prompts = decoder_prompts(image.shape[:2], (1,))
    document = {"command": " ".join(["python", *sys.argv]), "image": image_name, "pairs": args.pairs,
                "machine": {"cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "load_average_before": os.getloadavg()},
                "versions": package_versions("samexport", "openvino", "numpy"), "results": {}}
    for artifact in args.artifacts:
        predictor = SamPredictor(open_backend(artifact, "openvino:precision=f32"))
        predictor.set_image(image)
        feed = _decoder_feed(predictor, prompts["decoder_boxes_1"])
        backend = predictor.backend
        raw = backend.decoder.compiled.create_infer_request()
        calls = (lambda: raw.infer(feed), lambda: backend.decode(*feed.values()))
        for _ in range(5):  # warm-up
            calls[0]()
            calls[1]()
        seconds: tuple[list[float], list[float]] = ([], [])
        for pair in range(args.pairs):
            for which in ((0, 1) if pair % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                calls[which]()
                seconds[which].append(time.perf_counter() - start)
        low_res = []
        for _ in range(args.pairs):
            start = time.perf_counter()
            predictor.decode_low_res(**prompts["decoder_boxes_1"])
            low_res.append(time.perf_counter() - start)
        document["results"][artifact.name] = {
            "raw_infer_median_ms": round(statistics.median(seconds[0]) * 1e3, 3),
            "backend_decode_median_ms": round(statistics.median(seconds[1]) * 1e3, 3),
            "backend_over_raw_median_of_pairs": round(statistics.median(o / r for r, o in zip(*seconds)), 3),
            "decode_low_res_median_ms": round(statistics.median(low_res) * 1e3, 3),
        }
        print(artifact.name, document["results"][artifact.name], flush=True)
    document["machine"]["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(document, indent=2) + "\n")


def _sibling(name: str):
    """Another script of this folder, imported by its path (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
