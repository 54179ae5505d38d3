"""Parity results: per prompt, per image, and the whole report with its verdict, JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from samexport.parity.metrics import ArrayErrors, Check, Tolerances


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

    @classmethod
    def between(
        cls, prompt, ref_logits: np.ndarray, cand_logits: np.ndarray, ref_iou: np.ndarray,
        cand_iou: np.ndarray, mask_ious: np.ndarray,
    ) -> PromptParity:
        """The figures for ``prompt`` (a ``parity.prompts.Prompt``) from both sides' low-res
        logits and IoU scores and the IoUs of their thresholded masks (every model family)."""
        return cls(
            prompt=prompt.name,
            num_prompts=prompt.num_prompts,
            logits=ArrayErrors.between(ref_logits, cand_logits),
            iou_score_max_abs=float(np.abs(cand_iou.astype(np.float64) - ref_iou).max()),
            mask_iou_min=float(mask_ious.min()),
            mask_iou_mean=float(mask_ious.mean()),
            num_masks=int(mask_ious.size),
        )


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

    def where(self, metric: str) -> tuple[str, str | None]:
        """(image, prompt) where ``metric`` (a :attr:`summary` key) takes its worst value; the
        prompt is None for the embedding figures. For ``mask_iou_mean``, the prompt with the
        lowest mean."""
        worst_first = {"embedding_cosine", "mask_iou_min", "mask_iou_mean"}  # lower is worse
        sign = -1.0 if metric in worst_first else 1.0
        if metric.startswith("embedding_"):
            field = metric.removeprefix("embedding_")
            image = max(self.images, key=lambda i: sign * getattr(i.embedding, field))
            return image.image, None
        getters = {
            "mask_iou_min": lambda p: p.mask_iou_min,
            "mask_iou_mean": lambda p: p.mask_iou_mean,
            "iou_score_max_abs": lambda p: p.iou_score_max_abs,
        }
        get = getters.get(metric) or (lambda p: getattr(p.logits, metric.removeprefix("logits_")))
        image, prompt = max(((i, p) for i in self.images for p in i.prompts), key=lambda ip: sign * get(ip[1]))
        return image.image, prompt.prompt

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
            (
                f"Parity of **{self.candidate}** ({self.precision}) against **{self.reference}**, "
                f"{len(self.images)} images: **{'PASS' if self.passed else 'FAIL'}**"
            ),
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
            (
                "| image | prompt | B | emb. cosine | emb. max abs | logits max abs | mask IoU min | "
                "mask IoU mean | IoU-score err |"
            ),
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
