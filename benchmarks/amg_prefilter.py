"""The mask generator's IoU prefilter: decoder time per prompt against the share of prompts whose masks are made.

    python benchmarks/amg_prefilter.py                 # vit_b's decoder, batches of 64 points, 9 rounds

Exports vit_b's decoder and its two halves (``decoder_scores.onnx``, ``decoder_masks.onnx``) with
seeded random weights (``samexport.testing``; latency does not depend on the weights) and times,
round robin so that a noisy machine slows every way alike, ``SamPredictor.decode_low_res_where``
as ``AutomaticMaskGenerator`` calls it: one batch of ``--points`` grid points (one foreground
point each) on one image embedding, the predictor's default memory budget, ONNX Runtime CPU.

- ``whole``: the backend without the halves: every prompt decoded whole, the needed rows
  selected (what the generator did before, and does on TensorRT engines);
- ``halves_<p>``: with the halves, ``needed`` keeping every k-th prompt so that ``p`` percent of
  them go through the second half (which makes the masks). Which prompts pass
  ``pred_iou_thresh`` depends on real weights and images; random weights cannot tell, so the
  share is the variable here.

Each round times every way once, in a shuffled order; the ratios ``whole / way`` are taken per round and their median
reported. Writes ``benchmarks/results/amg-prefilter-vit_b-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARES = (0, 25, 50, 75, 100)  # percent of the prompts whose masks are made


class WithoutHalves:
    """An ONNX Runtime backend with its decoder halves hidden."""

    has_decoder_halves = False

    def __init__(self, backend) -> None:
        self.backend, self.name, self.shares_mask_input = backend, backend.name, backend.shares_mask_input

    def encode(self, image):
        return self.backend.encode(image)

    def decode(self, *inputs):
        return self.backend.decode(*inputs)


def every_kth(share: int):
    """``needed`` keeping ``share`` percent of the prompts, spread over the batch."""

    def needed(iou: np.ndarray) -> np.ndarray:
        rows = np.arange(len(iou))
        return (rows * share) % 100 < share if share < 100 else np.ones(len(iou), bool)

    return needed


def main() -> None:
    from samexport import constants as C
    from samexport.bench.inputs import DEFAULT_IMAGE_SIZE
    from samexport.export.to_onnx import export_decoders, export_encoder
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import random_state_dict
    from samexport.variants import build_sam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=64, help="prompts per batch (points_per_batch)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/amg-prefilter-vit_b-cpu.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="samexport-amg-prefilter-") as tmp:
        folder = Path(tmp)
        sam = build_sam("vit_b").eval()
        sam.load_state_dict(random_state_dict("vit_b"))
        decoder, *halves = export_decoders(
            sam, folder / C.DECODER_ONNX, folder / C.DECODER_SCORES_ONNX, folder / C.DECODER_MASKS_ONNX
        )
        del sam
        # A backend needs an encoder graph beside the decoder; the tiny variant's is never run.
        encoder = export_encoder(build_sam("tiny").eval(), folder / C.ENCODER_ONNX)
        backend = OnnxRuntimeBackend(encoder, decoder, device="cpu", decoder_halves=halves)
        predictors = {"whole": SamPredictor(WithoutHalves(backend))}
        predictors.update({f"halves_{share}": SamPredictor(backend) for share in SHARES})
        needed = {"whole": every_kth(50), **{f"halves_{share}": every_kth(share) for share in SHARES}}
        embedding = np.random.default_rng(0).standard_normal(C.IMAGE_EMBEDDINGS.shape).astype(np.float32)
        for predictor in predictors.values():
            predictor.set_embedding(embedding, DEFAULT_IMAGE_SIZE)
        height, width = DEFAULT_IMAGE_SIZE
        side = int(np.ceil(np.sqrt(args.points)))
        grid = np.stack(np.meshgrid((np.arange(side) + 0.5) / side * width, (np.arange(side) + 0.5) / side * height), -1)
        points = grid.reshape(-1, 1, 2)[: args.points]
        labels = np.ones((len(points), 1))

        def run(way: str):
            return predictors[way].decode_low_res_where(needed[way], points, labels)

        # The halves give the whole decoder's outputs for the rows they keep.
        index, logits, iou = run("whole")
        half_index, half_logits, half_iou = run("halves_50")
        assert (index == half_index).all()
        max_diff = float(max(np.abs(logits - half_logits).max(), np.abs(iou - half_iou).max()))
        for way in predictors:  # warm-up
            run(way)
        load_before = os.getloadavg()
        per_prompt_ms: dict[str, list[float]] = {way: [] for way in predictors}
        order = np.random.default_rng(0)
        for round_ in range(args.rounds):
            for way in order.permutation(list(predictors)):  # no way always last
                start = time.perf_counter()
                run(way)
                per_prompt_ms[way].append((time.perf_counter() - start) / len(points) * 1e3)
            print(f"round {round_ + 1}: " + ", ".join(f"{w} {v[-1]:.2f}" for w, v in per_prompt_ms.items()), flush=True)
        load_after = os.getloadavg()

    ratios = {
        way: statistics.median(w / h for w, h in zip(per_prompt_ms["whole"], per_prompt_ms[way]))
        for way in predictors if way != "whole"
    }
    results = {
        "what": (f"decoder ms per prompt for a batch of {len(points)} points, SamPredictor.decode_low_res_where, "
                 "ONNX Runtime CPU fp32, default memory budget"),
        "model": {"variant": "vit_b", "weights": "seeded random (samexport.testing)"},
        "per_prompt_ms": {
            way: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v} for way, v in per_prompt_ms.items()
        },
        "speedup_vs_whole": ratios,
        "max_abs_diff_halves_vs_whole": max_diff,
        "machine": {
            "cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "load_average_before": load_before, "load_average_after": load_after,
        },
        "versions": {name: __import__(name).__version__ for name in ("onnxruntime", "numpy", "torch")},
        "command": "python benchmarks/amg_prefilter.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("speedup_vs_whole", "max_abs_diff_halves_vs_whole")}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
