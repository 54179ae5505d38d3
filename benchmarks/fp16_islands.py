"""Which FP32 islands an encoder needs in FP16: parity of the FP16 encoder per island set.

    python benchmarks/fp16_islands.py                      # mobile_sam, WORK=/tmp/samexport-bench
    python benchmarks/fp16_islands.py --variant vit_b
    python benchmarks/fp16_islands.py --checkpoint weights/sam_tiny_shapes.pth --scenes 4   # trained tiny, held-out scenes

Builds (or reuses) the fp32 artifact of ``--variant`` from seeded random weights
(``samexport.testing``, every parameter perturbed), then converts its ``encoder.onnx`` to FP16
once per island set (the op types kept in FP32, ``samexport.precision.fp16``): the variant's own
set, none at all, and the variant's set less one of its op types that the graph holds at a time. Each FP16 encoder runs with
the fp32 decoder, so the figures are the encoder's alone, through ``samexport.parity`` against
the fp32 artifact on the scikit-image sample photos and the whole prompt suite (ONNX Runtime
CPU). Writes ``benchmarks/results/{variant}-fp16-islands.json``.

``--checkpoint`` takes trained weights instead of random ones (``--variant`` defaults to ``tiny``
then; the results record the checkpoint's sha256), and ``--scenes N`` compares on N held-out
scenes of ``samexport.testing_scenes`` instead of the photos (the trained tiny SAM knows only
those). Trained weights are what has the activation outliers that FP16 islands exist for.

ONNX Runtime's CPU provider runs FP16 graphs in fp32 behind casts, so the casts' rounding is
what is measured: an overflow (inf/NaN) shows as ``finite: false``; TensorRT's FP16 kernels may
round differently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("embedding_rel_max_abs", "embedding_cosine", "mask_iou_min", "mask_iou_mean", "iou_score_max_abs")


def island_sets(own: frozenset[str], present: set[str]) -> dict[str, frozenset[str]]:
    """The variant's islands, none, and the variant's less each op type of the graph in turn."""
    sets = {"variant islands": own, "no islands": frozenset()}
    sets |= {f"variant islands - {op}": own - {op} for op in sorted(own & present)}
    return sets


def fp32_artifact(variant: str, work: Path, checkpoint: Path | None = None) -> Path:
    """The fp32 artifact of seeded random weights, or of ``checkpoint`` (one per its sha256)."""
    import hashlib

    from samexport.pipeline import build
    from samexport.testing import save_random_checkpoint

    if checkpoint is None:
        out = work / f"{variant}-fp32"
    else:
        out = work / f"{variant}-{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]}-fp32"
    if not (out / "manifest.json").exists():
        if checkpoint is None:
            checkpoint = save_random_checkpoint(variant, work / f"{variant}_random.pth")
        print(f"building {out}", flush=True)
        build(variant, checkpoint=checkpoint, output=out, precision="fp32", engines="skip", parity=False)
    return out


def main() -> None:
    import onnx

    from samexport import constants as C
    from samexport.image_sources import sample_images
    from samexport.parity import run_parity
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.variants import get_variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help="default mobile_sam, or tiny with --checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (official layout) instead of random ones")
    parser.add_argument("--scenes", type=int, default=0, help="compare on this many held-out procedural scenes")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    variant = get_variant(args.variant or ("tiny" if args.checkpoint else "mobile_sam"))
    artifact = fp32_artifact(variant.name, args.work, args.checkpoint)
    encoder, decoder = artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX
    if args.scenes:
        from samexport.testing_scenes import HELD_OUT_SEED, make_scene

        images = {f"scene {seed}": make_scene(seed).image for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + args.scenes)}
        skipped = {}
    else:
        images, skipped = sample_images()
    reference = OnnxRuntimeBackend(encoder, decoder, device="cpu")

    results = {}
    with tempfile.TemporaryDirectory(prefix="samexport-islands-") as tmp:
        present = {node.op_type for node in onnx.load(str(encoder), load_external_data=False).graph.node}
        for name, ops in island_sets(variant.fp32_ops, present).items():
            encoder16 = convert_to_fp16(encoder, Path(tmp) / "encoder_fp16.onnx", fp32_ops=ops)
            candidate = OnnxRuntimeBackend(encoder16, decoder, device="cpu", memory_arena=False)
            summary = run_parity(reference, candidate, images, precision="fp16").summary
            finite = all(summary[f] == summary[f] and abs(summary[f]) != float("inf") for f in FIGURES)
            results[name] = {"fp32_ops": sorted(ops), "finite": finite} | {f: summary[f] for f in FIGURES}
            print(f"{name}: " + ", ".join(f"{f} {summary[f]:.6g}" for f in FIGURES), flush=True)

    import hashlib
    import sys

    weights = "random weights"
    if args.checkpoint:
        weights = f"{args.checkpoint} sha256 {hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()}"
    document = {
        "command": " ".join(["python benchmarks/fp16_islands.py", *sys.argv[1:]]) if len(sys.argv) > 1
        else "python benchmarks/fp16_islands.py --variant " + variant.name,
        "variant": variant.name,
        "what": f"FP16 encoder (fp32 decoder) against the fp32 artifact, ONNX Runtime CPU, {weights}",
        "images": sorted(images),
        "images_skipped": skipped,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "results": results,
    }
    trained = "-trained" if args.checkpoint else ""
    output = args.output or ROOT / "benchmarks" / "results" / f"{variant.name}{trained}-fp16-islands.json"
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
