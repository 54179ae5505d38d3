"""Running parity: a reference and a candidate backend on the same images and prompts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.artifacts import onnxruntime_memory_arena, read_manifest
from samexport.errors import SamExportError
from samexport.image_sources import sample_images
from samexport.parity.metrics import ArrayErrors, Tolerances, get_tolerances, mask_ious, tolerance_key
from samexport.parity.prompts import PROMPT_SUITE, Prompt, quick_check_inputs
from samexport.parity.report import ImageParity, ParityReport, PromptParity
from samexport.parity.sam2 import run_sam2_parity
from samexport.runtime.backends import Backend, OnnxRuntimeBackend, open_backend
from samexport.runtime.predictor import SamPredictor
from samexport.runtime.predictors import torch_reference
from samexport.runtime.torch_backend import TorchBackend

if TYPE_CHECKING:
    from samexport.models import Sam

Precision = C.Precision


@dataclass(frozen=True)
class DecodedPrompt:
    """One prompt of the suite decoded by both sides on one image, for callers that look past the
    report's worst cases (``run_parity``'s ``observe``: which prompt and mask gave them).

    Attributes:
        image: the image's name.
        prompt: the suite's prompt.
        inputs: ``prompt.in_pixels(size)``: point_coords, point_labels, boxes in the original frame.
        reference, candidate: each side's logits upsampled to the original frame (Bx4xHxW);
            a mask is ``logits > MASK_THRESHOLD``.
        ious: Bx4, the IoU of each pair of masks (what the report's mask figures are made of).
        reference_scores, candidate_scores: Bx4, each side's predicted IoUs.
    """

    image: str
    prompt: Prompt
    inputs: dict[str, np.ndarray | None]
    reference: np.ndarray
    candidate: np.ndarray
    ious: np.ndarray
    reference_scores: np.ndarray
    candidate_scores: np.ndarray


def run_parity(
    reference: Backend,
    candidate: Backend,
    images: Mapping[str, np.ndarray],
    prompts: Sequence[Prompt] = PROMPT_SUITE,
    *,
    precision: Precision = "fp32",
    tolerances: Tolerances | None = None,
    observe: Callable[[DecodedPrompt], None] | None = None,
) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on every image and prompt.

    Args:
        reference: the backend taken as truth (``TorchBackend(sam)`` for the PyTorch weights).
        candidate: the backend under test.
        images: name -> HxWx3 uint8 RGB image (original frame).
        prompts: the suite; default :data:`PROMPT_SUITE`.
        precision: the candidate's precision; selects :data:`TOLERANCES` unless ``tolerances``.
        tolerances: explicit limits.
        observe: called with every :class:`DecodedPrompt` (image by image, prompt by prompt).
    """

    if not images:
        raise SamExportError("parity needs at least one image")
    tolerances = tolerances or get_tolerances(precision)
    ref, cand = SamPredictor(reference), SamPredictor(candidate)
    results = []
    for name, image in images.items():
        ref.set_image(image)
        cand.set_image(image)
        embedding = ArrayErrors.between(ref.embedding, cand.embedding)
        per_prompt = tuple(_compare_prompt(ref, cand, prompt, name, observe) for prompt in prompts)
        results.append(ImageParity(name, tuple(ref.original_size), embedding, per_prompt))
    return ParityReport(
        reference=reference.name, candidate=candidate.name, precision=precision,
        tolerances=tolerances, images=tuple(results),
    )


def _compare_prompt(ref, cand, prompt: Prompt, image: str, observe=None) -> PromptParity:
    """Decode ``prompt`` with both predictors (images already set) and compare."""
    kwargs = prompt.in_pixels(ref.original_size)
    if prompt.refine:
        logits, iou = ref.decode_low_res(**kwargs)
        best = 1 + np.argmax(iou[:, 1:], axis=1)  # best multimask token, as the official loop
        kwargs["mask_input"] = logits[np.arange(len(best)), best][:, None]
    ref_logits, ref_iou = ref.decode_low_res(**kwargs)
    cand_logits, cand_iou = cand.decode_low_res(**kwargs)
    ref_masks = transforms.postprocess_masks(ref_logits, ref.input_size, ref.original_size)
    cand_masks = transforms.postprocess_masks(cand_logits, cand.input_size, cand.original_size)
    ious = mask_ious(ref_masks > C.MASK_THRESHOLD, cand_masks > C.MASK_THRESHOLD)
    if observe is not None:
        observe(DecodedPrompt(image, prompt, prompt.in_pixels(ref.original_size), ref_masks, cand_masks, ious,
                              ref_iou, cand_iou))
    return PromptParity.between(prompt, ref_logits, cand_logits, ref_iou, cand_iou, ious)


def quick_parity(
    sam: Sam,
    artifact_dir: Path | str,
    precision: Precision = "fp32",
    *,
    image: np.ndarray | None = None,
    memory_arena: bool | None = None,
) -> dict:
    """A short parity check for ``samexport build`` to store in ``manifest.json``.

    Runs the PyTorch reference (``sam``, eager) and the artifact's ``encoder.onnx`` /
    ``decoder.onnx`` on ONNX Runtime CPU on one image with the prompts in
    :data:`QUICK_PROMPTS`. Reads no manifest, so it works on a staging folder mid-build.

    Args:
        sam: the torch model the graphs were exported from.
        artifact_dir: folder holding ``encoder.onnx`` and ``decoder.onnx``.
        precision: the graphs' precision (selects the tolerances).
        image: HxWx3 uint8 RGB; default scikit-image's ``astronaut`` when scikit-image is
            installed, else a synthetic picture (the result's ``images`` says which).
        memory_arena: ONNX Runtime's CPU memory arena; None: as
            :func:`samexport.artifacts.onnxruntime_memory_arena` gives for ``precision`` (the
            build passes the manifest's, which also knows an int8 encoder on an FP16 graph).

    Returns:
        ``ParityReport.to_dict(detail=False)``: passed, summary, checks, tolerances, images.
    """

    folder = Path(artifact_dir)
    candidate = OnnxRuntimeBackend(
        folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device="cpu",
        memory_arena=onnxruntime_memory_arena(precision) if memory_arena is None else memory_arena,
    )
    images, prompts = quick_check_inputs(image)
    report = run_parity(TorchBackend(sam), candidate, images, prompts, precision=precision)
    return report.to_dict(detail=False)


def parity_for_artifact(
    artifact_dir: Path | str,
    checkpoint: Path | str,
    *,
    images: Mapping[str, np.ndarray] | None = None,
    prompts: Sequence[Prompt] = PROMPT_SUITE,
    backend: str = "onnxruntime-cpu",
) -> tuple[ParityReport, dict[str, str]]:
    """Parity of an artifact directory against the torch model loaded from ``checkpoint``.

    The variant and precision come from the artifact's manifest; a backend that computes in a
    narrower type than the graph (``openvino:precision=bf16``) is held to that type's row
    (:func:`~samexport.parity.metrics.tolerance_key`). ``images`` defaults to the scikit-image
    sample photos.

    Returns:
        (report, images skipped -> reason).
    """

    manifest = read_manifest(artifact_dir)
    skipped: dict[str, str] = {}
    if images is None:
        images, skipped = sample_images()
    candidate = open_backend(artifact_dir, backend)
    reference = torch_reference(checkpoint, manifest.variant)
    precision = tolerance_key(manifest.precision, getattr(candidate, "inference_precision", None))
    report = parity_runner(manifest.contract)(reference, candidate, images, prompts, precision=precision)
    return report, skipped


# The family's parity loop, by graph contract name.
ParityRunner = Callable[..., ParityReport]
_PARITY: dict[str, ParityRunner] = {C.SAM_GRAPHS.name: run_parity, C.SAM2_GRAPHS.name: run_sam2_parity}


def parity_runner(contract: C.GraphContract) -> ParityRunner:
    """The parity loop of the family whose graphs follow ``contract``: ``run_parity`` (SAM,
    MobileSAM) or ``run_sam2_parity`` (SAM 2.1); the same arguments and report."""
    try:
        return _PARITY[contract.name]
    except KeyError:
        raise SamExportError(f"samexport has no parity loop for graph contract {contract.name!r}") from None
