"""SAM in PyTorch, written for export: state-dict compatible with the official checkpoints."""

from samexport.models.sam import Sam

__all__ = ["Sam"]
