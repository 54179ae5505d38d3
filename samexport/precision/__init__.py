"""Precision lives in the ONNX graph: fp32 graphs -> FP16 (with FP32 islands) and INT8 (Q/DQ).

- :mod:`samexport.precision.fp16`: ``convert_to_fp16(src, dst, fp32_ops=...)``.
- :mod:`samexport.precision.int8`: ``quantize_encoder_int8(src, dst, calib_dir, cache_path=...)``.
- :mod:`samexport.precision.calibration`: the calibration images, ranges and cache it uses.

Submodules import ``onnx`` / ``onnxruntime``; this package itself imports nothing heavy: it holds
the op types FP16 graphs keep in FP32 by default, which the variant registry reads.
"""

DEFAULT_FP32_OPS: frozenset[str] = frozenset({
    # Normalisations: the variance overflows FP16 (SAM's neck, EfficientViT-SAM, MobileSAM).
    "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    # Attention probabilities and anything exponential.
    "Softmax", "LogSoftmax", "Exp", "Log",
    # Reductions accumulate; powers and roots leave the FP16 range quickly.
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "Pow", "Sqrt", "Reciprocal",
    # Prompt encoder positional encoding (with its input-fed argument, see fp16.py).
    "Sin", "Cos",
})
