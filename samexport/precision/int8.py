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

import logging
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from samexport.errors import SamExportError
from samexport.precision.calibration import (
    MalformedCacheError,
    check_calibration_cache,
    check_calibration_images,
    collect_ranges,
    encoder_feeds,
    load_cached_ranges,
    save_ranges,
)
from samexport.precision.fp16 import DEFAULT_FP32_OPS, convert_to_fp16
from samexport.precision.recipes import Int8Recipe
from samexport.utils import sha256_file

log = logging.getLogger(__name__)

FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 x and scales from opset 19
CACHE_FORMAT = 1


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
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """Calibrate the fp32 encoder ``src`` on the images of ``calib_dir`` and write INT8 Q/DQ ``dst``.

    The door for a direct caller: checks the images and the cache, then
    :func:`quantize_checked_encoder_int8` (which a build calls with the images it checked itself).

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
        preprocess: HxWx3 uint8 -> the encoder's input, the model family's preprocessing; None:
            SAM's (``samexport.transforms.preprocess``). SAM 2.1 passes ``preprocess_sam2``.
    """
    images = check_calibration_images(calib_dir, recipe.max_images)
    if cache_path is not None:
        check_calibration_cache(cache_path, replace_malformed=replace_malformed_cache)
    return quantize_checked_encoder_int8(
        src, dst, images, cache_path=cache_path, recipe=recipe, fp32_ops=fp32_ops,
        replace_malformed_cache=replace_malformed_cache, preprocess=preprocess,
    )


def quantize_checked_encoder_int8(
    src: Path | str,
    dst: Path | str,
    images: Sequence[Path],
    *,
    cache_path: Path | str | None = None,
    recipe: Int8Recipe,
    fp32_ops: Collection[str] | None = None,
    replace_malformed_cache: bool = False,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """:func:`quantize_encoder_int8` on inputs already checked: ``images`` as
    :func:`check_calibration_images` returned them and ``cache_path`` passed by
    :func:`check_calibration_cache` (``samexport build`` checks both at its door, before the
    export, and checks nothing again here)."""
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
        feeds = encoder_feeds(images) if preprocess is None else encoder_feeds(images, preprocess)
        ranges = collect_ranges(src, tensors, feeds)
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
