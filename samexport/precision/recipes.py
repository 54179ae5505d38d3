"""What INT8 quantizes, per runtime and encoder family: :class:`Int8Recipe` records and the
tables that pick one (:func:`recipe_for`). Plain records, no onnx: the build checks the requested
target at the door with them; :mod:`samexport.precision.int8` does the graph work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from samexport.errors import SamExportError
from samexport.models.families import EncoderFamily


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
