"""Which FP32 islands an encoder needs in FP16: parity of the FP16 encoder per island set.

    python benchmarks/fp16_islands.py                      # mobile_sam, WORK=/tmp/samexport-bench
    python benchmarks/fp16_islands.py --variant vit_b
    python benchmarks/fp16_islands.py --checkpoint weights/sam_tiny_shapes.pth --scenes 4   # trained tiny, held-out scenes
    python benchmarks/fp16_islands.py --variant sam2.1_hiera_tiny --torch-fp16   # SAM 2.1, + PyTorch float16 check

Builds (or reuses) the fp32 artifact of ``--variant`` from seeded random weights
(``samexport.testing``, every parameter perturbed), then converts its ``encoder.onnx`` to FP16
once per island set (the op types kept in FP32, ``samexport.precision.fp16``): the variant's own
set, none at all, and the variant's set less one of its op types that the graph holds at a time. Each FP16 encoder runs with
the fp32 decoder, so the figures are the encoder's alone, through the family's parity loop
(``samexport.parity.references.parity_runner`` of the variant's graph contract: SAM's
``run_parity`` or SAM 2.1's ``run_sam2_parity``) against the fp32 artifact on the scikit-image
sample photos and the whole prompt suite (ONNX Runtime CPU). Every encoder output is also compared
on its own (``features``: each against its own scale; SAM 2.1's encoder has three, the embedding
and two high-resolution maps). Writes ``benchmarks/results/{variant}-fp16-islands.json``.

``--checkpoint`` takes trained weights instead of random ones (``--variant`` defaults to ``tiny``
then; the results record the checkpoint's sha256), and ``--scenes N`` compares on N held-out
scenes of ``samexport.testing_scenes`` instead of the photos (the trained tiny SAM knows only
those). Trained weights are what has the activation outliers that FP16 islands exist for.

ONNX Runtime's CPU provider runs FP16 graphs in fp32 behind casts, so the casts' rounding is
what is measured: an overflow (inf/NaN) shows as ``finite: false``; TensorRT's FP16 kernels may
round differently.

``--torch-fp16`` (SAM 2.1 variants) adds a stronger check of the same weights: samexport's
PyTorch encoder run once in float32 and once with every parameter and activation in float16 on
the CPU (PyTorch's CPU kernels in half precision: each op's output is rounded to float16; how a
kernel accumulates inside is its own), recording per ATen op type the largest |output| (float32
run: what a float16 tensor would have to hold, against float16's 65504) and the non-finite outputs
of the float16 run, and the float16 features against the float32 ones. It runs the whole encoder
in float16, islands included: it says which op types would overflow without islands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

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
        build(variant, checkpoint=checkpoint, output=out, precision="fp32", engines="skip", parity=False, references=False)
    return out


class RecordingRunner:
    """A backend that keeps the encoder outputs of each image it encodes (``features``), for the
    per-output figures; everything else is the wrapped backend's."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.features: list[tuple] = []

    def run_encoder(self, image):
        outputs = tuple(self._backend.run_encoder(image))
        self.features.append(outputs)
        return outputs

    def encode(self, image):
        embedding = self._backend.encode(image)
        self.features.append((embedding,))
        return embedding

    def __getattr__(self, name):
        return getattr(self._backend, name)


def feature_figures(reference: RecordingRunner, candidate: RecordingRunner, names: tuple[str, ...]) -> dict:
    """Per encoder output, the worst over the images: max error / the reference's scale, cosine."""
    from samexport.parity.metrics import ArrayErrors

    if len(reference.features) != len(candidate.features):
        raise RuntimeError("reference and candidate encoded different numbers of images")
    figures = {}
    for index, name in enumerate(names):
        errors = [ArrayErrors.between(r[index], c[index]) for r, c in zip(reference.features, candidate.features)]
        figures[name] = {
            "rel_max_abs": max(e.rel_max_abs for e in errors),
            "cosine": min(e.cosine for e in errors),
            "finite": all(bool(np.isfinite(c[index]).all()) for c in candidate.features),
        }
    return figures


