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

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.errors import SamExportError, require

if TYPE_CHECKING:
    from samexport.models import Sam
    from samexport.runtime.backends import Backend

Precision = C.Precision

# Photos bundled with scikit-image. ``stereo_motorcycle`` is downloaded on first use by some
# installs, so it is used only when its file is already in scikit-image's data folder.
SAMPLE_IMAGES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")


# -- tolerances -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits for one precision.

    Attributes:
        embedding_rel_max_abs: max ``|candidate - reference|`` of the embedding over
            ``max |reference|``, per image.
        embedding_cosine: min cosine similarity of the flattened embeddings, per image.
        logits_rel_max_abs: as ``embedding_rel_max_abs``, for the Bx4x256x256 mask logits.
        mask_iou_min: min IoU of any thresholded mask at the original size.
        mask_iou_mean: min of the mean mask IoU over the whole suite.
        iou_score_max_abs: max absolute error of a predicted IoU score.
    """

    embedding_rel_max_abs: float
    embedding_cosine: float
    logits_rel_max_abs: float
    mask_iou_min: float
    mask_iou_mean: float
    iou_score_max_abs: float


TOLERANCES: dict[str, Tolerances] = {
    # fp32 graphs differ from eager torch only by kernel summation order (~1e-6 relative).
    "fp32": Tolerances(
        embedding_rel_max_abs=1e-3, embedding_cosine=0.99999, logits_rel_max_abs=1e-3,
        mask_iou_min=0.99, mask_iou_mean=0.999, iou_score_max_abs=1e-3,
    ),
    # fp16 graphs with fp32 islands (LayerNorm, Softmax, reductions).
    "fp16": Tolerances(
        embedding_rel_max_abs=2e-2, embedding_cosine=0.9995, logits_rel_max_abs=2e-2,
        mask_iou_min=0.95, mask_iou_mean=0.99, iou_score_max_abs=1e-2,
    ),
    # int8 Q/DQ on MatMul/Conv: the bar is embedding cosine >= 0.995.
    "int8": Tolerances(
        embedding_rel_max_abs=0.15, embedding_cosine=0.995, logits_rel_max_abs=0.15,
        mask_iou_min=0.80, mask_iou_mean=0.95, iou_score_max_abs=5e-2,
    ),
}


def get_tolerances(precision: str) -> Tolerances:
    """The tolerances for ``precision``; an unknown name lists the valid ones."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise SamExportError(
            f"unknown precision {precision!r}; valid: {', '.join(TOLERANCES)}"
        ) from None


# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayErrors:
    """How far ``candidate`` is from ``reference`` (same shape), computed in float64.

    Attributes:
        max_abs: max ``|candidate - reference|``.
        mean_abs: mean ``|candidate - reference|``.
        scale: max ``|reference|`` (the "scale" relative errors divide by).
        rel_max_abs: ``max_abs / scale`` (``max_abs`` itself when the scale is 0).
        cosine: cosine similarity of the flattened arrays (1.0 when both are all zero).
    """

    max_abs: float
    mean_abs: float
    scale: float
    rel_max_abs: float
    cosine: float

    @classmethod
    def between(cls, reference: np.ndarray, candidate: np.ndarray) -> ArrayErrors:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        cand = np.asarray(candidate, dtype=np.float64).ravel()
        if ref.shape != cand.shape:
            raise ValueError(
                f"cannot compare arrays of shapes {np.shape(reference)} and {np.shape(candidate)}"
            )
        diff = np.abs(cand - ref)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        norms = float(np.linalg.norm(ref) * np.linalg.norm(cand))
        cosine = float(ref @ cand / norms) if norms else float(not ref.any() and not cand.any())
        return cls(
            max_abs=max_abs,
            mean_abs=float(diff.mean()) if diff.size else 0.0,
            scale=scale,
            rel_max_abs=max_abs / scale if scale else max_abs,
            cosine=cosine,
        )


def mask_ious(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """IoU of each pair of boolean masks ``...xHxW`` -> ``...`` float64 (1.0 where both are empty)."""
    inter = np.logical_and(reference, candidate).sum(axis=(-2, -1))
    union = np.logical_or(reference, candidate).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@dataclass(frozen=True)
class Check:
    """One figure against its limit: ``value <= limit`` for ``bound="max"``, ``>=`` for ``"min"``."""

    metric: str
    value: float
    limit: float
    bound: Literal["max", "min"]

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit if self.bound == "max" else self.value >= self.limit)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class PromptParity:
    """Figures for one prompt (a batch of ``num_prompts`` prompts) on one image."""

    prompt: str
    num_prompts: int
    logits: ArrayErrors
    iou_score_max_abs: float
    mask_iou_min: float
    mask_iou_mean: float
    num_masks: int


