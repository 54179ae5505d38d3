"""Automatic mask generation ("segment everything") on the batched decoder."""

from samexport.amg.generator import OUTPUT_MODES, AutomaticMaskGenerator, OutputMode

__all__ = ["AutomaticMaskGenerator", "OUTPUT_MODES", "OutputMode"]
