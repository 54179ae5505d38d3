"""Time automatic mask generation: samexport on ONNX Runtime against the official generator on torch.

    python benchmarks/amg.py --workdir /tmp/samexport-amg --json benchmarks/results/amg-vit_b-cpu.json
    python benchmarks/amg.py --backend onnxruntime-cpu --backend openvino:precision=bf16 --rounds 1
    python benchmarks/amg.py --checkpoint weights/sam_tiny_shapes.pth --scene-seed 1000107 \
        --json benchmarks/results/amg-tiny-trained-cpu.json      # the trained tiny SAM, a held-out scene

``--checkpoint`` takes trained weights instead (``--variant`` defaults to ``tiny`` then; the
artifact is built per checkpoint sha256, which the results record), and ``--scene-seed`` a
procedural scene of ``samexport.testing_scenes`` (held out from ``HELD_OUT_SEED`` up) instead of
the astronaut: the trained tiny SAM (``weights/``) keeps masks, so the prefilter's pass rate
(``prefilter_pass_rate``: the share of grid prompts with a multimask IoU over the threshold; the
decoder chunks that ran whole are in ``decoder_calls``; ``prefilter_pass_rate_by_threshold`` gives
it at other thresholds, from the same grid) is a real one, and
``shapes_found`` counts the scene's instances matched by a kept mask with IoU >= 0.7.

Both generators run in this process on the same image (scikit-image's astronaut, 512x512) with the
same seeded random weights (``samexport.testing.random_state_dict``, the weights of the test
suite) and the same parameters (the official defaults unless overridden). The vit_b artifact is
built with ``samexport.build`` on first use and reused from ``--workdir``.

samexport runs twice: with its IoU prefilter (the decoder's second half, which makes the masks,
only for prompts with a multimask IoU over ``pred_iou_thresh``) and without it (every prompt's
masks made, as the official does), so ``prefilter_speedup`` is measured in the same run.

Random weights predict IoUs around 0.0-0.1, so with the default thresholds no mask survives: the
default run times the grid through encoder, decoder and the first filter, and the prefilter drops
every prompt (its best case; the official generator has already upsampled every mask).
``--pred-iou-quantile 0.5`` sets ``pred_iou_thresh`` so that about half of the prompts pass (the
quantile of the grid's best predicted IoUs, computed before timing), and
``--stability-score-thresh 0`` keeps their masks, so that masks are made, filtered and compared
with the official's. ``--pred-iou-thresh 0`` makes every mask go through stability scoring, boxes,
NMS and RLE as well.

Each side's time is split into encoder, decoder (the backend calls, or the official image encoder
and prompt encoder + mask decoder modules) and the rest (pre/postprocessing, filtering, NMS, RLE).

The three generators run in ``--rounds`` rounds (default 3), each round running each of them
once, in an order that rotates from round to round, so that a shared machine that slows down for
a while slows every side alike. ``speedup`` and ``prefilter_speedup`` are the medians of the
per-round ratios; each side's record is its median round, with every round's total in
``seconds_per_round``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


class _Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.prompts = 0

    def wrap(self, function, prompts: int | None = None):
        """``function`` timed; ``self.prompts`` adds up the length of its argument number
        ``prompts`` (the point coordinates of ``decode``, the mask tokens of ``decode_masks``)."""

        def timed(*args, **kwargs):
            if prompts is not None:
                self.prompts += len(args[prompts])
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def reset(self) -> None:
        self.seconds, self.calls, self.prompts = 0.0, 0, 0

    def hook(self, module) -> None:
        """Time ``module``'s forward calls with torch hooks."""
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

        def done(*_):
            self.seconds += time.perf_counter() - starts.pop()
            self.calls += 1

        module.register_forward_hook(done)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _artifact(variant: str, workdir: Path, checkpoint: Path | None = None) -> tuple[Path, Path]:
    """The checkpoint and its fp32 artifact: seeded random weights unless ``checkpoint`` is given
    (then one artifact per checkpoint content, so new weights get a new build)."""
    from samexport.artifacts import read_manifest
    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    if checkpoint is None:
        checkpoint = workdir / f"sam_{variant}_random.pth"
        if not checkpoint.is_file():
            save_random_checkpoint(variant, checkpoint)
        artifact = workdir / f"{variant}-fp32"
    else:
        artifact = workdir / f"{variant}-{sha256(checkpoint)[:12]}-fp32"
    if not (artifact / "manifest.json").is_file() or read_manifest(artifact).decoder_halves() is None:
        build(variant, checkpoint=checkpoint, output=artifact)  # replaces a build without the halves
    return checkpoint, artifact


