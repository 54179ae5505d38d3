"""Which FP32 islands an encoder needs in FP16: parity of the FP16 encoder per island set.

    python benchmarks/fp16_islands.py                      # mobile_sam, WORK=/tmp/samexport-bench
    python benchmarks/fp16_islands.py --variant vit_b
    python benchmarks/fp16_islands.py --checkpoint weights/sam_tiny_shapes.pth --scenes 4   # trained tiny, held-out scenes
    python benchmarks/fp16_islands.py --variant sam2.1_hiera_tiny --torch-ranges   # SAM 2.1, + PyTorch activation ranges

Builds (or reuses) the fp32 artifact of ``--variant`` from seeded random weights
(``samexport.testing``, every parameter perturbed), then converts its ``encoder.onnx`` to FP16
once per island set (the op types kept in FP32, ``samexport.precision.fp16``): the variant's own
set, none at all, and the variant's set less one of its op types that the graph holds at a time. Each FP16 encoder runs with
the fp32 decoder, so the figures are the encoder's alone, through the family's parity loop
(``samexport.parity.runner.parity_runner`` of the variant's graph contract: SAM's
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

``--torch-ranges`` (SAM 2.1 variants) adds what the CPU cannot show by running FP16: samexport's
PyTorch encoder on the same weights and images in float32, with the largest |output| of each ATen
op type against float16's 65504, the layer norms' largest |x - mean| (a float16 variance
overflows past 256) and the softmaxes' largest logit. ``--torch-ranges-only`` adds them to the
``--output`` of an earlier run without redoing the islands. (Running the encoder in float16 on this
CPU, which has no AVX512-FP16, was too slow to be a check: a 16384x384x384 half matmul did not
finish in two minutes on the loaded 2-core machine.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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


# ATen ops that only move or view values: their outputs hold no new magnitudes.
_MOVES = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "unsqueeze",
    "squeeze", "clone", "contiguous", "_to_copy", "copy_", "detach", "alias", "split", "split_with_sizes",
    "unbind", "cat", "stack", "pad", "constant_pad_nd", "index", "flatten", "as_strided", "new_empty", "empty_like",
}


def torch_activation_ranges(variant, checkpoint: Path, images: dict) -> dict:
    """samexport's PyTorch SAM 2.1 encoder (``Sam2Image.encode``) in float32 on the CPU: per ATen
    op type, the largest |output| over the images, against float16's largest value (65504); for
    the layer norms also the largest |x - mean| of their input (a float16 variance of its square
    overflows past 256) and the largest variance; for the softmaxes the largest |logit|."""
    import time

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from samexport.sam2_checkpoint import load_sam2
    from samexport.sam2_transforms import preprocess_sam2

    fp16_max = float(np.finfo(np.float16).max)

    class Ranges(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[str, dict] = {}

        def _record(self, name: str, key: str, value: float) -> None:
            record = self.ops.setdefault(name, {"calls": 0})
            record[key] = max(record.get(key, 0.0), value)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in _MOVES:
                return out
            with torch.no_grad():
                for tensor in tree_flatten(out)[0][:1]:  # the first output (layer norm: not mean/rstd)
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                        self.ops.setdefault(name, {"calls": 0})["calls"] += 1
                        self._record(name, "max_abs", float(tensor.abs().max()))
                if name == "native_layer_norm":
                    x, dims = args[0], tuple(range(-len(args[1]), 0))
                    self._record(name, "input_max_abs_deviation", float((x - x.mean(dims, keepdim=True)).abs().max()))
                    self._record(name, "input_max_variance", float(x.var(dims, unbiased=False).max()))
                elif name == "_softmax":
                    self._record(name, "input_max_abs", float(args[0].abs().max()))
            return out

    model = load_sam2(checkpoint, variant).eval()
    mode = Ranges()
    started = time.perf_counter()
    with torch.no_grad(), mode:
        for image in images.values():
            model.encode(torch.from_numpy(preprocess_sam2(image)))
    seconds = time.perf_counter() - started
    print(f"torch ranges: {seconds:.0f} s", flush=True)
    ops = {
        name: {**record, "calls": record["calls"] // len(images), "max_abs_over_fp16_max": record["max_abs"] / fp16_max}
        for name, record in sorted(mode.ops.items(), key=lambda item: -item[1].get("max_abs", 0.0))
    }
    return {
        "what": (
            "samexport's PyTorch encoder (Sam2Image.encode, float32, CPU) on the same weights and images: per ATen "
            "op type (ops that only move values left out), the largest |output| (what a float16 tensor there would "
            "have to hold; float16's largest is 65504), calls per image; native_layer_norm: the largest |x - mean| "
            "of its input (squared in a float16 variance: overflows past 256) and the largest variance; _softmax: "
            "the largest |logit|. Magnitudes only: no float16 arithmetic is run."
        ),
        "images": sorted(images),
        "torch": torch.__version__,
        "fp16_max": fp16_max,
        "seconds": seconds,
        "ops_over_fp16_max": sorted(n for n, r in ops.items() if r.get("max_abs", 0.0) > fp16_max),
        "layer_norm_deviation_over_256": ops.get("native_layer_norm", {}).get("input_max_abs_deviation", 0.0) > 256,
        "ops": ops,
    }


def main() -> None:
    import onnx

    from samexport import constants as C
    from samexport.image_sources import sample_images
    from samexport.parity.runner import parity_runner
    from samexport.precision.fp16 import convert_to_fp16
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.variants import get_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help="default mobile_sam, or tiny with --checkpoint; SAM 2.1 names too")
    parser.add_argument("--checkpoint", type=Path, help="trained weights (official layout) instead of random ones")
    parser.add_argument("--scenes", type=int, default=0, help="compare on this many held-out procedural scenes")
    parser.add_argument("--photos", nargs="+", help="these scikit-image sample photos only (default: all of them)")
    parser.add_argument("--torch-ranges", action="store_true", help="SAM 2.1: also the PyTorch activation ranges")
    parser.add_argument(
        "--torch-ranges-only", action="store_true",
        help="add the PyTorch activation ranges to the existing --output of an earlier run (islands not rerun)",
    )
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/samexport-bench")))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    variant = get_model(args.variant or ("tiny" if args.checkpoint else "mobile_sam"))
    if (args.torch_ranges or args.torch_ranges_only) and variant.contract is not C.SAM2_GRAPHS:
        parser.error("--torch-ranges runs SAM 2.1's PyTorch encoder: pass a sam2.1_hiera_* variant")
    trained = "-trained" if args.checkpoint else ""
    output = args.output or ROOT / "benchmarks" / "results" / f"{variant.name}{trained}-fp16-islands.json"
    if args.torch_ranges_only:
        document = json.loads(output.read_text())
        if document["variant"] != variant.name:
            parser.error(f"{output} holds {document['variant']}, not {variant.name}")
        add_torch_ranges(document, variant, args)
        output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {output}")
        return
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
    document["machine"]["load_average_at_end"] = os.getloadavg()
    output.write_text(json.dumps(document, indent=2) + "\n")  # the islands, before the longer check
    if args.torch_ranges:
        add_torch_ranges(document, variant, args)
        output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {output}")


def add_torch_ranges(document: dict, variant, args) -> None:
    """``document["torch_ranges"]``: :func:`torch_activation_ranges` on the run's weights and images."""
    from samexport.image_sources import sample_images

    checkpoint = args.checkpoint or args.work / f"{variant.name}_random.pth"
    if not checkpoint.exists():
        from samexport.testing import save_random_checkpoint

        save_random_checkpoint(variant.name, checkpoint)
    images, _ = sample_images(args.photos or document["images"])
    ranges = torch_activation_ranges(variant, checkpoint, images)
    ranges["command"] = " ".join(["python benchmarks/fp16_islands.py", *sys.argv[1:]])
    ranges["load_average"] = {"start": document["machine"].get("load_average_at_end"), "end": os.getloadavg()}
    document["torch_ranges"] = ranges


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
