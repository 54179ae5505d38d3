"""Automatic mask generation ("segment everything") on the batched decoder."""

from samexport.amg.generator import OUTPUT_MODES, AutomaticMaskGenerator, OutputMode
from samexport.amg.sam2_generator import SAM2AutomaticMaskGenerator, generator_class

__all__ = ["OUTPUT_MODES", "AutomaticMaskGenerator", "OutputMode", "SAM2AutomaticMaskGenerator", "generator_class"]
