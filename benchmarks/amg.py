"""Time automatic mask generation: samexport on ONNX Runtime against the official generator on torch.

    python benchmarks/amg.py --workdir /tmp/samexport-amg --json benchmarks/results/amg-vit_b-cpu.json

Both generators run in this process on the same image (scikit-image's astronaut, 512x512) with the
same seeded random weights (``samexport.testing.random_state_dict``, the weights of the test
suite) and the same parameters (the official defaults unless overridden). The vit_b artifact is
built with ``samexport.build`` on first use and reused from ``--workdir``.

Random weights predict IoUs around 0.0-0.1, so with the default thresholds no mask survives: the
default run times the grid through encoder, decoder and the first filter (where the official
generator has already upsampled every mask). ``--pred-iou-thresh 0 --stability-score-thresh 0``
makes every mask go through stability scoring, boxes, NMS and RLE as well.

Each side's time is split into encoder, decoder (the backend calls, or the official image encoder
and prompt encoder + mask decoder modules) and the rest (pre/postprocessing, filtering, NMS, RLE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


class _Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def hook(self, module) -> None:
        """Time ``module``'s forward calls with torch hooks."""
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

        def done(*_):
            self.seconds += time.perf_counter() - starts.pop()
            self.calls += 1

        module.register_forward_hook(done)


def _artifact(variant: str, workdir: Path) -> tuple[Path, Path]:
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    checkpoint = workdir / f"sam_{variant}_random.pth"
    if not checkpoint.is_file():
        save_random_checkpoint(variant, checkpoint)
    artifact = workdir / f"{variant}-fp32"
    if not (artifact / "manifest.json").is_file():
        build(variant, checkpoint=checkpoint, output=artifact)
    return checkpoint, artifact


def _match(ours: list[dict], theirs: list[dict]) -> dict:
    """Greedy one-to-one matching by mask IoU (boxes first, to stay fast)."""
    from samexport.testing import mask_iou

    unmatched = list(range(len(ours)))
    ious = []
    for record in theirs:
        candidates = [j for j in unmatched if np.abs(np.subtract(ours[j]["bbox"], record["bbox"])).max() <= 4]
        scores = [mask_iou(ours[j]["segmentation"], record["segmentation"]) for j in candidates]
        if scores:
            best = int(np.argmax(scores))
            unmatched.remove(candidates[best])
            ious.append(scores[best])
        else:
            ious.append(0.0)
    return {
        "matched_min_iou": min(ious) if ious else None,
        "matched_mean_iou": float(np.mean(ious)) if ious else None,
        "unmatched_ours": len(unmatched),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/samexport-amg"))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--skip-official", action="store_true", help="time samexport only")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    import torch
    from segment_anything import SamAutomaticMaskGenerator
    from skimage import data

    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import official_sam

    image = data.astronaut()
    params = dict(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
    )
    checkpoint, artifact = _artifact(args.variant, args.workdir)
    results = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "variant": args.variant,
        "image": f"skimage.data.astronaut() {image.shape[0]}x{image.shape[1]}",
        "params": params,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": os.getloadavg()},
    }

    predictor = SamPredictor(artifact, backend="onnxruntime-cpu")
    encoder, decoder = _Timer(), _Timer()
    predictor.backend.encode = encoder.wrap(predictor.backend.encode)
    predictor.backend.decode = decoder.wrap(predictor.backend.decode)
    generator = AutomaticMaskGenerator(predictor, **params)
    start = time.perf_counter()
    ours = generator.generate(image)
    total = time.perf_counter() - start
    results["samexport"] = {
        "backend": predictor.backend.name, "seconds": total, "masks": len(ours),
        "encoder_seconds": encoder.seconds, "decoder_seconds": decoder.seconds,
        "decoder_calls": decoder.calls, "rest_seconds": total - encoder.seconds - decoder.seconds,
    }
    print(f"samexport ({predictor.backend.name}): {total:.1f} s, {len(ours)} masks", flush=True)

    if not args.skip_official:
        model = official_sam(args.variant, torch.load(checkpoint, weights_only=True))
        encoder, decoder = _Timer(), _Timer()
        encoder.hook(model.image_encoder)
        decoder.hook(model.prompt_encoder)
        decoder.hook(model.mask_decoder)
        official = SamAutomaticMaskGenerator(model, **params)
        start = time.perf_counter()
        with torch.no_grad():
            theirs = official.generate(image)
        total = time.perf_counter() - start
        results["official"] = {
            "backend": f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads",
            "seconds": total, "masks": len(theirs), "encoder_seconds": encoder.seconds,
            "decoder_seconds": decoder.seconds,
            "rest_seconds": total - encoder.seconds - decoder.seconds,
        }
        results["speedup"] = results["official"]["seconds"] / results["samexport"]["seconds"]
        results["parity"] = _match(ours, theirs)
        print(f"official (torch): {total:.1f} s, {len(theirs)} masks; speedup {results['speedup']:.2f}x")
    results["load_average_at_end"] = os.getloadavg()

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
