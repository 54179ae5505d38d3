"""fp32 ONNX -> INT8 Q/DQ ONNX, calibrated on real images, with a calibration cache.

The default recipe targets TensorRT's explicit quantization (Q/DQ nodes; TensorRT 11 has no INT8
calibrators) and stays conservative for ViT encoders, whose post-training quantization is fragile:

- only the inputs of ``MatMul``/``Conv``/``Gemm`` are quantized (never Softmax, LayerNorm,
  Transpose, Reshape, Add); by default only MatMuls with a constant weight, so the attention
  products ``q @ k^T`` and ``attn @ v`` stay in floating point;
- weights: symmetric per-channel INT8; activations: symmetric per-tensor INT8 (zero points 0);
- activation ranges are the max ``|x|`` over the calibration images (MinMax);
- the Q/DQ graph is then made FP16 (:attr:`Int8Recipe.fp16`): TensorRT parses strongly typed,
  so in an FP32 Q/DQ graph every op that is not quantized would run in FP32/TF32.

The ``onnxruntime`` recipe (:data:`RECIPES`) also quantizes the outputs of those ops, which ONNX
Runtime's CPU provider needs to run them as integer kernels (``QLinearMatMul``), and keeps the
weights to 7 bits (``[-64, 64]``): on x86 CPUs without VNNI (AVX2, AVX-512F) those kernels add
pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which saturates with 8-bit weights
(255 * 127 * 2 > 32767). See :attr:`Int8Recipe.reduce_range`.

Calibration runs one image at a time through an ONNX Runtime session of the graph extended with
one ``ReduceMax(Abs(x))`` scalar output per calibrated tensor, so memory stays at one inference:
vit_b peaks at ~5.1 GiB RSS with 2 or 6 images (a plain fp32 inference: 3.9 GiB), where ONNX
Runtime's ``quantize_static`` calibrator (MinMax, MatMul/Conv/Gemm only) reached 23 GiB with 2
images and was killed. The ranges are cached as JSON keyed by the model's sha256, the images' sha256s and
the recipe, so rebuilding does not recalibrate. Quantization itself is ONNX Runtime's
``QDQQuantizer`` fed with these ranges.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.image_sources import image_files
from samexport.imageio import read_image
from samexport.models.families import EncoderFamily
from samexport.precision.fp16 import DEFAULT_FP32_OPS, convert_to_fp16
from samexport.staging import write_atomically
from samexport.transforms import preprocess
from samexport.utils import sha256_file

log = logging.getLogger(__name__)

FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 x and scales from opset 19
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Int8Recipe:
    """What gets quantized. Part of the calibration cache key.

    Attributes:
        op_types: op types whose inputs get Q/DQ.
        quantize_activation_matmuls: also quantize MatMuls of two activations (attention
            ``q @ k^T`` and ``attn @ v``); off by default (softmax outputs lose most of their
            resolution in symmetric INT8).
        quantize_outputs: also put Q/DQ on the outputs of the quantized ops. TensorRT fuses
            ``DQ -> MatMul`` either way, so off (fewer quantization points) is the TensorRT
            choice; ONNX Runtime's CPU provider only runs integer kernels (``QLinearMatMul``)
            with outputs quantized: vit_b encoder 3.1 s with, 5.5 s without, fp32 4.8 s
            (2-core CPU, median of 7), at embedding cosine >= 0.998 vs >= 0.9992.
        reduce_range: 7-bit weights (int8 in ``[-64, 64]``, activations keep 8 bits), so that
            ONNX Runtime's x86 ``u8s8`` integer kernels cannot saturate their int16 pair sums
            (255 * 64 * 2 < 32767). Without it, on CPUs without VNNI (e.g. AVX2-only AMD EPYC)
            the tiny model's embedding cosine was 0.983 where the same graph run as float
            Q/DQ gave 0.9996; with it 0.9996 either way, on the same integer kernels (same speed).
            Only matters with ``quantize_outputs`` (the integer kernels run only then); TensorRT
            and the float ``DQ -> MatMul`` path are unaffected, so off by default.
        fp16: after inserting Q/DQ, convert the graph with
            :func:`samexport.precision.fp16.convert_to_fp16` (the same FP32 islands as the fp16
            build): activations between the Q/DQ nodes and the Q/DQ scales become FP16, the INT8
            weights and zero points stay INT8, and the default opset is raised to 19 (the first
            with FP16 ``QuantizeLinear``/``DequantizeLinear``; the ONNX-TensorRT parser takes
            opsets 9 to 20 from TensorRT 10.0 and lists FP16 for both ops). TensorRT builds
            strongly typed, so without this every op that is not quantized runs in FP32/TF32.
            The ranges still come from the FP32 graph, so this is not part of the cache key.
            On for TensorRT; off for ONNX Runtime, whose CPU integer kernels want FP32 scales.
        max_images: use at most this many images of the folder (sorted by name).
        float_tail: leave the last this many quantizable nodes (graph order) in floating point:
            the encoder's output side, whose error reaches the embedding undamped. Set per
            encoder family (:data:`FAMILY_RECIPES`).
    """

    op_types: tuple[str, ...] = ("MatMul", "Conv", "Gemm")
    quantize_activation_matmuls: bool = False
    quantize_outputs: bool = False
    reduce_range: bool = False
    fp16: bool = True
    max_images: int = 64
    float_tail: int = 0


Int8Target = Literal["tensorrt", "onnxruntime", "openvino"]
# For ONNX Runtime, also quantizing the attention MatMuls was slower (vit_b 3.8 s vs 3.1 s) and
# less accurate (cosine 0.988); per-tensor weights were no faster. reduce_range is for
# correctness on CPUs without VNNI (see Int8Recipe), not speed.
# For OpenVINO (CPU with VNNI or AMX): Q/DQ on the inputs only, 8-bit weights, FP32 scales.
# OpenVINO runs the MatMuls as integer kernels from the inputs' Q/DQ alone, so quantizing the
# outputs (what ONNX Runtime needs) only adds rounding; on a VNNI CPU the 8-bit weights do not
# saturate. mobile_sam encoder on OpenVINO CPU (f32 hint, 5 round-robin rounds, 2-core
# AVX512_VNNI/BF16 EPYC; docs/openvino.md, "INT8"): this recipe 2.02x ONNX Runtime fp32 at
# embedding cosine 0.99992 against fp32, the onnxruntime recipe 2.05x at 0.99975, the same with
# 8-bit weights 2.08x at 0.99984, NNCF's post-training quantization (TRANSFORMER, SmoothQuant)
# 2.19x at 0.99979, the tensorrt recipe (FP16 Q/DQ) 1.59x at 0.99992: the same speed, the
# accuracy of the TensorRT placement. OpenVINO's documentation says its 8-bit kernels saturate
# on CPUs without VNNI as ONNX Runtime's do: there, use the onnxruntime recipe (7-bit weights).
RECIPES: dict[str, Int8Recipe] = {
    "tensorrt": Int8Recipe(),
    "onnxruntime": Int8Recipe(quantize_outputs=True, reduce_range=True, fp16=False),
    "openvino": Int8Recipe(fp16=False),
}
"""The recipe for each runtime the Q/DQ placement is tuned for."""

# The ONNX Runtime int8 recipe (integer kernels, outputs quantized too) keeps TinyViT's last 6
# quantizable nodes in float: the last block's attention projection, local convolution and MLP,
# and the neck's two convolutions. Quantized, they cost the worst mask IoU most: 0.798 with all
# 69 nodes quantized, 0.822 with the neck in float, 0.876 with these 6, embedding cosine
# 0.99936 -> 0.99975 (random weights, astronaut + portrait, the prompt suite against fp32).
# Single nodes gave 0.79-0.81 each, and runs of 9 elsewhere in the graph 0.79-0.83. No slower:
# 1.70 s against 1.74 s all quantized (fp32 1.56 s; 2 cores, same run). Measured by
# benchmarks/int8_float_tail.py (results/mobile_sam-int8-onnxruntime-float-tail.json).
# TensorRT's recipe (outputs not quantized) gives embedding cosine 0.9997 as it is.
TINY_VIT_ONNXRUNTIME_FLOAT_TAIL = 6


def _tiny_vit_recipe(recipe: Int8Recipe) -> Int8Recipe:
    if not recipe.quantize_outputs:
        return recipe
    return replace(recipe, float_tail=TINY_VIT_ONNXRUNTIME_FLOAT_TAIL)


FAMILY_RECIPES: dict[str, Callable[[Int8Recipe], Int8Recipe]] = {"tiny_vit": _tiny_vit_recipe}
"""How an encoder family (by name) adjusts a :data:`RECIPES` entry; a family not listed takes it
as it is."""


def recipe_for(target: Int8Target, family: EncoderFamily | None = None) -> Int8Recipe:
    """The :data:`RECIPES` entry for ``target`` as the encoder ``family`` (an
    :class:`~samexport.models.families.EncoderFamily`, None: as is) adjusts it; an unknown
    target lists the valid ones."""
    if target not in RECIPES:
        raise SamExportError(f"unknown int8 target {target!r}; valid: {', '.join(RECIPES)}")
    recipe = RECIPES[target]
    adjust = None if family is None else FAMILY_RECIPES.get(family.name)
    return recipe if adjust is None else adjust(recipe)


def list_images(calib_dir: Path | str, limit: int | None = None) -> list[Path]:
    """Image files of ``calib_dir`` (not recursive), sorted by name; raises if there are none."""
    return image_files(calib_dir, what="calibration")[:limit]


def check_calibration_images(calib_dir: Path | str, limit: int | None = None) -> list[Path]:
    """:func:`list_images`, each image decoded in full once, before any export work.

    A file ``samexport.imageio.read_image`` (what calibration reads with) refuses (truncated,
    not an image, too large, a float image outside 0..1) is refused by name rather than skipped: the calibration ranges, and their cache key, are those of the
    images the user chose, and a skipped file would silently calibrate on fewer.

    Raises:
        SamExportError: no images, or an image that cannot be read (the message names it).
    """

    paths = list_images(calib_dir, limit)
    for path in paths:
        try:
            read_image(path)  # what encoder_feeds reads: the same decoder, the same refusals
        except SamExportError as exc:
            raise SamExportError(
                f"calibration image {path} cannot be read ({exc}); fix or remove it from {calib_dir}"
            ) from None
    return paths


def encoder_feeds(paths: Iterable[Path]) -> Iterator[dict[str, np.ndarray]]:
    """Encoder inputs, one image at a time: image file (read by ``samexport.imageio.read_image``,
    as every samexport command reads images) -> ``samexport.transforms.preprocess``."""

    for path in paths:
        yield {C.IMAGE.name: preprocess(read_image(path))}


def quantized_nodes(model: onnx.ModelProto, recipe: Int8Recipe = Int8Recipe()) -> list[onnx.NodeProto]:
    """Nodes that get Q/DQ inputs under ``recipe``, in graph (topological) order."""
    initializers = {t.name for t in model.graph.initializer}
    nodes = [
        n for n in model.graph.node
        if n.op_type in recipe.op_types
        and (recipe.quantize_activation_matmuls or n.op_type != "MatMul" or n.input[1] in initializers)
    ]
    return nodes[: max(0, len(nodes) - recipe.float_tail)]


def calibrated_tensors(model: onnx.ModelProto, recipe: Int8Recipe = Int8Recipe()) -> list[str]:
    """Float activations whose range the quantizer needs: inputs (and outputs) of quantized ops."""
    initializers = {t.name for t in model.graph.initializer}
    names: dict[str, None] = {}
    for node in quantized_nodes(model, recipe):
        inputs = [x for x in node.input if x]
        if node.op_type in ("Conv", "Gemm"):
            inputs = inputs[:1] if node.op_type == "Conv" else inputs[:2]
        for name in inputs + (list(node.output) if recipe.quantize_outputs else []):
            if name not in initializers:
                names[name] = None
    return list(names)


def collect_ranges(model_path: Path | str, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max ``|x|`` of each tensor over all ``feeds``, running the model one feed at a time.

    The graph gets one scalar ``ReduceMax(Abs(x))`` output per tensor, so only scalars leave
    the session and memory stays at one inference.
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    outputs = []
    for i, name in enumerate(tensors):
        absolute, peak = f"__calib_abs_{i}", f"__calib_absmax_{i}"
        model.graph.node.extend([
            helper.make_node("Abs", [name], [absolute], name=absolute),
            helper.make_node("ReduceMax", [absolute], [peak], name=peak, keepdims=0),
        ])
        model.graph.output.append(helper.make_tensor_value_info(peak, TensorProto.FLOAT, []))
        outputs.append(peak)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # return each image's activations to the system
    with tempfile.TemporaryDirectory(prefix="samexport-calib-") as tmp:
        # From a file, so no serialized copy of the weights is held next to the session's.
        augmented = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(augmented), save_as_external_data=True, location="augmented.onnx.data")
        del model
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    peaks = np.zeros(len(tensors), dtype=np.float32)
    count = 0
    for feed in feeds:
        values = session.run(outputs, feed)
        peaks = np.maximum(peaks, np.asarray(values, dtype=np.float32))
        count += 1
    if count == 0:
        raise SamExportError("calibration got no inputs")
    return {name: float(v) for name, v in zip(tensors, peaks)}


def cache_key(model_path: Path | str, images: list[Path], recipe: Int8Recipe) -> dict:
    """What the ranges depend on: the graph, the image contents (in order), the recipe (less
    :attr:`Int8Recipe.fp16`: the ranges come from the FP32 graph either way)."""
    fields = asdict(recipe)
    del fields["fp16"]
    return {
        "format": CACHE_FORMAT,
        "model_sha256": sha256_file(model_path),
        "images": [[p.name, sha256_file(p)] for p in images],
        "recipe": fields,
    }


class MalformedCacheError(SamExportError):
    """A calibration cache file that is not one (not JSON, or not a ``key`` and ``ranges``)."""


def check_calibration_cache(cache_path: Path | str, *, replace_malformed: bool = False) -> None:
    """Check, before any export work, that the calibration cache can be read and then written: not
    a folder, its folder writable (or creatable), and, when it exists, readable and a cache.

    Args:
        replace_malformed: the file is samexport's own (the build's cache in samexport's cache
            folder), so a malformed one is reported as a warning and replaced by the calibration;
            otherwise (a path the caller chose) it is an error.

    Raises:
        SamExportError: the path cannot be used; a malformed file unless ``replace_malformed``.
    """
    cache_path = Path(cache_path)
    if cache_path.is_dir():
        raise SamExportError(f"calibration cache {cache_path} is a folder; remove it or choose another cache path")
    folder = cache_path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SamExportError(f"calibration cache {cache_path} cannot be written: {folder} is not a writable folder")
    try:
        load_cached_ranges(cache_path, {})
    except MalformedCacheError as exc:
        if not replace_malformed:
            raise
        log.warning("%s; samexport wrote it, so it is recalibrated and replaced", exc)


def load_cached_ranges(cache_path: Path, key: dict) -> dict[str, float] | None:
    """The cached ranges when ``cache_path`` holds ranges for exactly ``key``, else None (also
    when there is no cache file yet).

    Raises:
        MalformedCacheError: the file is not a calibration cache (not JSON, or not an object with
            a ``key`` and finite numeric ``ranges``); the message names it.
        SamExportError: the file cannot be read.
    """
    try:
        text = cache_path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SamExportError(f"cannot read calibration cache {cache_path}: {exc}") from None
    malformed = f"calibration cache {cache_path} is malformed"
    try:
        cached = json.loads(text)
    except ValueError as exc:
        raise MalformedCacheError(f"{malformed} (not valid JSON: {exc}); delete it to recalibrate") from None
    ranges = cached.get("ranges") if isinstance(cached, dict) else None
    if not isinstance(ranges, dict) or "key" not in cached or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in ranges.values()
    ):
        raise MalformedCacheError(
            f"{malformed} (expected an object with 'key' and numeric 'ranges', got "
            f"{type(cached).__name__}); delete it to recalibrate"
        )
    if cached["key"] != json.loads(json.dumps(key)):
        return None
    return {k: float(v) for k, v in ranges.items()}


def save_ranges(cache_path: Path, key: dict, ranges: dict[str, float]) -> None:
    """Write the cache atomically (:func:`samexport.staging.write_atomically`)."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache_path, json.dumps({"key": key, "ranges": ranges}, indent=1))


