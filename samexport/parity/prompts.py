"""The prompt suite: prompts in coordinates relative to the image, so one suite fits every image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samexport.image_sources import sample_images, synthetic_image


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


def quick_check_inputs(image: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], list[Prompt]]:
    """What ``samexport build``'s short parity check runs, for either family: ``image`` (named
    ``image``), else scikit-image's astronaut, else a synthetic 512x768 picture; and the prompts of
    :data:`QUICK_PROMPTS`. Returns (name -> image, prompts)."""
    if image is not None:
        images = {"image": image}
    else:
        try:
            images, _ = sample_images(("astronaut",))
        except ImportError:  # MissingExtraError: scikit-image is not installed
            images = {}
        images = images or {"synthetic": synthetic_image(512, 768)}
    return images, [p for p in PROMPT_SUITE if p.name in QUICK_PROMPTS]

# The prompts stored with every artifact's references (``samexport.parity.references``): the
# suite's kinds with a batch of 4 boxes instead of 16 (each prompt stores 4 logit maps of 256x256,
# so the batch size is most of the file's size).
BATCH_BOXES_4 = Prompt("batch_boxes_4", boxes=_boxes_around(_grid(2, 0.3, 0.7), 0.15))
REFERENCE_PROMPTS: tuple[Prompt, ...] = (
    *(p for p in PROMPT_SUITE if p.name in ("point", "box", "box_point", "ten_points", "mask_refinement")),
    BATCH_BOXES_4,
)
