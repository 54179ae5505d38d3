"""Latency per pipeline stage and per backend, with the official-recipe decoder as a peer baseline.

Stages (keys of ``stages`` in the results; times are per call):

- shared by every backend (NumPy): ``preprocess`` (HxWx3 uint8 -> 1x3x1024x1024),
  ``postprocess_1_mask`` and ``postprocess_3_masks`` (256x256 logits -> boolean masks at the
  original size);
- per backend: ``encoder``; the decoder alone (low-res outputs) for ``decoder_point``,
  ``decoder_box_point``, ``decoder_10_points``, ``decoder_mask_input`` (a point and a mask
  input), and ``decoder_boxes_<n>`` (n boxes in one call; n = 1, 16, 64 by default);
  ``predict_point`` and ``predict_point_single``: ``SamPredictor.predict`` for one point, i.e.
  decoder plus postprocessing to the original size, three masks or one;
- peer baseline (ONNX Runtime CPU): ``official_decoder_4_masks`` (the official script's default)
  and ``official_decoder_best_mask`` (``--return-single-mask``), one point, same image size.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.artifacts import Manifest, read_manifest
from samexport.bench.flops import encoder_gflop, measure_peak_matmul
from samexport.bench.inputs import decoder_prompts, default_bench_image
from samexport.bench.peer import OfficialDecoder, export_official_decoder, official_sam
from samexport.bench.report import evaluate_targets, peer_ratios
from samexport.bench.timing import Timing, measure
from samexport.checkpoint import read_state_dict
from samexport.engines import tensorrt_availability
from samexport.errors import SamExportError
from samexport.family_transforms import mask_upsampling_for, preprocess_for
from samexport.image_sources import read_images
from samexport.runtime.backends import onnxruntime_providers, open_backend
from samexport.runtime.predictors import open_predictor, torch_reference
from samexport.utils import package_versions
from samexport.variants import get_model, get_variant

BackendKind = str  # one of constants.BENCH_BACKENDS
BACKEND_KINDS: tuple[str, ...] = C.BENCH_BACKENDS
RESULTS_FORMAT = 1


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        artifact_dirs: artifact directories from ``samexport build`` (one per precision, e.g.
            ``engines/vit_b-fp32`` and ``engines/vit_b-int8``); the first sets the variant.
        backends: backend kinds to try; absent ones are reported as skipped, with the reason.
        checkpoint: the PyTorch weights, for the ``torch`` reference backend and the peer
            baseline (which otherwise uses random weights: its latency does not depend on them).
        images: folder of images; default scikit-image's ``coffee`` resized to 1500x2250.
        runs: timed calls per stage (after ``warmup`` untimed calls).
        warmup: untimed calls per stage.
        batch_sizes: boxes per decoder call for the ``decoder_boxes_<n>`` stages; must include 1
            (the per-call baseline the batching speedup divides by).
        peer: also time the official-recipe decoder.
    """

    artifact_dirs: tuple[Path, ...]
    backends: tuple[BackendKind, ...] = BACKEND_KINDS
    checkpoint: Path | None = None
    images: Path | None = None
    runs: int = 5
    warmup: int = 1
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    peer: bool = True

    def __post_init__(self) -> None:
        if not self.artifact_dirs:
            raise SamExportError("give at least one artifact directory")
        for backend in self.backends:
            C.check_backend(backend, BACKEND_KINDS)
        if self.runs < 1 or self.warmup < 0:
            raise SamExportError(f"runs must be >= 1 and warmup >= 0; got {self.runs}, {self.warmup}")
        if 1 not in self.batch_sizes or min(self.batch_sizes) < 1:
            raise SamExportError(f"batch sizes must be >= 1 and include 1; got {self.batch_sizes}")


@dataclass
class BackendUnderTest:
    """One backend to time, or the reason it cannot be (``backend`` is None then)."""

    label: str
    kind: str
    precision: str | None = None
    artifact_dir: Path | None = None
    backend: object | None = None
    skipped: str | None = None
    stages: dict[str, Timing] = field(default_factory=dict)


