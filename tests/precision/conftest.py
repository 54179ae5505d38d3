"""Fixtures shared by the precision tests: calibration photos and the tiny INT8 encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_calibration_folder


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    return write_calibration_folder(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="session")
def tiny_int8(tiny_onnx, calib_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(int8 encoder, calibration cache)."""
    from samexport.precision.int8 import quantize_encoder_int8

    folder = tmp_path_factory.mktemp("int8")
    cache = folder / "calibration.json"
    return quantize_encoder_int8(tiny_onnx[0], folder / "encoder.onnx", calib_dir, cache_path=cache), cache
