"""Precision lives in the ONNX graph: fp32 graphs -> FP16 (with FP32 islands) and INT8 (Q/DQ).

- :mod:`samexport.precision.fp16`: ``convert_to_fp16(src, dst, fp32_ops=...)``.
- :mod:`samexport.precision.int8`: ``quantize_encoder_int8(src, dst, calib_dir, cache_path=...)``.

Submodules import ``onnx`` / ``onnxruntime``; this package itself imports nothing heavy.
"""
