"""Many prompts per image: decoder time per prompt, one mask input shared by the batch or one per prompt.

    python benchmarks/decoder_batching.py                 # vit_b's decoder, 64 boxes, 7 rounds
    python benchmarks/decoder_batching.py --boxes 16 --rounds 9

Exports the decoder of a vit_b with seeded random weights (``samexport.testing``; latency does
not depend on the weights; the decoder is the same for every variant) and times, round robin so
that a noisy machine slows every way alike, ``SamPredictor.decode_low_res`` (the ``samexport
bench`` decoder stages) on ONNX Runtime CPU for ``--boxes`` boxes on one image embedding:

- ``single``: one call per box;
- ``batch_shared``: one call for all boxes, one zero mask input for the batch (M = 1, the
  decoder graph's ``num_masks`` axis), the image-side work done once;
- ``batch_per_prompt``: the same with one zero mask input per box (M = B, what artifacts
  exported before the mask axis need);
- ``batch_shared_default_budget``: ``batch_shared`` with the predictor's default memory budget,
  which splits 64 boxes into two calls of 32.

Each round times every way once; the ratios ``single / batch`` per prompt are taken per round
and their median reported (issue 14's target: 64 boxes in one call at least 1.25x faster per
prompt than 64 single calls). Writes ``benchmarks/results/decoder-batching-vit_b-cpu.json``.
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


class PerPromptMasks:
    """An ONNX Runtime backend as it runs a decoder without the mask axis: M = B."""

    shares_mask_input = False

    def __init__(self, backend) -> None:
        self.backend, self.name = backend, backend.name

    def encode(self, image):
        return self.backend.encode(image)

    def decode(self, *inputs):
        return self.backend.decode(*inputs)


def main() -> None:
    from samexport import constants as C
    from samexport.bench.inputs import DEFAULT_IMAGE_SIZE, decoder_prompts
    from samexport.export.to_onnx import export_decoder, export_encoder
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.runtime.decode_budget import budget_for_prompts
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import random_state_dict
    from samexport.variants import build_sam, get_variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/decoder-batching-vit_b-cpu.json")
    args = parser.parse_args()

    # The decoder needs an encoder graph beside it in a backend; the tiny variant's is the cheapest
    # to export and is never run (the embedding is random).
    with tempfile.TemporaryDirectory(prefix="samexport-decoder-batching-") as tmp:
        sam = build_sam("vit_b").eval()
        sam.load_state_dict(random_state_dict("vit_b"))
        decoder = export_decoder(sam, Path(tmp) / C.DECODER_ONNX)
        del sam
        tiny = build_sam("tiny").eval()
        encoder = export_encoder(tiny, Path(tmp) / C.ENCODER_ONNX)
        shared_backend = OnnxRuntimeBackend(encoder, decoder, device="cpu", threads=args.threads)
        assert shared_backend.shares_mask_input, "the exported decoder has no num_masks axis"
        one_call = budget_for_prompts(args.boxes + 1)
        predictors = {
            "single": SamPredictor(shared_backend),
            "batch_shared": SamPredictor(shared_backend, decode_budget_bytes=one_call),
            "batch_per_prompt": SamPredictor(PerPromptMasks(shared_backend), decode_budget_bytes=one_call),
            "batch_shared_default_budget": SamPredictor(shared_backend),
        }
        embedding = np.random.default_rng(0).standard_normal(C.IMAGE_EMBEDDINGS.shape).astype(np.float32)
        for predictor in predictors.values():
            predictor.set_embedding(embedding, DEFAULT_IMAGE_SIZE)
        boxes = decoder_prompts(DEFAULT_IMAGE_SIZE, (args.boxes,))[f"decoder_boxes_{args.boxes}"]["boxes"]

        def run(way: str) -> None:
            predictor = predictors[way]
            if way == "single":
                for box in boxes:
                    predictor.decode_low_res(boxes=box[None])
            else:
                predictor.decode_low_res(boxes=boxes)

        for way in predictors:  # warm-up
            run(way)
        # Every way gives the outputs of single calls (float rounding between batch sizes aside).
        singles = [predictors["single"].decode_low_res(boxes=box[None]) for box in boxes[:3]]
        reference = tuple(np.concatenate(parts) for parts in zip(*singles))
        batched = {way: predictors[way].decode_low_res(boxes=boxes) for way in predictors if way != "single"}
        max_diff = {
            way: float(max(np.abs(out[0][:3] - reference[0]).max(), np.abs(out[1][:3] - reference[1]).max()))
            for way, out in batched.items()
        }
        load_before = os.getloadavg()
        per_prompt_ms: dict[str, list[float]] = {way: [] for way in predictors}
        for round_ in range(args.rounds):
            for way in predictors:
                start = time.perf_counter()
                run(way)
                per_prompt_ms[way].append((time.perf_counter() - start) / len(boxes) * 1e3)
            print(f"round {round_ + 1}: " + ", ".join(f"{w} {v[-1]:.2f}" for w, v in per_prompt_ms.items()), flush=True)
        load_after = os.getloadavg()

    ratios = {
        way: statistics.median(s / b for s, b in zip(per_prompt_ms["single"], per_prompt_ms[way]))
        for way in predictors if way != "single"
    }
    results = {
        "what": f"decoder ms per prompt for {args.boxes} boxes on one embedding, SamPredictor.decode_low_res, ONNX Runtime CPU fp32",
        "model": {"variant": get_variant("vit_b").name, "weights": "seeded random (samexport.testing)"},
        "per_prompt_ms": {
            way: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v} for way, v in per_prompt_ms.items()
        },
        "speedup_per_prompt_vs_single": ratios,
        "max_abs_diff_vs_single_first_3_boxes": max_diff,
        "target": {"name": "64 boxes in one call vs 64 single calls, per prompt", "limit": 1.25,
                   "value": ratios["batch_shared"], "met": ratios["batch_shared"] >= 1.25},
        "machine": {
            "cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "load_average_before": load_before, "load_average_after": load_after,
        },
        "versions": {name: __import__(name).__version__ for name in ("onnxruntime", "numpy", "torch")},
        "command": "python benchmarks/decoder_batching.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("speedup_per_prompt_vs_single", "max_abs_diff_vs_single_first_3_boxes", "target")}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