def torch_fp16_activations(variant, checkpoint: Path, images: dict) -> dict:
    """samexport's PyTorch SAM 2.1 encoder in float32 and in float16 on the CPU: per ATen op type
    the largest |output| of each run and the float16 run's non-finite outputs; the float16
    features against the float32 ones."""
    import time

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from samexport.parity.metrics import ArrayErrors
    from samexport.sam2_checkpoint import load_sam2
    from samexport.sam2_transforms import preprocess_sam2

    fp16_max = float(np.finfo(np.float16).max)

    class MaxAbs(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[str, dict] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                    data = tensor.detach().float()
                    finite = torch.isfinite(data)
                    record = self.ops.setdefault(name, {"calls": 0, "max_abs": 0.0, "nonfinite": 0})
                    record["calls"] += 1
                    record["nonfinite"] += int((~finite).sum())
                    if finite.any():
                        record["max_abs"] = max(record["max_abs"], float(data[finite].abs().max()))
            return out

    model = load_sam2(checkpoint, variant).eval()
    names = [o.name for o in variant.contract.encoder_outputs]
    runs: dict[str, dict] = {}
    features: dict[str, list] = {}
    for dtype in (torch.float32, torch.float16):
        model = model.to(dtype)
        mode = MaxAbs()
        started = time.perf_counter()
        features[str(dtype)] = []
        with torch.no_grad(), mode:
            for image in images.values():
                x = torch.from_numpy(preprocess_sam2(image)).to(dtype)
                features[str(dtype)].append([f.float().numpy() for f in model.encode(x)])
        runs[str(dtype).removeprefix("torch.")] = {"ops": mode.ops, "seconds": time.perf_counter() - started}
        print(f"torch {dtype}: {time.perf_counter() - started:.0f} s", flush=True)
    ops32, ops16 = runs["float32"]["ops"], runs["float16"]["ops"]
    per_op = {
        name: {
            "float32_max_abs": ops32[name]["max_abs"],
            "float32_max_abs_over_fp16_max": ops32[name]["max_abs"] / fp16_max,
            "float16_max_abs": ops16.get(name, {}).get("max_abs"),
            "float16_nonfinite_values": ops16.get(name, {}).get("nonfinite"),
            "calls_per_image": ops32[name]["calls"] // len(images),
        }
        for name in sorted(ops32, key=lambda n: -ops32[n]["max_abs"])
    }
    outputs = {}
    for index, name in enumerate(names):
        errors = [
            ArrayErrors.between(r[index], c[index])
            for r, c in zip(features["torch.float32"], features["torch.float16"])
        ]
        outputs[name] = {
            "rel_max_abs": max(e.rel_max_abs for e in errors),
            "cosine": min(e.cosine for e in errors),
            "finite": all(bool(np.isfinite(c[index]).all()) for c in features["torch.float16"]),
        }
    return {
        "what": (
            "samexport's PyTorch encoder (Sam2Image.encode) on the CPU, all parameters and activations in "
            "float16 (each ATen op's output rounded to float16; accumulation inside a kernel is the kernel's), "
            "against the same model in float32; no FP32 islands. Per ATen op type: the largest |output| over "
            "the images in each run (float32's against float16's max 65504) and the float16 run's non-finite values."
        ),
        "torch": torch.__version__,
        "fp16_max": fp16_max,
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "features_float16_vs_float32": outputs,
        "ops_over_fp16_max_in_float32": sorted(n for n, r in per_op.items() if r["float32_max_abs"] > fp16_max),
        "ops_nonfinite_in_float16": sorted(n for n, r in per_op.items() if r["float16_nonfinite_values"]),
        "ops": per_op,
    }


def main() -> None:
    import onnx

    from samexport import constants as C
    from samexport.image_sources import sample_images
    from samexport.parity.references import parity_runner
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.variants import get_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help="default mobile_sam, or tiny with --checkpoint; SAM 2.1 names too")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (official layout) instead of random ones")
    parser.add_argument("--scenes", type=int, default=0, help="compare on this many held-out procedural scenes")
    parser.add_argument("--photos", nargs="+", help="these scikit-image sample photos only (default: all of them)")
    parser.add_argument("--torch-fp16", action="store_true", help="SAM 2.1: also the PyTorch float16 activation check")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    variant = get_model(args.variant or ("tiny" if args.checkpoint else "mobile_sam"))
    if args.torch_fp16 and variant.contract is not C.SAM2_GRAPHS:
        parser.error("--torch-fp16 runs SAM 2.1's PyTorch encoder: pass a sam2.1_hiera_* variant")
    started = machine()
    artifact = fp32_artifact(variant.name, args.work, args.checkpoint)
    encoder, decoder = artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX
    if args.scenes:
        from samexport.testing_scenes import HELD_OUT_SEED, make_scene

        images = {f"scene {seed}": make_scene(seed).image for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + args.scenes)}
        skipped = {}
    else:
        images, skipped = sample_images(*([args.photos] if args.photos else []))
    contract = variant.contract
    run_family_parity = parity_runner(contract)
    output_names = tuple(o.name for o in contract.encoder_outputs)
    reference = RecordingRunner(OnnxRuntimeBackend(encoder, decoder, device="cpu", contract=contract))

    results = {}
    with tempfile.TemporaryDirectory(prefix="samexport-islands-") as tmp:
        present = {node.op_type for node in onnx.load(str(encoder), load_external_data=False).graph.node}
        for name, ops in island_sets(variant.fp32_ops, present).items():
            encoder16 = convert_to_fp16(encoder, Path(tmp) / "encoder_fp16.onnx", fp32_ops=ops)
            candidate = RecordingRunner(
                OnnxRuntimeBackend(encoder16, decoder, device="cpu", memory_arena=False, contract=contract)
            )
            reference.features.clear()
            summary = run_family_parity(reference, candidate, images, precision="fp16").summary
            finite = all(summary[f] == summary[f] and abs(summary[f]) != float("inf") for f in FIGURES)
            features = feature_figures(reference, candidate, output_names)
            results[name] = {"fp32_ops": sorted(ops), "finite": finite} | {f: summary[f] for f in FIGURES}
            results[name]["features"] = features
            print(f"{name}: " + ", ".join(f"{f} {summary[f]:.6g}" for f in FIGURES) + "; " + ", ".join(
                f"{n} {v['rel_max_abs']:.3g}" for n, v in features.items()
            ), flush=True)

    import hashlib
    import sys

    weights = "random weights"
    if args.checkpoint:
        weights = f"{args.checkpoint} sha256 {hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()}"
    document = {
        "command": " ".join(["python benchmarks/fp16_islands.py", *sys.argv[1:]]) if len(sys.argv) > 1
        else "python benchmarks/fp16_islands.py --variant " + variant.name,
        "variant": variant.name,
        "contract": contract.name,
        "what": f"FP16 encoder (fp32 decoder) against the fp32 artifact, ONNX Runtime CPU, {weights}",
        "figures": (
            f"{', '.join(FIGURES)}: the family's parity report (embedding_*: the worst encoder output, each "
            "against its own scale); features: each encoder output on its own, worst over the images"
        ),
        "graph_op_types": sorted(present),
        "images": sorted(images),
        "images_skipped": skipped,
        "machine": started,
        "results": results,
    }
    trained = "-trained" if args.checkpoint else ""
    output = args.output or ROOT / "benchmarks" / "results" / f"{variant.name}{trained}-fp16-islands.json"
    document["machine"]["load_average_at_end"] = os.getloadavg()
    output.write_text(json.dumps(document, indent=2) + "\n")  # the islands, before the longer check
    if args.torch_fp16:
        checkpoint = args.checkpoint or args.work / f"{variant.name}_random.pth"
        if not checkpoint.exists():
            from samexport.testing import save_random_checkpoint

            save_random_checkpoint(variant.name, checkpoint)
        document["torch_fp16"] = torch_fp16_activations(variant, checkpoint, images)
        document["machine"]["load_average_at_end"] = os.getloadavg()
        output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {output}")


def machine() -> dict:
    """Platform, cores, load, the CPU's vector flags (``samexport.bench``)."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    try:
        from samexport.bench.run import cpu_flags

        info["cpu_flags"] = cpu_flags()
    except ImportError:
        pass
    return info


if __name__ == "__main__":
    main()
