"""Peak memory (RSS high-water) of large prompt batches against the predictor's decode budget.

Each case runs in its own process, so the high-water mark is that case's: the script sets the
image, warms the decoder up with two boxes, reads ``ru_maxrss``, runs the case, reads it again and
prints the growth as JSON. Issue 25, item 13.

    python benchmarks/decode_memory.py ARTIFACT boxes --count 256
    python benchmarks/decode_memory.py ARTIFACT amg --points-per-batch 576
    python benchmarks/decode_memory.py ARTIFACT boxes --count 256 --budget-mib 512

A SAM 2.1 artifact runs the ``amg`` case on ``SAM2ImagePredictor`` and its generator (the family's,
``samexport.amg.generator_class``); its ``boxes`` case is refused (``SAM2ImagePredictor.predict``
decodes a prompt batch in one call, with no budget).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time

import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _watchdog(limit_mib: float) -> None:
    """End this process (exit 3) once its resident memory passes ``limit_mib``, before the kernel's
    OOM killer picks some other process of a shared machine."""
    page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20

    def watch() -> None:
        while True:
            with open("/proc/self/statm") as stream:
                resident = int(stream.read().split()[1]) * page_mib
            if resident > limit_mib:
                print(json.dumps({"aborted_at_mib": round(resident, 1)}), flush=True)
                os._exit(3)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def measure(artifact: str, case: str, *, count: int, points_per_batch: int, budget_mib: int | None,
            height: int = 300, width: int = 400, abort_above_mib: float | None = None) -> dict:
    from samexport import constants as C
    from samexport.amg import generator_class
    from samexport.runtime.decode_budget import DEFAULT_DECODE_BUDGET
    from samexport.runtime.predictor import SamPredictor
    from samexport.runtime.predictors import contract_of
    from samexport.runtime.sam2_predictor import SAM2ImagePredictor

    budget = DEFAULT_DECODE_BUDGET if budget_mib is None else budget_mib << 20
    contract = contract_of(artifact)
    if contract is C.SAM2_GRAPHS and case != "amg":
        raise SystemExit("a SAM 2.1 artifact runs the amg case only")
    family = SAM2ImagePredictor if contract is C.SAM2_GRAPHS else SamPredictor
    predictor = family(artifact, decode_budget_bytes=budget)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    predictor.set_image(image)
    warm_up = np.array([[10, 10, 200, 150]] * 2)
    if contract is C.SAM2_GRAPHS:
        predictor.predict(box=warm_up)
    else:
        predictor.predict_batch(boxes=warm_up)
    before = _rss_mib()
    if abort_above_mib is not None:
        _watchdog(before + abort_above_mib)
    started = time.perf_counter()
    if case == "boxes":
        xs = np.sort(rng.uniform(0, width, (count, 2)), axis=1)
        ys = np.sort(rng.uniform(0, height, (count, 2)), axis=1)
        boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
        masks, _, _ = predictor.predict_batch(boxes=boxes)
        result = {"masks_shape": list(masks.shape), "output_mib": masks.nbytes / 2**20}
    else:
        generator = generator_class(contract)(predictor, points_per_side=24, points_per_batch=points_per_batch,
                                              pred_iou_thresh=0.0, stability_score_thresh=0.0)
        records = generator.generate(image)
        result = {"masks": len(records), "output_mib": 0.0}
    return {
        "model": contract.name, "case": case, "count": count if case == "boxes" else 24 * 24, "points_per_batch": points_per_batch,
        "budget_mib": budget / 2**20, "baseline_mib": round(before, 1), "growth_mib": round(_rss_mib() - before, 1),
        "seconds": round(time.perf_counter() - started, 2), **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("case", choices=["boxes", "amg"])
    parser.add_argument("--count", type=int, default=256, help="boxes in one predict_batch call")
    parser.add_argument("--points-per-batch", type=int, default=576, help="the mask generator's (24x24 grid)")
    parser.add_argument("--budget-mib", type=int, default=None, help="decode budget; default the predictor's")
    parser.add_argument("--abort-above-mib", type=float, default=None,
                        help="end with exit status 3 once memory grows past this (a shared machine's guard)")
    args = parser.parse_args()
    print(json.dumps(measure(args.artifact, args.case, count=args.count, points_per_batch=args.points_per_batch,
                             budget_mib=args.budget_mib, abort_above_mib=args.abort_above_mib)))


if __name__ == "__main__":
    main()