def _time_samexport(artifact: Path, image: np.ndarray, params: dict, *, halves: bool,
                    backend: str = "onnxruntime-cpu") -> dict:
    """One timed ``generate`` on ``backend``; ``halves=False`` hides the decoder halves, so every
    prompt's masks are computed (the generator without its IoU prefilter)."""
    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor

    predictor = SamPredictor(artifact, backend=backend)
    backend = predictor.backend
    backend.has_decoder_halves = halves and backend.has_decoder_halves
    prompt_argument = {"encode": None, "decode": 1, "decode_scores": 1, "decode_masks": 0}
    timers = {name: _Timer() for name in prompt_argument}
    for name, timer in timers.items():
        setattr(backend, name, timer.wrap(getattr(backend, name), prompt_argument[name]))
    generator = AutomaticMaskGenerator(predictor, **params)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    decoder = sum(timers[name].seconds for name in ("decode", "decode_scores", "decode_masks"))
    return {
        "backend": backend.name, "decoder_halves": backend.has_decoder_halves, "seconds": total,
        "masks": len(records), "encoder_seconds": timers["encode"].seconds, "decoder_seconds": decoder,
        "decoder_calls": {name: timers[name].calls for name in ("decode", "decode_scores", "decode_masks")},
        "prompts": timers["decode"].prompts + timers["decode_scores"].prompts,
        "prompts_through_masks_half": timers["decode_masks"].prompts if halves else None,
        "rest_seconds": total - timers["encode"].seconds - decoder,
        "records": records,
    }


