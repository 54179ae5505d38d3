"""Reading images and writing masks and overlays a person can look at (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from samexport.errors import SamExportError

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
     [255, 140, 0], [199, 21, 133], [154, 205, 50], [70, 130, 180]],
    dtype=np.uint8,
)


def read_image(path: Path | str) -> np.ndarray:
    """Load any Pillow-readable image as HxWx3 uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise SamExportError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise SamExportError(f"cannot read image {path}: {exc}") from exc


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Write an HxW boolean mask as an 8-bit PNG (0 background, 255 foreground)."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def overlay(
    image: np.ndarray,
    masks: list[np.ndarray] | np.ndarray,
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """The image with each HxW mask tinted in its own colour, outlined prompts drawn on top.

    Foreground points are green, background points red, boxes yellow.
    """
    canvas = image.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)].astype(np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(max(image.shape[:2]) / 150))
    for box in [] if boxes is None else boxes:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 0), width=max(2, radius // 2))
    for (x, y), label in zip([] if points is None else points, [] if labels is None else labels):
        fill = (0, 200, 0) if label == 1 else (220, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return picture
