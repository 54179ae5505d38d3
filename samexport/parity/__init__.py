"""Fidelity of an exported model to the PyTorch reference: structured, JSON-serialisable results.

:func:`run_parity` runs a reference backend (normally ``TorchBackend``, the PyTorch weights) and a
candidate backend (an artifact on ONNX Runtime, TensorRT, ...) on the same images and prompts and
compares, per image and per prompt:

- the image embedding (1x256x64x64): max and mean absolute error, error relative to the
  reference's scale (``max |reference|``), cosine similarity;
- the decoder's four low-resolution mask logits (Bx4x256x256): the same error figures;
- the predicted IoU scores (Bx4): max absolute error;
- the thresholded masks at the original image size (``logits > 0`` after the shared
  ``transforms.postprocess_masks``): IoU of every mask, min and mean.

Each figure is checked against :data:`TOLERANCES` for the candidate's precision; the report is
truthy when every check passes (Polygraphy's comparison results work the same way).

The candidate decodes with its *own* embedding, so errors are end to end, as a user sees them.
Mask-refinement prompts feed both backends the same ``mask_input`` (the reference's best mask of
the prompt without a mask), so that input is identical and only the models differ.
"""

from samexport.parity.metrics import (
    TOLERANCES,
    ArrayErrors,
    Check,
    Tolerances,
    get_tolerances,
    mask_ious,
    tolerance_key,
)
from samexport.parity.prompts import PROMPT_SUITE, QUICK_PROMPTS, Prompt
from samexport.parity.report import ImageParity, ParityReport, PromptParity
from samexport.parity.runner import DecodedPrompt, Precision, parity_for_artifact, quick_parity, run_parity

__all__ = [
    "PROMPT_SUITE",
    "QUICK_PROMPTS",
    "TOLERANCES",
    "ArrayErrors",
    "Check",
    "DecodedPrompt",
    "ImageParity",
    "ParityReport",
    "Precision",
    "Prompt",
    "PromptParity",
    "Tolerances",
    "get_tolerances",
    "mask_ious",
    "parity_for_artifact",
    "quick_parity",
    "run_parity",
    "tolerance_key",
]
