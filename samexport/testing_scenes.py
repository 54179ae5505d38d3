"""Procedural scenes with instance masks: what the trained tiny SAM learnt on, and is tested on.

A scene is a square picture of a few overlapping shapes (ellipses, rectangles turned at any angle,
star-shaped polygons) of varied colour, texture and size on a varied background (flat, gradient,
stripes, soft noise), with the *visible* part of every shape as its instance mask (a shape drawn
later hides the ones below it). The same seed always gives the same scene.

``tools/train_tiny_sam.py`` trains on seeds ``0 .. HELD_OUT_SEED - 1``; the tests and benchmarks
use seeds from :data:`HELD_OUT_SEED` up, which training never saw.

    from samexport.testing_scenes import make_scene, HELD_OUT_SEED
    scene = make_scene(HELD_OUT_SEED + 3)     # scene.image HxWx3 uint8, scene.masks NxHxW bool

Needs only NumPy, Pillow and SciPy (the package's own dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SCENE_SIZE = 256  # side of a scene, pixels (the predictor resizes it 4x to the encoder's 1024)
HELD_OUT_SEED = 1_000_000  # seeds from here on are never used in training
MIN_AREA = 150  # pixels: smaller visible parts are not kept as instances
_MIN_CONTRAST = 70.0  # least RGB distance between a shape's mean colour and what lies under it


@dataclass(frozen=True)
class Scene:
    """A procedural picture and its instances.

    Attributes:
        image: HxWx3 uint8 RGB.
        masks: NxHxW bool, the visible part of each shape, in drawing order (N >= 1).
    """

    image: np.ndarray
    masks: np.ndarray

    @property
    def boxes(self) -> np.ndarray:
        """Nx4 float XYXY box of each mask, inclusive pixel indices (as the mask generator's)."""
        out = np.zeros((len(self.masks), 4), dtype=np.float32)
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask)
            out[i] = (xs.min(), ys.min(), xs.max(), ys.max())
        return out


def _texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """size x size x 3 float picture around colour ``base``: flat, gradient, stripes, checks or
    soft noise, whose mean stays near ``base``."""
    kind = rng.choice(["flat", "flat", "gradient", "stripes", "checks", "noise"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "flat":
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    amplitude = rng.uniform(15, 45)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        field = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 - 1
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.02, 0.08)
        field = np.sign(np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period))
    elif kind == "checks":
        period = rng.uniform(0.03, 0.1)
        field = np.sign(np.sin(np.pi * xx / period) * np.sin(np.pi * yy / period))
    else:
        coarse = rng.standard_normal((8, 8)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
        field = field / (np.abs(field).max() + 1e-6)
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    return base + amplitude * field[..., None] * tint


def _colour(rng: np.random.Generator, away_from: np.ndarray | None) -> np.ndarray:
    """A random RGB colour at least ``_MIN_CONTRAST`` from ``away_from`` (when given)."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if away_from is None or np.linalg.norm(colour - away_from) >= _MIN_CONTRAST:
            return colour
    return 255.0 - away_from  # far from it whatever it is


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bool size x size mask of one ellipse, turned rectangle or star-shaped polygon."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(-0.05, 1.05, size=2) * size
    radius = size * rng.uniform(0.08, 0.3)
    kind = rng.choice(["ellipse", "rectangle", "polygon"])
    if kind == "ellipse":
        rx, ry = radius * rng.uniform(0.5, 1.0, size=2)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=1)
        if rng.uniform() < 0.5:  # turn it: draw axis-aligned, rotate about the centre
            canvas = canvas.rotate(rng.uniform(0, 180), center=(cx, cy), resample=Image.NEAREST)
    else:
        if kind == "rectangle":
            half_w, half_h = radius * rng.uniform(0.4, 1.0, size=2)
            corners = np.array([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])
            angle = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            corners = corners @ rot.T
        else:
            count = int(rng.integers(3, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=count))
            radii = radius * rng.uniform(0.45, 1.0, size=count)
            corners = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
        draw.polygon([(float(cx + x), float(cy + y)) for x, y in corners], fill=1)
    return np.asarray(canvas, dtype=bool)


def make_scene(seed: int, size: int = SCENE_SIZE) -> Scene:
    """The scene of ``seed``: 2 to 7 shapes on a background, each kept where at least
    :data:`MIN_AREA` pixels of it stay visible; a light pixel noise over all."""
    rng = np.random.default_rng(seed)
    background = _colour(rng, None)
    image = _texture(rng, size, background)
    drawn: list[np.ndarray] = []
    for _ in range(int(rng.integers(2, 8))):
        shape = _shape_mask(rng, size)
        if shape.sum() < MIN_AREA:
            continue
        under = image[shape].mean(axis=0)
        image = np.where(shape[..., None], _texture(rng, size, _colour(rng, under)), image)
        drawn = [mask & ~shape for mask in drawn] + [shape]
    image = image + rng.normal(0, rng.uniform(0, 6), size=image.shape)
    masks = [m for m in drawn if m.sum() >= MIN_AREA]
    if not masks:  # every shape fell outside or was hidden: try the next stream
        return make_scene(seed + 7919 * (1 << 20), size)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), np.stack(masks))


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the mask's pixel farthest from its boundary (the single-point prompt SAM's
    paper evaluates with)."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)
