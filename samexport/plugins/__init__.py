"""Fused attention for the TensorRT plugin.

- ``attention_reference``: pure-torch reference of SAM attention with the decomposed rel-pos bias.
- ``attention_kernel``: the Triton kernel, its launcher and a PTX compile helper (imports triton).
- ``onnx_node``: the kernel as one ONNX node TensorRT imports as a plugin (torch op, export
  translation, ONNX reference for ONNX Runtime checks).
- ``tensorrt_plugin``: registration with TensorRT's Python plugin API, AOT kernel compile
  (TensorRT >= 10.9; imports tensorrt lazily).
"""
