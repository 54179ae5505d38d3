"""The README's example picture: the trained tiny SAM's masks on a held-out procedural scene.

    python tools/readme_overlay.py                                   # weights/sam_tiny_shapes.pth
    python tools/readme_overlay.py --checkpoint NEW.pth --seed 1000107

Builds the fp32 artifact of ``--checkpoint`` (the ``tiny`` variant, ``samexport.build``; cached
per checkpoint sha256 under ``--workdir``), opens it with ``SamPredictor`` on ONNX Runtime CPU, and
prompts every shape of scene ``--seed`` of ``samexport.testing_scenes`` (held out from
``HELD_OUT_SEED`` up) with one foreground point at its interior point (the pixel farthest from its
edge), keeping the best-scored of the three masks, as ``samexport predict`` does. Writes
``--output`` (the scene with the points on the left, the masks tinted and outlined on the right,
both enlarged 2x, a palette PNG) and beside it a JSON file with the checkpoint's sha256 and each
shape's mask IoU against its ground truth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from samexport.amg.overlay import mask_colours
    from samexport.imageio import overlay
    from samexport.pipeline import build
    from samexport.runtime.predictor import SamPredictor
    from samexport.testing import mask_iou
    from samexport.testing_scenes import HELD_OUT_SEED, interior_point, make_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "weights/sam_tiny_shapes.pth")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED + 107, help="scene seed (7 shapes)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs/images/trained-tiny-overlay.png")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/samexport-readme-overlay"))
    args = parser.parse_args()
    if args.seed < HELD_OUT_SEED:
        parser.error(f"--seed {args.seed} is a training scene; held-out seeds start at {HELD_OUT_SEED}")

    digest = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()
    artifact = args.workdir / f"tiny-{digest[:12]}-fp32"
    if not (artifact / "manifest.json").is_file():
        build("tiny", checkpoint=args.checkpoint, output=artifact)
    predictor = SamPredictor(artifact, backend="onnxruntime-cpu")
    scene = make_scene(args.seed)
    predictor.set_image(scene.image)
    points, masks, shapes = [], [], []
    for truth in scene.masks:
        point = np.array([interior_point(truth)], np.float32)
        predicted, scores, _ = predictor.predict(point, np.ones(1), multimask_output=True)
        mask = predicted[int(np.argmax(scores))].astype(bool)
        points.append(point[0])
        masks.append(mask)
        shapes.append({"point": point[0].tolist(), "score": round(float(scores.max()), 3),
                       "iou": round(float(mask_iou(mask, truth)), 3)})

    scale = 2
    points_array = np.array(points)
    labels = np.ones(len(points))
    big = np.kron(scene.image, np.ones((scale, scale, 1), np.uint8))
    big_masks = [np.kron(m, np.ones((scale, scale), bool)) for m in masks]
    left = overlay(big, [], points=points_array * scale + scale / 2, labels=labels)
    order = np.argsort([-m.sum() for m in masks])  # large masks first, small ones stay visible
    right = overlay(big, [big_masks[i] for i in order], points=points_array * scale + scale / 2, labels=labels,
                    colours=mask_colours(len(masks)), outlined=True, alpha=0.55)
    gap = 8
    canvas = Image.new("RGB", (left.width * 2 + gap, left.height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.output, optimize=True)

    ious = [s["iou"] for s in shapes]
    record = {
        "command": "python tools/readme_overlay.py" + (f" --checkpoint {args.checkpoint}" if args.checkpoint != parser.get_default("checkpoint") else "")
        + (f" --seed {args.seed}" if args.seed != parser.get_default("seed") else ""),
        "checkpoint": str(args.checkpoint.resolve().relative_to(ROOT) if args.checkpoint.resolve().is_relative_to(ROOT)
                          else args.checkpoint),
        "checkpoint_sha256": digest,
        "scene_seed": args.seed,
        "prompt": "one foreground point per shape at its interior point; best-scored of three masks; ONNX Runtime CPU fp32",
        "median_iou": round(statistics.median(ious), 3),
        "shapes": shapes,
    }
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): IoU per shape {ious}, "
          f"median {record['median_iou']}")


if __name__ == "__main__":
    main()
