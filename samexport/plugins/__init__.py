"""Fused attention for the TensorRT plugin.

- ``attention_reference``: pure-torch reference of SAM attention with the decomposed rel-pos bias.
- ``attention_kernel``: the kernel's launcher on torch tensors and its public names (imports triton);
  ``attention_triton`` holds the Triton kernel and its tile configuration, ``attention_ptx`` the
  PTX compile for the TensorRT plugin.
- ``onnx_node``: the kernel as one ONNX node TensorRT imports as a plugin (torch op, export
  translation, ONNX reference for ONNX Runtime checks).
- ``tensorrt_plugin``: registration with TensorRT's Python plugin API, AOT kernel compile
  (TensorRT >= 10.9; imports tensorrt lazily).
"""