def quantizer_arguments(model: onnx.ModelProto, ranges: dict[str, float], recipe: Int8Recipe, nodes: list[str]) -> dict:
    """The keyword arguments of ONNX Runtime's ``QDQQuantizer`` for ``recipe``: per-channel
    symmetric INT8 weights, symmetric INT8 activations with the ``ranges`` (absolute peaks) as
    MinMax calibration data, on the named ``nodes``.

    By keyword: onnxruntime 1.17 still took ``mode, static`` after ``reduce_range``, 1.18 removed
    them, so positional arguments would shift between versions; pyproject.toml requires >= 1.18
    (``tests/precision/test_precision.py`` binds these names to the installed signature).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {name: TensorData(lowest=np.float32(-peak), highest=np.float32(peak)) for name, peak in ranges.items()}
    op_types = list(recipe.op_types)
    return {
        "model": model,
        "per_channel": True,
        "reduce_range": recipe.reduce_range,  # 7-bit weights
        "weight_qType": QuantType.QInt8,
        "activation_qType": QuantType.QInt8,
        "tensors_range": TensorsData(CalibrationMethod.MinMax, data),
        "nodes_to_quantize": nodes,
        "nodes_to_exclude": [],
        "op_types_to_quantize": op_types,
        "extra_options": {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT reads float biases; int32 DQ does not parse
            "OpTypesToExcludeOutputQuantization": [] if recipe.quantize_outputs else op_types,
        },
    }


def quantize_with_ranges(
    src: Path | str, dst: Path | str, ranges: dict[str, float], recipe: Int8Recipe, *, float_nodes: Collection[str] = ()
) -> Path:
    """Insert Q/DQ nodes into ``src`` with the given symmetric activation ranges; write ``dst``.
    ``float_nodes``: names of nodes the recipe would quantize that stay in float (for
    sensitivity studies, ``benchmarks/int8_float_tail.py``)."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    with tempfile.TemporaryDirectory(prefix="samexport-int8-") as tmp:
        copy = Path(tmp) / "model.onnx"
        onnx.save(onnx.load(str(src)), str(copy))  # shape inference writes next to its input
        model = load_model_with_shape_infer(copy)
    nodes = [n.name for n in quantized_nodes(model, recipe) if n.name not in float_nodes]
    if not all(nodes):
        raise SamExportError(f"{Path(src).name}: every node to quantize needs a name")
    quantizer = QDQQuantizer(**quantizer_arguments(model, ranges, recipe, nodes))
    quantizer.quantize_model()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(dst), False)
    return dst