def _official_side(variant: str, checkpoint: Path, image: np.ndarray, params: dict):
    """A function that runs the official generator once on ``image`` and returns its record
    (the model is built once; its modules' hooks time the encoder and the decoder)."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from samexport.testing import official_sam

    model = official_sam(variant, torch.load(checkpoint, weights_only=True))
    encoder, decoder = _Timer(), _Timer()
    encoder.hook(model.image_encoder)
    decoder.hook(model.prompt_encoder)
    decoder.hook(model.mask_decoder)
    official = SamAutomaticMaskGenerator(model, **params)

    def run() -> dict:
        encoder.reset()
        decoder.reset()
        start = time.perf_counter()
        with torch.no_grad():
            records = official.generate(image)
        total = time.perf_counter() - start
        return {
            "backend": f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads",
            "seconds": total, "masks": len(records), "encoder_seconds": encoder.seconds,
            "decoder_seconds": decoder.seconds, "rest_seconds": total - encoder.seconds - decoder.seconds,
            "records": records,
        }

    return run


def _iou_quantile(artifact: Path, image: np.ndarray, params: dict, quantile: float) -> float:
    """The ``quantile`` of the grid prompts' best multimask IoU prediction on ``image``: as
    ``pred_iou_thresh``, about ``1 - quantile`` of the prompts can pass (random weights predict
    IoUs of about 0.0-0.1, so the default 0.88 drops every prompt)."""
    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor

    predictor = SamPredictor(artifact, backend="onnxruntime-cpu")
    grid = AutomaticMaskGenerator(predictor, **params).point_grids[0] * np.array(image.shape[1::-1])
    predictor.set_image(image)
    _, iou = predictor.decode_low_res(grid[:, None, :], np.ones((len(grid), 1)))
    return float(np.quantile(iou[:, 1:].max(axis=1), quantile))


PASS_RATE_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.88, 0.9)


def _pass_rates(artifact: Path, image: np.ndarray, params: dict) -> dict[float, float]:
    """The share of the grid's prompts that the IoU prefilter lets through: a multimask IoU
    prediction over ``pred_iou_thresh`` (``AutomaticMaskGenerator``'s ``can_pass``; whole image,
    no crops), at ``params``'s threshold and at each of ``PASS_RATE_THRESHOLDS``. Computed apart
    from the timed runs: a decoder chunk runs whole after one that needed more than
    ``HALVES_BREAK_EVEN`` of its prompts, and then no half counts them."""
    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor

    predictor = SamPredictor(artifact, backend="onnxruntime-cpu")
    grid = AutomaticMaskGenerator(predictor, **params).point_grids[0] * np.array(image.shape[1::-1])
    predictor.set_image(image)
    _, iou = predictor.decode_low_res(grid[:, None, :], np.ones((len(grid), 1)))
    best = iou[:, 1:].max(axis=1)
    return {t: float((best > t).mean()) for t in sorted({params["pred_iou_thresh"], *PASS_RATE_THRESHOLDS})}


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
    parser.add_argument("--variant", help="default vit_b, or tiny with --checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (official layout) instead of random ones")
    parser.add_argument("--scene-seed", type=int,
                        help="a samexport.testing_scenes scene (held out from HELD_OUT_SEED up) instead of the astronaut")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/samexport-amg"))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--pred-iou-quantile", type=float,
                        help="set pred_iou_thresh to this quantile of the grid's best predicted IoUs")
    parser.add_argument("--skip-official", action="store_true", help="time samexport only")
    parser.add_argument("--backend", action="append", dest="backends",
                        help="samexport's backend (repeat for several, each its own side; default "
                             "onnxruntime-cpu), e.g. openvino:precision=bf16")
    parser.add_argument("--skip-without-prefilter", action="store_true",
                        help="do not time the generator without its IoU prefilter")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every generator once each")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")

    from skimage import data

    from samexport.bench.run import cpu_flags

    if args.variant is None:
        args.variant = "tiny" if args.checkpoint else "vit_b"
    scene = None
    if args.scene_seed is not None:
        from samexport.testing_scenes import HELD_OUT_SEED, make_scene

        scene = make_scene(args.scene_seed)
        image = scene.image
        image_name = (f"samexport.testing_scenes.make_scene({args.scene_seed}) {image.shape[0]}x{image.shape[1]}, "
                      f"{len(scene.masks)} shapes" + (", held out" if args.scene_seed >= HELD_OUT_SEED else
                                                       ", A TRAINING SCENE"))
    else:
        image = data.astronaut()
        image_name = f"skimage.data.astronaut() {image.shape[0]}x{image.shape[1]}"
    params = {
        "points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh,
    }
    checkpoint, artifact = _artifact(args.variant, args.workdir, args.checkpoint)
    if args.pred_iou_quantile is not None:
        params["pred_iou_thresh"] = _iou_quantile(artifact, image, params, args.pred_iou_quantile)
    results = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "variant": args.variant,
        "weights": (f"{args.checkpoint} sha256 {sha256(args.checkpoint)}" if args.checkpoint
                    else "seeded random (samexport.testing)"),
        "image": image_name,
        "params": params,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_flags": cpu_flags(),
                    "load_average_at_start": os.getloadavg()},
    }

    backends = args.backends or ["onnxruntime-cpu"]
    # The first backend's side is "samexport" (the key earlier results use), the others "samexport <spec>".
    side_names = {backend: "samexport" + ("" if i == 0 else f" {backend}") for i, backend in enumerate(backends)}
    sides = {name: (lambda b=backend: _time_samexport(artifact, image, params, halves=True, backend=b))
             for backend, name in side_names.items()}
    if not args.skip_without_prefilter:
        sides["samexport_without_prefilter"] = lambda: _time_samexport(
            artifact, image, params, halves=False, backend=backends[0])
    if not args.skip_official:
        sides["official"] = _official_side(args.variant, checkpoint, image, params)
    runs: dict[str, list[dict]] = {key: [] for key in sides}
    records: dict[str, list[dict]] = {}  # each side's masks, from its first round (every round makes the same)
    keys = list(sides)
    for round_ in range(args.rounds):
        for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:
            gc.collect()  # the previous predictor's sessions (the timers make a reference cycle)
            run = sides[key]()
            records.setdefault(key, run.pop("records"))
            runs[key].append(run)
            print(f"round {round_ + 1} {key}: {runs[key][-1]['seconds']:.1f} s, {runs[key][-1]['masks']} masks",
                  flush=True)
    for key, side in runs.items():
        results[key] = sorted(side, key=lambda run: run["seconds"])[len(side) // 2]  # the median round
        results[key]["seconds_per_round"] = [run["seconds"] for run in side]
    rates = _pass_rates(artifact, image, params)
    results["prefilter_pass_rate"] = rates[params["pred_iou_thresh"]]
    results["prefilter_pass_rate_by_threshold"] = {f"{t:g}": rate for t, rate in rates.items()}
    print(f"prefilter pass rate: {results['prefilter_pass_rate']:.3f} of the grid's prompts", flush=True)
    if scene is not None:
        from samexport.testing import mask_iou

        results["shapes_found"] = {}
        for key, kept in records.items():
            best = [max((mask_iou(r["segmentation"], truth) for r in kept), default=0.0) for truth in scene.masks]
            results["shapes_found"][key] = {"iou_at_least_0.7": sum(iou >= 0.7 for iou in best),
                                            "of": len(scene.masks), "best_iou_per_shape": [round(i, 3) for i in best]}

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(a["seconds"] / b["seconds"] for a, b in zip(runs[slow], runs[fast]))

    if "samexport_without_prefilter" in runs:
        results["prefilter_speedup"] = ratio("samexport_without_prefilter", "samexport")
    if "official" in runs:
        results["speedup"] = ratio("official", "samexport")
        results["speedup_by_backend"] = {backend: ratio("official", name) for backend, name in side_names.items()}
        results["parity"] = _match(records["samexport"], records["official"])
        print(f"speedup against the official generator: {results['speedup']:.2f}x (median of "
              f"{args.rounds} per-round ratios)")
    results["load_average_at_end"] = os.getloadavg()

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