@dataclass(frozen=True)
class ImageParity:
    """Figures for one image: its embedding and every prompt of the suite."""

    image: str
    size: tuple[int, int]
    embedding: ArrayErrors
    prompts: tuple[PromptParity, ...]


@dataclass(frozen=True)
class ParityReport:
    """Candidate vs reference over a suite of images and prompts. Truthy when every check passes."""

    reference: str
    candidate: str
    precision: str
    tolerances: Tolerances
    images: tuple[ImageParity, ...]

    @property
    def summary(self) -> dict[str, float]:
        """Worst case (and mean where it says so) of every figure over the whole suite."""
        if not self.images:
            raise ValueError("the parity report has no images")
        prompts = [p for image in self.images for p in image.prompts]
        embeddings = [image.embedding for image in self.images]
        masks = sum(p.num_masks for p in prompts)
        summary = {
            "embedding_max_abs": max(e.max_abs for e in embeddings),
            "embedding_mean_abs": float(np.mean([e.mean_abs for e in embeddings])),
            "embedding_rel_max_abs": max(e.rel_max_abs for e in embeddings),
            "embedding_cosine": min(e.cosine for e in embeddings),
        }
        if prompts:
            summary |= {
                "logits_max_abs": max(p.logits.max_abs for p in prompts),
                "logits_mean_abs": float(np.mean([p.logits.mean_abs for p in prompts])),
                "logits_rel_max_abs": max(p.logits.rel_max_abs for p in prompts),
                "mask_iou_min": min(p.mask_iou_min for p in prompts),
                "mask_iou_mean": sum(p.mask_iou_mean * p.num_masks for p in prompts) / masks,
                "iou_score_max_abs": max(p.iou_score_max_abs for p in prompts),
            }
        return summary

    @property
    def checks(self) -> tuple[Check, ...]:
        summary, tol = self.summary, self.tolerances
        limits = [
            ("embedding_rel_max_abs", tol.embedding_rel_max_abs, "max"),
            ("embedding_cosine", tol.embedding_cosine, "min"),
            ("logits_rel_max_abs", tol.logits_rel_max_abs, "max"),
            ("mask_iou_min", tol.mask_iou_min, "min"),
            ("mask_iou_mean", tol.mask_iou_mean, "min"),
            ("iou_score_max_abs", tol.iou_score_max_abs, "max"),
        ]
        return tuple(
            Check(metric, summary[metric], limit, bound)
            for metric, limit, bound in limits
            if metric in summary
        )

    @property
    def passed(self) -> bool:
        return all(self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self, *, detail: bool = True) -> dict:
        """Plain dict for JSON: verdict, summary, checks, and (``detail``) per image and prompt."""
        out = {
            "passed": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "precision": self.precision,
            "tolerances": asdict(self.tolerances),
            "summary": self.summary,
            "checks": [c.to_dict() for c in self.checks],
            "images": [i.image for i in self.images],
        }
        if detail:
            out["per_image"] = [asdict(image) for image in self.images]
        return out

    def to_json(self, *, detail: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(detail=detail), indent=indent)

    def to_markdown(self) -> str:
        """Checks as a Markdown table, then the worst figures per image and prompt."""
        lines = [
            f"Parity of **{self.candidate}** ({self.precision}) against **{self.reference}**, "
            f"{len(self.images)} images: **{'PASS' if self.passed else 'FAIL'}**",
            "",
            "| metric | value | limit | result |",
            "|---|---|---|---|",
        ]
        for check in self.checks:
            sign = "<=" if check.bound == "max" else ">="
            verdict = "pass" if check.passed else "**FAIL**"
            value = f"{check.value:.3g}" if check.bound == "max" else f"{check.value:.6f}"
            lines.append(f"| {check.metric} | {value} | {sign} {check.limit:g} | {verdict} |")
        lines += [
            "",
            "| image | prompt | B | emb. cosine | emb. max abs | logits max abs | mask IoU min | "
            "mask IoU mean | IoU-score err |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for image in self.images:
            for p in image.prompts:
                lines.append(
                    f"| {image.image} {image.size[0]}x{image.size[1]} | {p.prompt} | {p.num_prompts} | "
                    f"{image.embedding.cosine:.6f} | {image.embedding.max_abs:.2e} | "
                    f"{p.logits.max_abs:.2e} | {p.mask_iou_min:.4f} | {p.mask_iou_mean:.4f} | "
                    f"{p.iou_score_max_abs:.2e} |"
                )
        return "\n".join(lines) + "\n"


# -- the suite --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Prompt:
    """A batch of prompts in coordinates relative to the image, so one suite fits every image.

    Attributes:
        name: short name used in reports.
        points: BxNx2 (x / W, y / H) fractions, or None.
        labels: BxN labels (1 foreground, 0 background), with ``points``.
        boxes: Bx4 (x0 / W, y0 / H, x1 / W, y1 / H) fractions, or None.
        refine: also give a mask input: the reference's best multimask logits for the same
            prompt without a mask (the official "mask refinement" loop).
    """

    name: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    refine: bool = False

    @property
    def num_prompts(self) -> int:
        return len(self.points if self.points is not None else self.boxes)

    def in_pixels(self, size: tuple[int, int]) -> dict[str, np.ndarray | None]:
        """Keyword arguments for ``SamPredictor.decode_low_res`` on an image of ``size`` (H, W)."""
        height, width = size
        scale_xy = np.array([width, height], np.float32)
        return {
            "point_coords": None if self.points is None else self.points * scale_xy,
            "point_labels": None if self.labels is None else self.labels.astype(np.float32),
            "boxes": None if self.boxes is None else self.boxes * np.tile(scale_xy, 2),
        }


def _grid(n: int, low: float, high: float) -> np.ndarray:
    """n x n (x, y) fractions evenly spread over [low, high]^2, row by row."""
    ticks = np.linspace(low, high, n, dtype=np.float32)
    return np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)


