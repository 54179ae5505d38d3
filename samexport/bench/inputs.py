"""Benchmark inputs: the default image and the prompts each decoder stage is timed with."""

from __future__ import annotations

import numpy as np

from samexport.image_sources import sample_images, synthetic_image

DEFAULT_IMAGE_SIZE = (1500, 2250)  # the official export script's example orig_im_size


def default_bench_image(size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> tuple[str, np.ndarray]:
    """scikit-image's ``coffee`` (400x600) resized to ``size`` (H, W), or a synthetic picture."""
    from PIL import Image

    try:
        photos, _ = sample_images(("coffee",))
    except ImportError:
        photos = {}
    if "coffee" not in photos:
        return f"synthetic {size[0]}x{size[1]}", synthetic_image(*size)
    resized = Image.fromarray(photos["coffee"]).resize((size[1], size[0]), Image.BICUBIC)
    return f"coffee resized to {size[0]}x{size[1]}", np.array(resized)


def decoder_prompts(
    size: tuple[int, int], batch_sizes: tuple[int, ...] = (1, 16, 64)
) -> dict[str, dict[str, np.ndarray]]:
    """Prompts (original-frame pixels) for each decoder stage, keyword arguments of
    ``SamPredictor.decode_low_res`` (without the mask input, which the stage adds)."""
    height, width = size
    f32 = np.float32
    centre = np.array([[[width / 2, height / 2]]], f32)
    box = np.array([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]], f32)
    ticks = np.linspace(0.15, 0.85, 4)
    grid = np.stack(np.meshgrid(ticks * width, ticks * height), -1).reshape(-1, 2)[:10].astype(f32)

    def boxes(n: int) -> np.ndarray:
        side = int(np.ceil(np.sqrt(n)))
        cx, cy = np.meshgrid((np.arange(side) + 0.5) / side * width, (np.arange(side) + 0.5) / side * height)
        centres = np.stack([cx.ravel(), cy.ravel()], -1)[:n]
        half = np.array([width, height]) / (2.5 * side)
        return np.concatenate([centres - half, centres + half], 1).astype(f32)

    one = np.ones((1, 1), f32)
    return {
        "decoder_point": {"point_coords": centre, "point_labels": one},
        "decoder_box_point": {"point_coords": centre, "point_labels": one, "boxes": box},
        "decoder_10_points": {
            "point_coords": grid[None], "point_labels": np.array([[1] * 7 + [0] * 3], f32),
        },
        "decoder_mask_input": {"point_coords": centre, "point_labels": one},
        **{f"decoder_boxes_{n}": {"boxes": boxes(n)} for n in sorted(set(batch_sizes))},
    }
