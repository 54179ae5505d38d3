"""Commands that segment images: ``predict`` (prompts), ``segment-all`` (every object) and
``embed`` (image embeddings for a dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from samexport import constants as C
from samexport import imageio
from samexport.amg import generator_class
from samexport.amg.overlay import draw_masks
from samexport.cli.errors import clean_errors
from samexport.cli.options import parse_numbers, parse_point
from samexport.constants import MAX_CROP_N_LAYERS
from samexport.datasets import embed as run_embed
from samexport.datasets import segment_all as run_segment_all
from samexport.errors import SamExportError
from samexport.runtime.predictors import contract_of, open_predictor

# Kept in step with samexport.datasets.images.DEFAULT_MAX_FILE_BYTES (not imported: --help stays light).
DEFAULT_MAX_FILE_BYTES = 512 << 20
RETRY_HELP = ("Dataset jobs, resuming: make the error rows again too (files changed since are redone "
              "without it).")
MAX_FILE_HELP = "Dataset jobs: files larger than this many MiB become error rows without being read (default 512)."


@clean_errors
def predict(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    image: Annotated[Path, typer.Argument(help="Image file (any format Pillow reads).")],
    point: Annotated[
        list[str] | None,
        typer.Option(help="Prompt point X,Y[,LABEL] in image pixels; LABEL 1 foreground (default), 0 background. Repeatable."),
    ] = None,
    box: Annotated[str | None, typer.Option(help="Prompt box X1,Y1,X2,Y2 in image pixels.")] = None,
    output: Annotated[
        Path, typer.Option(help="Where to write the mask: .png (or .tif, .bmp; lossless, 255 = object).")
    ] = Path("mask.png"),
    overlay: Annotated[
        Path | None, typer.Option(help="Also write the image with the mask and prompts drawn on it.")
    ] = None,
    multimask: Annotated[
        bool, typer.Option(help="Predict three masks and keep the best-scoring one (good for one point).")
    ] = True,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
) -> None:
    """Segment the object at the given points and/or box and write the mask."""
    import numpy as np

    if not point and box is None:
        raise SamExportError("give at least one --point X,Y[,LABEL] or a --box X1,Y1,X2,Y2")
    imageio.check_mask_path(output)
    if overlay:
        imageio.check_picture_path(overlay)
    parsed = [parse_point(p) for p in point or []]
    coords = np.array([p[:2] for p in parsed], np.float32) if parsed else None
    labels = np.array([p[2] if len(p) == 3 else 1 for p in parsed], np.float32) if parsed else None
    box_array = np.array(parse_numbers(box, "--box", (4,)), np.float32) if box else None

    picture = imageio.read_image(image)
    predictor = open_predictor(artifact_dir, backend=backend)  # SamPredictor, or SAM2ImagePredictor for SAM 2.1
    predictor.set_image(picture)
    masks, scores, _ = predictor.predict(coords, labels, box_array, multimask_output=multimask)
    best = int(np.argmax(scores))
    mask = masks[best].astype(bool)  # SAM 2.1's predictor gives 0/1 float32, as the official
    imageio.write_mask(output, mask)
    typer.echo(f"wrote {output} (score {scores[best]:.3f}, {int(mask.sum())} pixels, backend {predictor.backend.name})")
    if overlay:
        imageio.overlay(
            picture, [mask], points=coords, labels=labels,
            boxes=None if box_array is None else box_array[None],
        ).save(overlay)
        typer.echo(f"wrote {overlay}")


@clean_errors
def segment_all(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    images: Annotated[
        list[Path],
        typer.Argument(help="One image file, or several files and/or folders (a dataset job: Parquet rows).", metavar="IMAGES..."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(help="One image: the JSON file to write (SA-1B style annotations; default masks.json). "
                     "Several or a folder: the output folder (see `samexport embed --help`)."),
    ] = None,
    overlay: Annotated[
        Path | None, typer.Option(help="Also write the image with every mask tinted and outlined in its own colour.")
    ] = None,
    points_per_side: Annotated[int, typer.Option(help="Grid points along each image side.", min=1)] = 32,
    points_per_batch: Annotated[int, typer.Option(help="Prompts per decoder call.", min=1)] = 64,
    pred_iou_thresh: Annotated[
        float | None,
        typer.Option(help="Keep masks with predicted IoU above this (0-1). Default: the official generator's, "
                     "0.88 for SAM and MobileSAM, 0.8 for SAM 2.1.", show_default=False),
    ] = None,
    stability_score_thresh: Annotated[float, typer.Option(help="Keep masks with stability score at least this (0-1).")] = 0.95,
    stability_score_offset: Annotated[float, typer.Option(help="Logit offset of the stability score.")] = 1.0,
    box_nms_thresh: Annotated[float, typer.Option(help="Box IoU above which duplicates are dropped (0-1).")] = 0.7,
    crop_n_layers: Annotated[
        int,
        typer.Option(help=f"Extra layers of image crops: layer i adds 4**i crops, each running the whole point grid, "
                     f"so at most {MAX_CROP_N_LAYERS} (85 crops).", min=0, max=MAX_CROP_N_LAYERS),
    ] = 0,
    crop_nms_thresh: Annotated[float, typer.Option(help="Box IoU for duplicates between crops (0-1).")] = 0.7,
    crop_n_points_downscale_factor: Annotated[
        int, typer.Option(help="Crop layer i uses points-per-side / factor**i points a side.", min=1)
    ] = 1,
    min_mask_region_area: Annotated[
        int, typer.Option(help="Fill holes and drop islands smaller than this many pixels (needs scipy).", min=0)
    ] = 0,
    rle: Annotated[
        str | None, typer.Option(help="Mask encoding in the JSON: uncompressed (counts list, the default) or coco (compressed, needs pycocotools). Dataset jobs always write coco.")
    ] = None,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar (over decoder batches for one image, over images for a dataset).")] = True,
    executor: Annotated[str | None, typer.Option(help="Dataset jobs: local (default) or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Dataset jobs: parallel workers, each opening the artifact once (default 1).", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Dataset jobs: images per Parquet part file (default 8).", min=1)] = None,
    threads: Annotated[int | None, typer.Option(help="Dataset jobs: ONNX Runtime (or OpenVINO CPU) threads per worker.", min=1)] = None,
    ray_address: Annotated[str | None, typer.Option(help="Dataset jobs with --executor ray: the cluster to join (default: a local Ray).")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help=RETRY_HELP, show_default=False)] = False,
    max_file_mb: Annotated[float | None, typer.Option(help=MAX_FILE_HELP, min=0.001)] = None,
) -> None:
    """Segment everything: decode a grid of points, filter and de-duplicate the masks, write JSON.

    With several images or a folder it runs the dataset job instead (resumable, one Parquet row
    per image with COCO RLE masks), like `samexport embed`.
    """
    import time

    generator_options = dict(
        points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
        box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
        crop_n_points_downscale_factor=crop_n_points_downscale_factor, min_mask_region_area=min_mask_region_area,
    )
    if pred_iou_thresh is None:  # the family's generator's default
        del generator_options["pred_iou_thresh"]
    dataset_options = dict(executor=executor, workers=workers, batch_size=batch_size, threads=threads,
                           ray_address=ray_address, retry_errors=retry_errors or None, max_file_mb=max_file_mb)
    if len(images) > 1 or images[0].is_dir():
        _segment_all_dataset(artifact_dir, images, output, overlay, rle, backend, progress, generator_options,
                             dataset_options)
        return
    given = [f"--{name.replace('_', '-')}" for name, value in dataset_options.items() if value is not None]
    if given:
        raise SamExportError(f"{', '.join(given)} only apply to several images or a folder")
    image = images[0]
    output = output or Path("masks.json")
    rle = rle or "uncompressed"

    modes = {"uncompressed": "uncompressed_rle", "coco": "coco_rle"}
    if rle not in modes:
        raise SamExportError(f"--rle must be one of {', '.join(modes)}; got {rle!r}")
    _check_output_file(output, "masks.json")  # before the run, not after it (issue 25, item 16)
    if overlay:
        imageio.check_picture_path(overlay)
    picture = imageio.read_image(image)
    predictor = open_predictor(artifact_dir, backend=backend)
    generator = generator_class(contract_of(predictor))(
        predictor, **generator_options, output_mode=modes[rle], progress=progress,
    )
    start = time.perf_counter()
    records = generator.generate(picture)
    seconds = time.perf_counter() - start
    height, width = picture.shape[:2]
    document = {
        "image": {"file_name": image.name, "height": height, "width": width},
        "annotations": [{"id": i, **record} for i, record in enumerate(records)],
    }
    output.write_text(json.dumps(document) + "\n")
    typer.echo(f"wrote {output} ({len(records)} masks in {seconds:.1f} s, backend {generator.predictor.backend.name})")
    if overlay:
        draw_masks(picture, records).save(overlay)
        typer.echo(f"wrote {overlay}")


def _check_output_file(path: Path, example: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a missing
    folder, a folder without write permission."""
    import os

    if path.is_dir():
        raise SamExportError(f"--output {path} is a folder; name a file such as {path / example}")
    folder = path.parent
    if not folder.is_dir():
        raise SamExportError(f"--output {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SamExportError(f"--output {path}: cannot write in {folder} (permission denied)")


def _segment_all_dataset(artifact_dir, images, output, overlay, rle, backend, progress, generator_options,
                         dataset_options) -> None:
    """``segment-all`` over several images or folders: the resumable dataset job."""

    if output is None:
        raise SamExportError("several images or a folder need --output DIR (the folder for the Parquet rows)")
    if overlay is not None:
        raise SamExportError("--overlay is only for a single image")
    if rle not in (None, "coco"):
        raise SamExportError("dataset jobs always store COCO RLE; drop --rle or use --rle coco")
    chosen = {k: v for k, v in dataset_options.items() if v is not None}
    if "max_file_mb" in chosen:
        chosen["max_file_bytes"] = _megabytes(chosen.pop("max_file_mb"))
    result = run_segment_all(artifact_dir, images, output, backend=backend, progress=progress,
                             **chosen, **generator_options)
    _report_dataset(result)


def _megabytes(value: float) -> int:
    return max(1, int(value * (1 << 20)))


def _report_dataset(result, shown: int = 20) -> None:
    for path, reason in result.passed_over[:shown]:
        typer.echo(f"passed over {path}: {reason}", err=True)
    if len(result.passed_over) > shown:
        typer.echo(f"... and {len(result.passed_over) - shown} more passed over (JobResult.passed_over)", err=True)
    typer.echo(f"wrote {result.output_dir}: {result.summary()}")
    if result.errors:
        typer.echo(f"{result.errors} images could not be used; their rows hold the reason in the `error` column "
                   "(--retry-errors makes them again)")


@clean_errors
def embed(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    images: Annotated[
        list[Path], typer.Argument(help="Image files and/or folders (walked recursively for image files).", metavar="IMAGES...")
    ],
    output: Annotated[
        Path,
        typer.Option(help="Output folder: new, empty, or the output of an earlier run of this job to resume it "
                     "(images that have a row are skipped)."),
    ],
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (Ray Data; needs the ray extra).")] = "local",
    workers: Annotated[int, typer.Option(help="Parallel workers, each opening the artifact once (processes, or Ray actors).", min=1)] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per Parquet part file; a killed run loses at most the batches in flight.", min=1)] = 8,
    ray_address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster to join, e.g. auto or ray://head:10001 (default: a local Ray).")] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime (or OpenVINO CPU) threads per worker (default: the cores divided among the workers).", min=1)] = None,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar over images.")] = True,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help=RETRY_HELP)] = False,
    max_file_mb: Annotated[float, typer.Option(help=MAX_FILE_HELP, min=0.001)] = DEFAULT_MAX_FILE_BYTES / (1 << 20),
) -> None:
    """Embed every image once into Parquet rows (1x256x64x64 float16 + sizes; SAM 2.1: + its two
    high-resolution maps), resumably.

    A stored row restores a predictor without the encoder:
    samexport.datasets.predictor_from_embedding(SamPredictor(ARTIFACT_DIR), row), or
    SAM2ImagePredictor(ARTIFACT_DIR) for SAM 2.1.
    """

    result = run_embed(
        artifact_dir, images, output, executor=executor, workers=workers, batch_size=batch_size,
        ray_address=ray_address, threads=threads, backend=backend, progress=progress,
        retry_errors=retry_errors, max_file_bytes=_megabytes(max_file_mb),
    )
    _report_dataset(result)