def _boxes_around(centres: np.ndarray, half: float) -> np.ndarray:
    return np.concatenate([centres - half, centres + half], axis=1).clip(0.0, 1.0)


def _prompt_suite() -> tuple[Prompt, ...]:
    f32 = np.float32
    centre = np.array([[[0.5, 0.5]]], f32)
    box = np.array([[0.25, 0.25, 0.75, 0.75]], f32)
    multi = np.array([[[0.5, 0.5], [0.4, 0.45], [0.6, 0.55], [0.1, 0.1], [0.9, 0.9]]], f32)
    ten = _grid(4, 0.2, 0.8)[[0, 2, 5, 6, 9, 10, 13, 15, 3, 12]][None]
    return (
        Prompt("point", centre, np.ones((1, 1), f32)),
        Prompt("box", boxes=box),
        Prompt("box_point", centre, np.ones((1, 1), f32), box),
        Prompt("multi_point", multi, np.array([[1, 1, 1, 0, 0]], f32)),
        Prompt("ten_points", ten, np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0, 0]], f32)),
        Prompt("mask_refinement", centre, np.ones((1, 1), f32), refine=True),
        Prompt("batch_points_4", _grid(2, 0.3, 0.7)[:, None], np.ones((4, 1), f32)),
        Prompt("batch_boxes_16", boxes=_boxes_around(_grid(4, 0.2, 0.8), 0.15)),
    )


PROMPT_SUITE: tuple[Prompt, ...] = _prompt_suite()
QUICK_PROMPTS: tuple[str, ...] = ("point", "box", "mask_refinement", "batch_points_4")


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The scikit-image sample photos as HxWx3 uint8 RGB, without downloading anything.

    Returns:
        (images by name, skipped names -> reason).
    """
    data = require("skimage.data", "bench")
    images, skipped = {}, {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            skipped[name] = f"scikit-image has no sample image {name!r}"
            continue
        if name == "stereo_motorcycle" and not _in_skimage_cache("motorcycle_left.png"):
            skipped[name] = "not bundled with scikit-image (download needed); not fetched"
            continue
        try:
            image = loader()
        except Exception as exc:  # noqa: BLE001 - pooch/network errors vary by version
            skipped[name] = f"could not load: {type(exc).__name__}: {exc}"
            continue
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        images[name] = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    return images, skipped


def _in_skimage_cache(filename: str) -> bool:
    """Whether scikit-image has ``filename`` in its data folder (so loading it downloads nothing)."""
    from skimage.data import data_dir

    return Path(data_dir, filename).is_file()


def read_images(folder: Path | str) -> dict[str, np.ndarray]:
    """Every image in ``folder`` that Pillow reads, by file name, as HxWx3 uint8 RGB."""
    from samexport.imageio import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise SamExportError(f"image folder not found: {folder}")
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not paths:
        raise SamExportError(f"no images ({', '.join(sorted(suffixes))}) in {folder}")
    return {p.name: read_image(p) for p in paths}


# -- running ----------------------------------------------------------------------------------


def run_parity(
    reference: Backend,
    candidate: Backend,
    images: Mapping[str, np.ndarray],
    prompts: Sequence[Prompt] = PROMPT_SUITE,
    *,
    precision: Precision = "fp32",
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on every image and prompt.

    Args:
        reference: the backend taken as truth (``TorchBackend(sam)`` for the PyTorch weights).
        candidate: the backend under test.
        images: name -> HxWx3 uint8 RGB image (original frame).
        prompts: the suite; default :data:`PROMPT_SUITE`.
        precision: the candidate's precision; selects :data:`TOLERANCES` unless ``tolerances``.
        tolerances: explicit limits.
    """
    from samexport.runtime.predictor import SamPredictor

    if not images:
        raise SamExportError("parity needs at least one image")
    tolerances = tolerances or get_tolerances(precision)
    ref, cand = SamPredictor(reference), SamPredictor(candidate)
    results = []
    for name, image in images.items():
        ref.set_image(image)
        cand.set_image(image)
        embedding = ArrayErrors.between(ref.embedding, cand.embedding)
        per_prompt = tuple(_compare_prompt(ref, cand, prompt) for prompt in prompts)
        results.append(ImageParity(name, tuple(ref.original_size), embedding, per_prompt))
    return ParityReport(
        reference=reference.name, candidate=candidate.name, precision=precision,
        tolerances=tolerances, images=tuple(results),
    )


