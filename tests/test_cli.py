"""The command line: the README's commands, outputs a person can use, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samexport.cli import app
from samexport.runtime.predictor import SamPredictor
from samexport.testing import make_image

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_image(300, 450, seed=2)).save(path)
    return path


def test_build_info_predict(tiny_checkpoint, image_file, tmp_path):
    out = tmp_path / "tiny-fp32"
    result = invoke("build", "--variant", "tiny", "--checkpoint", tiny_checkpoint, "--output", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "not built: encoder engine" in result.output

    result = invoke("info", out)
    assert result.exit_code == 0 and json.loads(result.output)["variant"] == "tiny"

    mask_png, overlay_png = tmp_path / "mask.png", tmp_path / "overlay.png"
    result = invoke("predict", out, image_file, "--point", "100,80", "--point", "300,200,0",
                    "--box", "50,40,400,250", "--output", mask_png, "--overlay", overlay_png)
    assert result.exit_code == 0, result.output
    mask = np.array(Image.open(mask_png))
    assert mask.shape == (300, 450) and set(np.unique(mask)) <= {0, 255}

    predictor = SamPredictor(out)
    predictor.set_image(np.array(Image.open(image_file)))
    masks, scores, _ = predictor.predict(
        np.array([[100, 80], [300, 200]]), np.array([1, 0]), np.array([50, 40, 400, 250])
    )
    np.testing.assert_array_equal(mask == 255, masks[np.argmax(scores)])
    overlay = np.array(Image.open(overlay_png))
    assert overlay.shape == (300, 450, 3)
    assert (overlay != np.array(Image.open(image_file))).any(axis=-1).mean() > 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--variant", "vit_q"], "unknown variant 'vit_q'"),
        (["build", "--variant", "tiny", "--fp16", "--int8"], "choose one of --fp16 and --int8"),
        (["build", "--variant", "tiny"], "--checkpoint"),
        (["build", "--variant", "vit_b", "--no-download"], "pass --checkpoint PATH"),
        (["build", "--variant", "tiny", "--checkpoint", "missing.pth"], "checkpoint missing.pth does not exist"),
        (["info", "no_such_dir"], "artifact directory not found"),
        (["build", "--variant", "tiny", "--calib-dir", "."], "--calib-dir is only used with --int8"),
        (["build", "--variant", "tiny", "--int8-for", "onnxruntime"], "--int8-for is only used with --int8"),
        (["build", "--variant", "tiny", "--int8", "--checkpoint", "x.pth"], "pass --calib-dir DIR"),
        (["predict", "no_such_dir", "x.png", "--point", "1,2"], "not found"),
    ],
)
def test_errors_are_one_clean_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_predict_argument_errors(tiny_artifact, image_file):
    for args, message in [
        ([], "give at least one --point"),
        (["--point", "1"], "--point expects X,Y or X,Y,LABEL"),
        (["--box", "1,2,3"], "--box expects X1,Y1,X2,Y2"),
    ]:
        result = invoke("predict", tiny_artifact, image_file, *args)
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke("predict", tiny_artifact, tiny_artifact / "manifest.json", "--point", "1,2")
    assert result.exit_code == 1 and "cannot read image" in result.output


def test_doctor_reports_providers():
    result = invoke("doctor")
    assert result.exit_code == 0
    assert "CPUExecutionProvider" in result.output
    assert "tensorrt engines" in result.output


def test_help_and_import_stay_light():
    """`import samexport` and `--help` must not import torch, onnxruntime or tensorrt."""
    code = (
        "import sys, samexport, samexport.cli\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "cli.py", "build", "--help"], capture_output=True, text=True, check=True)
    assert "--checkpoint" in out.stdout and "--fp16" in out.stdout
