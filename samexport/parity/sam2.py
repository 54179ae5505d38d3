"""Parity of SAM 2.1 graphs: a reference and a candidate :class:`~samexport.runtime.backends.
GraphRunner` on the same images and prompts, with the same figures, tolerances and report as SAM's
(:mod:`samexport.parity.runner`).

Per image: the image embedding (``no_mem_embed`` added) as ``embedding``, and the two
high-resolution maps folded into the same figure (the worst of the three, relative to each map's
own scale). Per prompt: the decoder's four low-resolution logits, the four IoU predictions, and the
thresholded masks at the original size (``postprocess_sam2_masks``; no crop). The candidate
decodes with its own features, so errors are end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.parity.metrics import ArrayErrors, Tolerances, get_tolerances, mask_ious
from samexport.parity.prompts import PROMPT_SUITE, Prompt, quick_check_inputs
from samexport.parity.report import ImageParity, ParityReport, PromptParity
from samexport.runtime.backends import GraphRunner, OnnxRuntimeBackend
from samexport.runtime.sam2_predictor import SAM2ImagePredictor
from samexport.runtime.sam2_torch import Sam2TorchBackend
from samexport.sam2_transforms import postprocess_sam2_masks

if TYPE_CHECKING:
    from samexport.models.sam2 import Sam2Image


def _worst(errors: Sequence[ArrayErrors]) -> ArrayErrors:
    """The entry with the largest error relative to its scale."""
    return max(errors, key=lambda e: e.rel_max_abs)


def run_sam2_parity(
    reference: GraphRunner,
    candidate: GraphRunner,
    images: Mapping[str, np.ndarray],
    prompts: Sequence[Prompt] = PROMPT_SUITE,
    *,
    precision: str = "fp32",
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Compare SAM 2.1 ``candidate`` with ``reference`` on every image (HxWx3 uint8) and prompt."""
    if not images:
        raise SamExportError("parity needs at least one image")
    tolerances = tolerances or get_tolerances(precision)
    ref, cand = SAM2ImagePredictor(reference), SAM2ImagePredictor(candidate)
    results = []
    for name, image in images.items():
        ref.set_image(image)
        cand.set_image(image)
        features = _worst([
            ArrayErrors.between(r, c) for r, c in zip(ref._image_features[0], cand._image_features[0])
        ])
        per_prompt = tuple(_compare_prompt(ref, cand, prompt, image.shape[:2]) for prompt in prompts)
        results.append(ImageParity(name, tuple(image.shape[:2]), features, per_prompt))
    return ParityReport(
        reference=reference.name, candidate=candidate.name, precision=precision,
        tolerances=tolerances, images=tuple(results),
    )


def _compare_prompt(ref: SAM2ImagePredictor, cand: SAM2ImagePredictor, prompt: Prompt, size) -> PromptParity:
    kwargs = prompt.in_pixels(size)
    if prompt.refine:
        logits, iou, _ = ref.decode_low_res(**kwargs)
        best = 1 + np.argmax(iou[:, 1:], axis=1)  # best multimask token, as the official loop
        kwargs["mask_input"] = logits[np.arange(len(best)), best][:, None]
    ref_logits, ref_iou, _ = ref.decode_low_res(**kwargs)
    cand_logits, cand_iou, _ = cand.decode_low_res(**kwargs)
    ious = mask_ious(
        postprocess_sam2_masks(ref_logits, size, threshold=C.MASK_THRESHOLD),
        postprocess_sam2_masks(cand_logits, size, threshold=C.MASK_THRESHOLD),
    )
    return PromptParity.between(prompt, ref_logits, cand_logits, ref_iou, cand_iou, ious)


def sam2_quick_parity(
    model: Sam2Image, artifact_dir: Path | str, precision: str = "fp32", *, memory_arena: bool = True,
    image: np.ndarray | None = None,
) -> dict:
    """``samexport build``'s short check for SAM 2.1: the PyTorch model against the folder's
    ``encoder.onnx`` / ``decoder.onnx`` on ONNX Runtime CPU, one image, :data:`QUICK_PROMPTS`.
    Reads no manifest (works on a staging folder). Returns ``ParityReport.to_dict(detail=False)``."""
    folder = Path(artifact_dir)
    candidate = OnnxRuntimeBackend(
        folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device="cpu", memory_arena=memory_arena,
        contract=C.SAM2_GRAPHS,
    )
    images, prompts = quick_check_inputs(image)
    return run_sam2_parity(Sam2TorchBackend(model), candidate, images, prompts, precision=precision).to_dict(detail=False)