def quantize_encoder_int8(
    src: Path | str,
    dst: Path | str,
    calib_dir: Path | str,
    *,
    cache_path: Path | str | None = None,
    recipe: Int8Recipe = Int8Recipe(),
    fp32_ops: Collection[str] | None = None,
    replace_malformed_cache: bool = False,
) -> Path:
    """Calibrate the fp32 encoder ``src`` on the images of ``calib_dir`` and write INT8 Q/DQ ``dst``.

    Args:
        src: fp32 ``encoder.onnx`` (input ``image`` 1x3x1024x1024).
        dst: output path.
        calib_dir: folder of RGB images (jpg, png, ...); at most ``recipe.max_images`` are used.
        cache_path: JSON calibration cache; reused when the model, images and recipe match,
            (re)written otherwise. None: no cache.
        recipe: what to quantize; see :class:`Int8Recipe`.
        fp32_ops: with ``recipe.fp16``, the op types kept in FP32 (the variant's
            ``fp32_ops``); None: :data:`samexport.precision.fp16.DEFAULT_FP32_OPS`.
        replace_malformed_cache: ``cache_path`` is samexport's own file: a malformed one is
            replaced (with a warning) instead of refused (see :func:`check_calibration_cache`).
    """
    images = check_calibration_images(calib_dir, recipe.max_images)
    if cache_path is not None:
        check_calibration_cache(cache_path, replace_malformed=replace_malformed_cache)
    ranges = None
    key = None
    if cache_path is not None:
        cache_path = Path(cache_path)
        key = cache_key(src, images, recipe)
        try:
            ranges = load_cached_ranges(cache_path, key)
        except MalformedCacheError:
            if not replace_malformed_cache:
                raise
            ranges = None  # said by check_calibration_cache; replaced below
        if ranges is not None:
            log.info("calibration ranges from cache %s", cache_path)
    if ranges is None:
        model = onnx.load(str(src), load_external_data=False)
        tensors = calibrated_tensors(model, recipe)
        del model
        log.info("calibrating %d tensors on %d images", len(tensors), len(images))
        ranges = collect_ranges(src, tensors, encoder_feeds(images))
        if cache_path is not None:
            save_ranges(cache_path, key, ranges)
    if not recipe.fp16:
        return quantize_with_ranges(src, dst, ranges, recipe)
    with tempfile.TemporaryDirectory(prefix="samexport-int8-") as tmp:
        qdq = quantize_with_ranges(src, Path(tmp) / "qdq.onnx", ranges, recipe)
        return qdq_to_fp16(qdq, dst, fp32_ops=fp32_ops)


