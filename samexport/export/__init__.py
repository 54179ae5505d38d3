"""Torch SAM -> ONNX graphs (needs the ``torch`` extra)."""
