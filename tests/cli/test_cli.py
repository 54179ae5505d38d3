"""The command line: the README's commands, outputs a person can use, and one-line errors."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from samexport.cli import app
from samexport.errors import SamExportError
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


@pytest.mark.slow
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
        (["--point", "1,2,2"], "--point LABEL must be 1 (foreground) or 0 (background); got '1,2,2'"),
        (["--point", "1,2,0.5"], "--point LABEL must be 1"),
        (["--point", "1,2,-1"], "--point LABEL must be 1"),
        (["--point", "1,2,5"], "--point LABEL must be 1"),
    ]:
        result = invoke("predict", tiny_artifact, image_file, *args)
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke("predict", tiny_artifact, tiny_artifact / "manifest.json", "--point", "1,2")
    assert result.exit_code == 1 and "cannot read image" in result.output


def test_predict_refuses_mask_outputs_it_cannot_write_exactly(tiny_artifact, image_file, tmp_path):
    """A directory, no extension, a lossy format or a missing folder is refused before any work
    (nothing written); PNG, TIFF and BMP masks read back exactly equal to the predictor's mask."""
    (tmp_path / "out").mkdir()
    for output, message in [
        (tmp_path / "out", "is a directory; name a file such as"),
        (tmp_path / "mask", "has no file extension; masks are written losslessly: use .png, .tif, .tiff, .bmp"),
        (tmp_path / "m.jpg", "is not a lossless image format (.jpg); masks are written losslessly: use .png"),
        (tmp_path / "m.JPEG", "is not a lossless image format (.jpeg)"),
        (tmp_path / "m.webp", "is not a lossless image format (.webp)"),
        (tmp_path / "missing" / "m.png", "folder"),
    ]:
        result = invoke("predict", tiny_artifact, image_file, "--point", "100,80", "--output", output)
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke("predict", tiny_artifact, image_file, "--point", "100,80", "--overlay", tmp_path / "o")
    assert result.exit_code == 1 and "needs an image file extension" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())

    predictor = SamPredictor(tiny_artifact)
    predictor.set_image(np.array(Image.open(image_file)))
    masks, scores, _ = predictor.predict(np.array([[100, 80]]), np.array([1]))
    expected = np.where(masks[np.argmax(scores)], 255, 0).astype(np.uint8)
    for name in ("m.png", "m.tif", "m.TIFF", "m.bmp"):
        result = invoke("predict", tiny_artifact, image_file, "--point", "100,80", "--output", tmp_path / name)
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / name) as written:
            assert written.mode == "L" and np.array_equal(np.array(written), expected), name
    assert not list(tmp_path.glob(".*partial"))


def test_directory_huge_image_and_too_many_crop_layers(tiny_artifact, tmp_path):
    result = invoke("predict", tiny_artifact, tmp_path, "--point", "1,2", "--output", tmp_path / "m.png")
    assert result.exit_code == 1 and "is a directory, not an image file" in result.output, result.output
    huge = tmp_path / "huge.png"  # a 1x1 PNG whose header says 20000x15000 (300 MP)
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 20000, 15000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    huge.write_bytes(bytes(data))
    result = invoke("predict", tiny_artifact, huge, "--point", "1,2", "--output", tmp_path / "m.png")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output  # no Pillow warning
    assert result.output.startswith(f"error: cannot read image {huge}: image too large (300 MP, limit 268 MP")
    result = invoke("segment-all", tiny_artifact, tmp_path / "x.png", "--crop-n-layers", "4")
    assert result.exit_code == 2 and "--crop-n-layers" in result.output and "3" in result.output, result.output


@pytest.mark.parametrize("error", [RuntimeError("broken invariant"), KeyError("broken"),
                                   AssertionError("broken"), ValueError("broken"), OSError(5, "I/O error")])
def test_internal_errors_print_a_traceback_and_exit_70(error, tiny_artifact, monkeypatch):
    """Only user errors are one line with status 1; a bug shows its traceback and asks for a report."""
    import samexport.cli.artifacts

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(samexport.cli.artifacts, "read_manifest", broken)
    result = invoke("info", tiny_artifact)
    assert result.exit_code == 70, result.output
    assert "Traceback" in result.output and "This is a bug in samexport: please report it" in result.output
    assert f"internal error: {type(error).__name__}" in result.output


@pytest.mark.parametrize("error", [SamExportError("bad input"), FileNotFoundError(2, "No such file", "x.pth"),
                                   PermissionError(13, "Permission denied", "out"), OSError(28, "No space left on device")])
def test_user_errors_are_one_line_with_status_1(error, tiny_artifact, monkeypatch):
    import samexport.cli.artifacts

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(samexport.cli.artifacts, "read_manifest", failing)
    result = invoke("info", tiny_artifact)
    lines = result.output.strip().splitlines()
    # One line: the error itself, then (for full disks and the like) what to do about it.
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {error}"), result.output


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


def test_engine_options_reach_the_command_as_one_build_config():
    """`build` and `engines` declare the engine options once (cli.options.engine_options): typer
    sees them after the command's own, the command gets one BuildConfig."""
    import inspect

    from samexport.cli.options import ENGINE_OPTIONS, engine_options

    @engine_options
    def command(name: str, engine_config=None):
        return name, engine_config

    names = [p.name for p in ENGINE_OPTIONS]
    assert list(inspect.signature(command).parameters) == ["name", *names]
    name, config = command("x", max_points=4, max_batch=8, workspace_gb=1.0, timing_cache=None,
                           hardware_compatible=True, version_compatible=False)
    assert name == "x"
    assert (config.prompts, config.points, config.workspace_bytes) == ((1, 1, 8), (1, 2, 4), 1 << 30)
    assert (config.hardware_compatibility, config.version_compatible) == ("ampere_plus", False)
    commands = typer.main.get_command(app).commands
    for cmd in ("build", "engines"):
        assert set(names) <= {p.name for p in commands[cmd].params}, cmd
