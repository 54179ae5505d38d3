"""``samexport.image_sources``: one rule for which files are images, shared by parity, bench,
INT8 calibration and the dataset jobs."""

from __future__ import annotations

import pytest

from samexport.errors import SamExportError
from samexport.image_sources import IMAGE_SUFFIXES, image_files


def test_every_folder_lister_takes_the_same_files(tmp_path):
    from samexport.datasets.images import list_images as dataset_images
    from samexport.precision.calibration import list_images as calibration_images

    names = [f"a{suffix}" for suffix in sorted(IMAGE_SUFFIXES)] + ["upper.PNG"]
    for name in [*names, "notes.txt", "model.onnx"]:
        (tmp_path / name).write_bytes(b"")
    expected = sorted(tmp_path / n for n in names)
    assert image_files(tmp_path) == expected
    assert calibration_images(tmp_path) == expected
    assert dataset_images([tmp_path]) == [str(p) for p in expected]


@pytest.mark.parametrize("what", ["image", "calibration"])
def test_missing_or_empty_folder_is_a_clear_error(tmp_path, what):
    with pytest.raises(SamExportError, match=f"{what} folder not found"):
        image_files(tmp_path / "nope", what=what)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SamExportError, match=f"no images in {what} folder"):
        image_files(tmp_path, what=what)
