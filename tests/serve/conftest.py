"""Fixtures shared by the serve tests: an image and its PNG upload (a file may override ``image``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(3).random((70, 100, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
