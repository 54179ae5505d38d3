"""samexport.cli.segment: ``segment-all`` checks its output file's folder before the run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("private_cache")


def test_segment_all_refuses_an_output_in_a_missing_folder_before_the_run(tiny_artifact, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    import samexport.amg
    from samexport.cli import app
    from samexport.testing import make_image

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(samexport.amg.AutomaticMaskGenerator, "generate", must_not_run)
    image = tmp_path / "scene.png"
    Image.fromarray(make_image(60, 80, seed=1)).save(image)
    for output, says in ((tmp_path / "nodir" / "m.json", "nodir does not exist"), (tmp_path, "is a folder")):
        result = CliRunner().invoke(app, ["segment-all", str(tiny_artifact), str(image), "--output", str(output)])
        assert result.exit_code == 1 and says in result.output, result.output
    assert not (tmp_path / "nodir").exists()
