"""Parity figures and their limits: per-precision tolerances, array errors, mask IoUs, checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from samexport.errors import SamExportError


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
    # An fp32 or fp16 graph run in bfloat16 (OpenVINO's precision=bf16: 8-bit mantissas in the
    # matrix products). Measured worst cases against PyTorch (OpenVINO 2026.4, random weights,
    # astronaut + coffee, full prompt suite; docs/openvino.md), tiny / mobile_sam: embedding rel
    # 0.0067 / 0.0092, cosine 0.99998 / 0.99998, logits rel 0.018 / 0.023, mask IoU min 0.96 /
    # 0.88 and mean 0.988 / 0.988, IoU score 0.0022 / 0.0025. Limits at 2-3x those errors; the
    # mask IoU minimum as int8's, since a random model's noisy masks flip along long boundaries.
    "bf16": Tolerances(
        embedding_rel_max_abs=2.5e-2, embedding_cosine=0.9995, logits_rel_max_abs=5e-2,
        mask_iou_min=0.80, mask_iou_mean=0.97, iou_score_max_abs=1e-2,
    ),
    # int8 Q/DQ on MatMul/Conv: the bar is embedding cosine >= 0.995.
    "int8": Tolerances(
        embedding_rel_max_abs=0.15, embedding_cosine=0.995, logits_rel_max_abs=0.15,
        mask_iou_min=0.80, mask_iou_mean=0.95, iou_score_max_abs=5e-2,
    ),
}


def tolerance_key(artifact_precision: str, inference_precision: str | None = None) -> str:
    """The :data:`TOLERANCES` row for an artifact run by a backend that may compute in a narrower
    type than the graph's (``inference_precision``: OpenVINO's ``bf16`` / ``f16``; None: as the
    graph). An int8 graph keeps its own, looser row."""
    if artifact_precision == "int8" or inference_precision in (None, "f32"):
        return artifact_precision
    return {"bf16": "bf16", "f16": "fp16"}.get(inference_precision, artifact_precision)


def get_tolerances(precision: str) -> Tolerances:
    """The tolerances for ``precision``; an unknown name lists the valid ones."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise SamExportError(
            f"unknown precision {precision!r}; valid: {', '.join(TOLERANCES)}"
        ) from None


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