# -- what differs by family -------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyStages:
    """A model family's host-side stages, keyed by its graph contract (``FAMILY_STAGES``).

    Attributes:
        contract: the family's graph contract; its host transforms (``preprocess``, the image to
            the encoder's 1x3x1024x1024 input, and ``postprocess``, low-res logits Nx256x256 to
            boolean masks at the original (H, W)) are the predictor's own
            (``samexport.family_transforms``).
        peer: why no official-recipe decoder is timed for this family, or None where one is.
    """

    contract: C.GraphContract
    peer: str | None = None

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess_for(self.contract)(image)

    def postprocess(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return mask_upsampling_for(self.contract, size).whole(logits, threshold=C.MASK_THRESHOLD)


FAMILY_STAGES: dict[C.GraphContract, FamilyStages] = {
    C.SAM_GRAPHS: FamilyStages(C.SAM_GRAPHS),
    C.SAM2_GRAPHS: FamilyStages(
        C.SAM2_GRAPHS,
        peer="the official SAM 2.1 (sam2==1.1.0) has no ONNX decoder recipe to time; "
        "segment_anything's SamOnnxModel decodes SAM's graphs only",
    ),
}


# -- backends ---------------------------------------------------------------------------------


def _open_torch(config: BenchConfig, manifests: dict[Path, Manifest]) -> list[BackendUnderTest]:
    if config.checkpoint is None:
        return [BackendUnderTest("torch", "torch", skipped="needs --checkpoint (the PyTorch weights)")]

    backend = torch_reference(config.checkpoint, manifests[config.artifact_dirs[0]].variant)
    return [BackendUnderTest("torch fp32", "torch", "fp32", backend=backend)]


def _open_onnxruntime(device: str) -> Callable[[BenchConfig, dict[Path, dict]], list[BackendUnderTest]]:
    def open_all(config: BenchConfig, manifests: dict[Path, Manifest]) -> list[BackendUnderTest]:
        kind = f"onnxruntime-{device}"
        try:
            onnxruntime_providers(device)
        except SamExportError as exc:
            return [BackendUnderTest(kind, kind, skipped=str(exc))]
        out = []
        for folder, manifest in manifests.items():
            precision = manifest.precision
            backend = open_backend(folder, kind)
            out.append(BackendUnderTest(f"{kind} {precision}", kind, precision, folder, backend))
        return out

    return open_all


def _open_tensorrt(config: BenchConfig, manifests: dict[Path, Manifest]) -> list[BackendUnderTest]:
    available = tensorrt_availability()
    if not available:
        return [BackendUnderTest("tensorrt", "tensorrt", skipped=available.reason)]

    out = []
    for folder, manifest in manifests.items():
        precision = manifest.precision
        if not manifest.engines:
            out.append(BackendUnderTest(f"tensorrt {precision}", "tensorrt", precision, skipped=f"{folder} has no engines"))
            continue
        out.append(BackendUnderTest(f"tensorrt {precision}", "tensorrt", precision, folder, open_backend(folder, "tensorrt")))
    return out


def _open_openvino(config: BenchConfig, manifests: dict[Path, Manifest], options: dict[str, str]) -> list[BackendUnderTest]:
    """One column per artifact and inference precision: the spec's ``precision=``, else f32 and,
    where the device computes in bf16, bf16 too (OpenVINO's own choice on such CPUs)."""
    if importlib.util.find_spec("openvino") is None:
        return [BackendUnderTest("openvino", "openvino", skipped="openvino is not installed (pip install 'samexport[openvino]')")]

    precisions = [options["precision"]] if "precision" in options else ["f32", "bf16"]
    out = []
    for folder, manifest in manifests.items():
        for precision in precisions:
            spec = "openvino:" + ",".join(f"{k}={v}" for k, v in {**options, "precision": precision}.items())
            label = f"openvino-{options.get('device', C.OPENVINO_DEFAULT_DEVICE).lower()}-{precision} {manifest.precision}"
            try:
                backend = open_backend(folder, spec)
            except SamExportError as exc:
                if "precision" not in options and precision == "bf16":
                    continue  # this device has no bf16: the f32 column says it all
                out.append(BackendUnderTest(label, "openvino", manifest.precision, skipped=str(exc)))
                continue
            label = f"{backend.name} {manifest.precision}"
            out.append(BackendUnderTest(label, "openvino", manifest.precision, folder, backend))
    return out


# Adding a backend = adding its opener here: (config, manifests) -> one entry per artifact.
BACKEND_OPENERS: dict[str, Callable[[BenchConfig, dict[Path, dict]], list[BackendUnderTest]]] = {
    "torch": _open_torch,
    "onnxruntime-cpu": _open_onnxruntime("cpu"),
    "onnxruntime-cuda": _open_onnxruntime("cuda"),
    "tensorrt": _open_tensorrt,
    "openvino": _open_openvino,
}


# -- measuring --------------------------------------------------------------------------------


def _time_backend(entry: BackendUnderTest, images: list[np.ndarray], encoder_inputs: list[np.ndarray],
                  config: BenchConfig, on_step: Callable[[str], None]) -> None:
    backend = entry.backend
    cycle = iter(range(10**9))
    on_step(f"{entry.label}: encoder x{config.runs}")
    entry.stages["encoder"] = measure(
        lambda: backend.run_encoder(encoder_inputs[next(cycle) % len(encoder_inputs)]),
        runs=config.runs, warmup=config.warmup,
    )
    predictor = open_predictor(backend)
    predictor.set_image(images[0])
    prompts = decoder_prompts(predictor.original_size, config.batch_sizes)
    point = prompts["decoder_point"]
    logits = predictor.decode_low_res(**point)[0]
    refine = {**point, "mask_input": logits[:, 1:2]}
    on_step(f"{entry.label}: decoder stages x{config.runs}")
    for stage, kwargs in prompts.items():
        kwargs = refine if stage == "decoder_mask_input" else kwargs
        items = len(kwargs.get("boxes", kwargs.get("point_coords")))
        entry.stages[stage] = measure(
            lambda kwargs=kwargs: predictor.decode_low_res(**kwargs),
            runs=config.runs, warmup=config.warmup, items=items,
        )
    coords, labels = point["point_coords"][0], point["point_labels"][0]
    for stage, multimask in (("predict_point", True), ("predict_point_single", False)):
        entry.stages[stage] = measure(
            lambda multimask=multimask: predictor.predict(coords, labels, multimask_output=multimask),
            runs=config.runs, warmup=config.warmup,
        )


def _time_shared(images: list[np.ndarray], config: BenchConfig, family: FamilyStages) -> dict[str, Timing]:
    cycle = iter(range(10**9))
    stages = {
        "preprocess": measure(
            lambda: family.preprocess(images[next(cycle) % len(images)]),
            runs=config.runs, warmup=config.warmup,
        )
    }
    size = images[0].shape[:2]
    logits = np.random.default_rng(0).standard_normal((1, 3, 256, 256), dtype=np.float32) * 4
    for count in (1, 3):
        stages[f"postprocess_{count}_mask{'s' if count > 1 else ''}"] = measure(
            lambda count=count: family.postprocess(logits[:, :count], size),
            runs=config.runs, warmup=config.warmup,
        )
    return stages


def _time_peer(config: BenchConfig, variant_name: str, embedding: np.ndarray, size: tuple[int, int],
               on_step: Callable[[str], None]) -> dict:
    state = None
    if config.checkpoint is not None:
        state = read_state_dict(config.checkpoint)
    sam = official_sam(get_variant(variant_name), state)
    point = transforms.transform_coords(np.array([[size[1] / 2, size[0] / 2]]), size)
    stages = {}
    with tempfile.TemporaryDirectory(prefix="samexport-peer-") as tmp:
        for stage, single in (("official_decoder_4_masks", False), ("official_decoder_best_mask", True)):
            on_step(f"peer baseline: exporting and timing {stage}")
            path = export_official_decoder(sam, Path(tmp) / f"{stage}.onnx", return_single_mask=single)
            decoder = OfficialDecoder(path)
            stages[stage] = measure(
                lambda decoder=decoder: decoder.predict_point(embedding, point, size),
                runs=config.runs, warmup=config.warmup,
            )
    return {
        "recipe": "segment_anything.utils.onnx.SamOnnxModel exported as scripts/export_onnx_model.py "
        "(TorchScript exporter, opset 17, constant folding), ONNX Runtime CPU, one point + padding point",
        "weights": "checkpoint" if state is not None else "random (decoder latency does not depend on weights)",
        "image_size": list(size),
        "stages": stages,
    }


def run_benchmark(config: BenchConfig, *, on_step: Callable[[str], None] = lambda m: None) -> dict:
    """Measure every stage on every available backend; return the results as a JSON-ready dict.

    The dict holds the configuration, machine (CPU, cores, load average before and after),
    versions, peak matmul GFLOP/s, per-backend stage timings with encoder GFLOP/s and fraction
    of peak, the peer baseline and ratios, and the issue's targets with whether each is met.
    """

    started = time.time()
    load_before = _load_average()
    manifests = {Path(d): read_manifest(d) for d in config.artifact_dirs}
    variants = {m.variant for m in manifests.values()}
    if len(variants) != 1:
        raise SamExportError(f"artifact directories hold different variants: {sorted(variants)}")
    variant_name = variants.pop()
    family = FAMILY_STAGES[get_model(variant_name).contract]

    if config.images is None:
        name, image = default_bench_image()
        named = {name: image}
    else:
        named = read_images(config.images)
    images = list(named.values())

    entries: list[BackendUnderTest] = []
    for spec in config.backends:
        kind, options = C.split_backend(spec)
        opener = BACKEND_OPENERS[kind]
        entries += opener(config, manifests, options) if kind == "openvino" else opener(config, manifests)

    on_step("measuring peak float32 matmul throughput")
    peak = measure_peak_matmul()
    gflop = encoder_gflop(variant_name)

    on_step(f"shared stages x{config.runs}")
    shared = _time_shared(images, config, family)
    encoder_inputs = [family.preprocess(image) for image in images]
    for entry in entries:
        if entry.backend is not None:
            _time_backend(entry, images, encoder_inputs, config, on_step)

    peer = None
    if config.peer:
        reference = next((e.backend for e in entries if e.backend is not None), None)
        if family.peer is not None:
            peer = {"skipped": family.peer}
        elif reference is None:
            peer = {"skipped": "no backend ran, so there is no image embedding to decode"}
        else:
            embedding = reference.run_encoder(encoder_inputs[0])[0]
            peer = _time_peer(config, variant_name, embedding, images[0].shape[:2], on_step)

    backends = []
    for entry in entries:
        result = {"label": entry.label, "kind": entry.kind}
        if entry.skipped:
            backends.append({**result, "skipped": entry.skipped})
            continue
        seconds = entry.stages["encoder"].median_ms / 1e3
        backends.append({
            **result,
            "precision": entry.precision,
            "artifact_dir": None if entry.artifact_dir is None else str(entry.artifact_dir),
            "stages": {k: v.to_dict() for k, v in entry.stages.items()},
            "encoder": {
                "gflop": round(gflop, 1),
                "gflops": round(gflop / seconds, 1),
                "fraction_of_peak": round(gflop / seconds / peak["gflops"], 3),
            },
        })
    results = {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": None,
        "machine": _machine(load_before),
        "versions": package_versions(
            "samexport", "numpy", "torch", "onnx", "onnxruntime", "openvino", "segment-anything"
        ),
        "config": {
            "runs": config.runs,
            "warmup": config.warmup,
            "batch_sizes": sorted(set(config.batch_sizes)),
            "backends": list(config.backends),
            "images": [{"name": n, "size": list(i.shape[:2])} for n, i in named.items()],
        },
        "model": {
            "variant": variant_name,
            "checkpoints": sorted({m.checkpoint.file or "?" for m in manifests.values()}),
            "artifacts": [str(d) for d in config.artifact_dirs],
        },
        "peak_matmul": {k: round(v, 1) for k, v in peak.items()},
        "shared_stages": {k: v.to_dict() for k, v in shared.items()},
        "backends": backends,
        "peer_baseline": None if peer is None else {  # a skipped baseline has no "stages"
            **peer, **({"stages": {k: v.to_dict() for k, v in peer["stages"].items()}} if "stages" in peer else {}),
        },
    }
    if peer is not None and "stages" in peer:
        results["peer_baseline"]["ratios"] = peer_ratios(results)
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_after"] = _load_average()
    results["seconds"] = round(time.time() - started, 1)
    return results


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _machine(load_before) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
    }


# The CPU features that decide OpenVINO's and ONNX Runtime's fast paths (bf16, int8 dot products).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` ``/proc/cpuinfo`` lists (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return [flag for flag in CPU_FLAGS if flag in flags]
