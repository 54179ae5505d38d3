"""The ``samexport`` command line: thin wrappers over the library, one clear line per error."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from samexport.errors import SamExportError

app = typer.Typer(
    help="Segment Anything (SAM) from PyTorch weights to verified ONNX / TensorRT deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def clean_errors(command):
    """Turn library and input errors into one line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (SamExportError, ValueError, RuntimeError, OSError) as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper


def _parse_numbers(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        shape = " or ".join({2: "X,Y", 3: "X,Y,LABEL", 4: "X1,Y1,X2,Y2"}[c] for c in counts)
        raise SamExportError(f"{option} expects {shape}; got {text!r}")
    return values


@app.command()
@clean_errors
def build(
    variant: Annotated[str, typer.Option(help="Model variant: vit_b, vit_l, vit_h (or tiny for tests).")] = "vit_b",
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(help="Official-format .pth checkpoint. Default: the cache, downloading if missing."),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="Artifact directory. Default: engines/<variant>-<precision>.")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graphs and engines (FP32 islands kept).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ graphs and engines.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset version (17 or newer).", min=17)] = 18,
    download: Annotated[
        bool, typer.Option(help="Download the official checkpoint when it is not in the cache.")
    ] = True,
) -> None:
    """Export SAM to ONNX (and TensorRT engines where possible) into an artifact directory."""
    from samexport.build import build as run_build

    if fp16 and int8:
        raise SamExportError("choose one of --fp16 and --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    result = run_build(
        variant, checkpoint=checkpoint, output=output, precision=precision, opset=opset,
        download=download, on_step=lambda message: typer.echo(f"- {message}", err=True),
    )
    typer.echo(f"wrote {result.artifact_dir}")
    for engine, reason in result.skipped_engines.items():
        typer.echo(f"not built: {engine} engine: {reason}")


@app.command()
@clean_errors
def predict(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    image: Annotated[Path, typer.Argument(help="Image file (any format Pillow reads).")],
    point: Annotated[
        Optional[list[str]],
        typer.Option(help="Prompt point X,Y[,LABEL] in image pixels; LABEL 1 foreground (default), 0 background. Repeatable."),
    ] = None,
    box: Annotated[Optional[str], typer.Option(help="Prompt box X1,Y1,X2,Y2 in image pixels.")] = None,
    output: Annotated[Path, typer.Option(help="Where to write the mask PNG (255 = object).")] = Path("mask.png"),
    overlay: Annotated[
        Optional[Path], typer.Option(help="Also write the image with the mask and prompts drawn on it.")
    ] = None,
    multimask: Annotated[
        bool, typer.Option(help="Predict three masks and keep the best-scoring one (good for one point).")
    ] = True,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, onnxruntime-cpu, onnxruntime-cuda.")] = "auto",
) -> None:
    """Segment the object at the given points and/or box and write the mask."""
    import numpy as np

    from samexport import imageio
    from samexport.runtime.predictor import SamPredictor

    if not point and box is None:
        raise SamExportError("give at least one --point X,Y[,LABEL] or a --box X1,Y1,X2,Y2")
    parsed = [_parse_numbers(p, "--point", (2, 3)) for p in point or []]
    coords = np.array([p[:2] for p in parsed], np.float32) if parsed else None
    labels = np.array([p[2] if len(p) == 3 else 1 for p in parsed], np.float32) if parsed else None
    box_array = np.array(_parse_numbers(box, "--box", (4,)), np.float32) if box else None

    picture = imageio.read_image(image)
    predictor = SamPredictor(artifact_dir, backend=backend)
    predictor.set_image(picture)
    masks, scores, _ = predictor.predict(coords, labels, box_array, multimask_output=multimask)
    best = int(np.argmax(scores))
    imageio.write_mask(output, masks[best])
    typer.echo(f"wrote {output} (score {scores[best]:.3f}, {int(masks[best].sum())} pixels, backend {predictor.backend.name})")
    if overlay:
        imageio.overlay(
            picture, [masks[best]], points=coords, labels=labels,
            boxes=None if box_array is None else box_array[None],
        ).save(overlay)
        typer.echo(f"wrote {overlay}")


@app.command()
@clean_errors
def info(artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")]) -> None:
    """Print an artifact directory's manifest."""
    from samexport.artifacts import read_manifest

    typer.echo(json.dumps(read_manifest(artifact_dir), indent=2))


@app.command()
def doctor() -> None:
    """Report versions, ONNX Runtime providers, and TensorRT / GPU availability."""
    from samexport.doctor import diagnose

    for key, value in diagnose().items():
        typer.echo(f"{key:<24} {value}")


if __name__ == "__main__":
    app()
