"""Fused attention for the TensorRT plugin.

- ``attention_reference``: pure-torch reference of SAM attention with the decomposed rel-pos bias.
- ``attention_kernel``: the Triton kernel, its launcher and a PTX compile helper (imports triton).
"""