def _compare_prompt(ref, cand, prompt: Prompt) -> PromptParity:
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
    return PromptParity(
        prompt=prompt.name,
        num_prompts=prompt.num_prompts,
        logits=ArrayErrors.between(ref_logits, cand_logits),
        iou_score_max_abs=float(np.abs(cand_iou.astype(np.float64) - ref_iou).max()),
        mask_iou_min=float(ious.min()),
        mask_iou_mean=float(ious.mean()),
        num_masks=int(ious.size),
    )


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
        memory_arena: ONNX Runtime's CPU memory arena; None: off for ``fp16`` only (the build
            passes the manifest's ``onnxruntime_memory_arena``, off for any FP16 graph).

    Returns:
        ``ParityReport.to_dict(detail=False)``: passed, summary, checks, tolerances, images.
    """
    from samexport.runtime.backends import OnnxRuntimeBackend, TorchBackend

    folder = Path(artifact_dir)
    candidate = OnnxRuntimeBackend(
        folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device="cpu",
        memory_arena=precision != "fp16" if memory_arena is None else memory_arena,
    )
    if image is not None:
        images = {"image": image}
    else:
        try:
            images, _ = sample_images(("astronaut",))
        except ImportError:
            images = {}
        images = images or {"synthetic": synthetic_image(512, 768)}
    prompts = [p for p in PROMPT_SUITE if p.name in QUICK_PROMPTS]
    report = run_parity(TorchBackend(sam), candidate, images, prompts, precision=precision)
    return report.to_dict(detail=False)


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture (gradients and solid rectangles) for when no photo is at hand."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1), 128 + 0 * xx], -1)
    for _ in range(6):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        image[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def parity_for_artifact(
    artifact_dir: Path | str,
    checkpoint: Path | str,
    *,
    images: Mapping[str, np.ndarray] | None = None,
    prompts: Sequence[Prompt] = PROMPT_SUITE,
    backend: str = "onnxruntime-cpu",
) -> tuple[ParityReport, dict[str, str]]:
    """Parity of an artifact directory against the torch model loaded from ``checkpoint``.

    The variant and precision come from the artifact's manifest. ``images`` defaults to the
    scikit-image sample photos.

    Returns:
        (report, images skipped -> reason).
    """
    from samexport.artifacts import read_manifest
    from samexport.checkpoint import load_sam
    from samexport.runtime.backends import TorchBackend
    from samexport.runtime.predictor import open_backend

    manifest = read_manifest(artifact_dir)
    skipped: dict[str, str] = {}
    if images is None:
        images, skipped = sample_images()
    candidate = open_backend(artifact_dir, backend)
    reference = TorchBackend(load_sam(checkpoint, manifest.variant))
    report = run_parity(reference, candidate, images, prompts, precision=manifest.precision)
    return report, skipped


__all__ = [
    "PROMPT_SUITE",
    "QUICK_PROMPTS",
    "SAMPLE_IMAGES",
    "TOLERANCES",
    "ArrayErrors",
    "Check",
    "ImageParity",
    "ParityReport",
    "Prompt",
    "PromptParity",
    "Tolerances",
    "get_tolerances",
    "mask_ious",
    "parity_for_artifact",
    "quick_parity",
    "read_images",
    "run_parity",
    "sample_images",
    "synthetic_image",
]