def qdq_to_fp16(src: Path | str, dst: Path | str, *, fp32_ops: Collection[str] | None = None) -> Path:
    """FP32 Q/DQ graph ``src`` -> ``dst`` with FP16 activations and scales (see :attr:`Int8Recipe.fp16`).

    INT8 weights and zero points are untouched; a scale that leaves the FP16 normal range
    (below 6.1e-5) is kept as a subnormal with a warning, one that would become 0 raises.
    """

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, FP16_QDQ_OPSET)
    with tempfile.TemporaryDirectory(prefix="samexport-int8-") as tmp:
        raised = Path(tmp) / src.name
        onnx.save(model, str(raised))
        del model
        convert_to_fp16(raised, dst, fp32_ops=DEFAULT_FP32_OPS if fp32_ops is None else fp32_ops)
    model = onnx.load(str(dst))
    inits = {t.name: t for t in model.graph.initializer}
    tiny = zero = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = inits[node.input[1]]
            if scale.data_type != TensorProto.FLOAT16:
                raise SamExportError(f"{dst.name}: {node.name} kept a non-fp16 scale")
            values = np.abs(onnx.numpy_helper.to_array(scale))
            zero += int(np.count_nonzero(values == 0))
            tiny += int(np.count_nonzero(values < np.finfo(np.float16).tiny))
    if zero:
        raise SamExportError(f"{dst.name}: {zero} int8 scales underflow to 0 in fp16; use --int8-for onnxruntime")
    if tiny:
        log.warning("%s: %d int8 scales are fp16 subnormals (below 6.1e-5)", dst.name, tiny)
    return dst
