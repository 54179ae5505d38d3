"""The ``samexport`` command line: thin wrappers over the library, one clear line per error."""

from __future__ import annotations

import errno
import functools
import json
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from samexport import constants as C
from samexport.constants import MAX_CROP_N_LAYERS
from samexport.errors import SamExportError
from samexport.variants import variants_help

app = typer.Typer(
    help="Segment Anything (SAM) from PyTorch weights to verified ONNX / TensorRT deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


EX_SOFTWARE = 70
"""Exit status for a bug in samexport (``sysexits.h``); a user's mistake exits with 1."""

# Operating-system errors about the user's own files and disks: one line, like SamExportError.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # disk full, quota, read-only


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one line, exit 1) rather than a bug (a traceback)."""
    if isinstance(exc, (SamExportError, *USER_OS_ERRORS)):
        return True
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def clean_errors(command):
    """Run a command: a user error (:class:`SamExportError`, a missing or unwritable file, a full
    disk) is printed as one line with exit status 1; any other exception is a bug in samexport,
    printed with its traceback and a request to report it, exit status 70."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # samexport refuses images over its own limit with a clear line; Pillow's warning about
        # the same image would only repeat it.
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors (Exit and Abort are RuntimeErrors)
        except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs right here
            if is_user_error(exc):
                typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
                raise typer.Exit(1) from None
            traceback.print_exc()
            typer.secho(
                f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in samexport: please report it "
                "with the command you ran and the traceback above.",
                err=True, fg=typer.colors.RED,
            )
            raise typer.Exit(EX_SOFTWARE) from None

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


def _parse_point(text: str) -> list[float]:
    """``X,Y`` or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background): the labels a person
    clicks (padding and box-corner labels come from ``--box``, not from points)."""
    values = _parse_numbers(text, "--point", (2, 3))
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise SamExportError(f"--point LABEL must be 1 (foreground) or 0 (background); got {text!r}")
    return values


# Engine options, shared by `build` and `engines`.
MaxPoints = Annotated[int, typer.Option(help="Largest points per prompt the decoder engine accepts (a box is 2).", min=1)]
MaxBatch = Annotated[int, typer.Option(help="Largest prompt batch the decoder engine accepts.", min=1)]
WorkspaceGb = Annotated[float, typer.Option(help="TensorRT workspace limit in GiB.", min=0.1)]
TimingCache = Annotated[
    Optional[Path], typer.Option(help="TensorRT timing cache file, read and updated (speeds up rebuilds).")
]
HardwareCompatible = Annotated[
    bool,
    typer.Option(help="Engines that run on any Ampere or newer discrete GPU (slower; not on Jetson, not with --attention plugin)."),
]
VersionCompatible = Annotated[
    bool, typer.Option(help="Engines that later TensorRT releases can run (same major version, and 10.x plans on 11.x).")
]


def _engine_config(max_points: int, max_batch: int, workspace_gb: float, timing_cache: Path | None,
                   hardware_compatible: bool, version_compatible: bool):
    from samexport.engines.builder import BuildConfig

    return BuildConfig(
        workspace_bytes=int(workspace_gb * (1 << 30)),
        prompts=(1, 1, max_batch),
        points=(1, min(2, max_points), max_points),
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compatibility="ampere_plus" if hardware_compatible else "none",
    )


@app.command()
@clean_errors
def build(
    variant: Annotated[str, typer.Option(help=f"Model variant: {variants_help()}.")] = "vit_b",
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(help="Official-format .pth checkpoint. Default: the cache, downloading if missing."),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="Artifact directory. Default: engines/<variant>-<precision>.")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graphs and engines (LayerNorm, Softmax, reductions stay FP32).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ encoder (needs --calib-dir) with an FP16 decoder.")] = False,
    calib_dir: Annotated[
        Optional[Path], typer.Option(help="Folder of photos to calibrate INT8 on (up to 64 are used; cached).")
    ] = None,
    int8_for: Annotated[
        Optional[Literal["tensorrt", "onnxruntime"]],
        typer.Option(
            "--int8-for",
            help="Which runtime the INT8 Q/DQ placement is tuned for: tensorrt (Q/DQ on MatMul/Conv "
            "inputs only; TensorRT fuses them) or onnxruntime (outputs quantized too, so ONNX Runtime's "
            "CPU provider uses integer kernels). Default: tensorrt.",
        ),
    ] = None,
    max_points: MaxPoints = 16,
    max_batch: MaxBatch = 64,
    workspace_gb: WorkspaceGb = 4.0,
    timing_cache: TimingCache = None,
    hardware_compatible: HardwareCompatible = False,
    version_compatible: VersionCompatible = False,
    engines: Annotated[
        Optional[bool],
        typer.Option(
            "--engines/--no-engines",
            help="--engines: fail unless TensorRT engines can be built here; --no-engines: ONNX only. "
            "Default: build engines where TensorRT and a GPU are available.",
        ),
    ] = None,
    attention: Annotated[
        str,
        typer.Option(
            help="How the image encoder's attention is exported: plain (the torch graph); fused-pattern "
            "(TensorRT's MHA-fusion form, any TensorRT incl. 10.3 / JetPack 6); onnx-attention (ONNX "
            "Attention op, opset 23, TensorRT >= 10.14); plugin (fused Triton kernel as a TensorRT "
            "plugin, TensorRT >= 10.9; not yet run on a GPU)."
        ),
    ] = "plain",
    opset: Annotated[
        Optional[int], typer.Option(help="ONNX opset version (17 or newer). Default: 18, or 23 for onnx-attention.", min=17)
    ] = None,
    parity: Annotated[
        bool, typer.Option(help="Check the graphs against the PyTorch weights on one image and record it.")
    ] = True,
    download: Annotated[
        bool, typer.Option(help="Download the official checkpoint when it is not in the cache.")
    ] = True,
) -> None:
    """Export SAM to ONNX (and TensorRT engines where possible) into an artifact directory."""
    from samexport.pipeline import build as run_build

    if fp16 and int8:
        raise SamExportError("choose one of --fp16 and --int8")
    if calib_dir is not None and not int8:
        raise SamExportError("--calib-dir is only used with --int8")
    if int8_for is not None and not int8:
        raise SamExportError("--int8-for is only used with --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    config = _engine_config(max_points, max_batch, workspace_gb, timing_cache, hardware_compatible, version_compatible)
    result = run_build(
        variant, checkpoint=checkpoint, output=output, precision=precision, calib_dir=calib_dir,
        int8_target=int8_for or "tensorrt",
        engine_config=config, engines={None: "auto", True: "require", False: "skip"}[engines],
        attention=attention, opset=opset, parity=parity, download=download,
        on_step=lambda message: typer.echo(f"- {message}", err=True),
    )
    typer.echo(f"wrote {result.artifact_dir}")
    for engine, reason in result.skipped_engines.items():
        typer.echo(f"not built: {engine} engine: {reason}")
    parity_report = result.manifest.parity
    if parity_report is not None:
        verdict = "passed" if parity_report["passed"] else "FAILED"
        figures = parity_report["summary"]
        typer.echo(
            f"parity vs PyTorch ({precision} tolerances): {verdict}: embedding cosine "
            f"{figures['embedding_cosine']:.6f}, mask IoU min {figures.get('mask_iou_min', float('nan')):.4f}, "
            f"IoU-score error {figures.get('iou_score_max_abs', float('nan')):.2e}"
        )
        if not parity_report["passed"]:
            raise SamExportError(f"parity check failed; the artifacts in {result.artifact_dir} do not match the PyTorch weights")


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
    output: Annotated[
        Path, typer.Option(help="Where to write the mask: .png (or .tif, .bmp; lossless, 255 = object).")
    ] = Path("mask.png"),
    overlay: Annotated[
        Optional[Path], typer.Option(help="Also write the image with the mask and prompts drawn on it.")
    ] = None,
    multimask: Annotated[
        bool, typer.Option(help="Predict three masks and keep the best-scoring one (good for one point).")
    ] = True,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
) -> None:
    """Segment the object at the given points and/or box and write the mask."""
    import numpy as np

    from samexport import imageio
    from samexport.runtime.predictor import SamPredictor

    if not point and box is None:
        raise SamExportError("give at least one --point X,Y[,LABEL] or a --box X1,Y1,X2,Y2")
    imageio.check_mask_path(output)
    if overlay:
        imageio.check_picture_path(overlay)
    parsed = [_parse_point(p) for p in point or []]
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
def engines(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build` (built anywhere).")],
    builder: Annotated[
        Literal["tensorrt", "tensorrt-rtx"],
        typer.Option(
            help="tensorrt: plans for this GPU and TensorRT release. tensorrt-rtx: TensorRT-RTX test "
            "builds without a GPU (prove the graphs build; the runtime refuses such plans)."
        ),
    ] = "tensorrt",
    max_points: MaxPoints = 16,
    max_batch: MaxBatch = 64,
    workspace_gb: WorkspaceGb = 4.0,
    timing_cache: TimingCache = None,
    hardware_compatible: HardwareCompatible = False,
    version_compatible: VersionCompatible = False,
) -> None:
    """Build encoder.plan and decoder.plan for this device from an existing artifact (no torch needed).

    The manifest is updated atomically once both plans are built: an interrupted run leaves the
    artifact as it was.
    """
    from samexport.engines.artifact import build_artifact_engines

    config = _engine_config(max_points, max_batch, workspace_gb, timing_cache, hardware_compatible, version_compatible)
    manifest = build_artifact_engines(
        artifact_dir, config, builder=builder, on_step=lambda message: typer.echo(f"- {message}", err=True)
    )
    for name, record in manifest.engines.items():
        where = record["gpu"] or "no GPU"
        kind = " (test build: the runtime refuses it)" if record.get("test_build") else ""
        typer.echo(
            f"wrote {Path(artifact_dir) / record['plan']}: {record['plan_bytes'] / 2**20:.1f} MiB, "
            f"{record['tensorrt_module']} {record['tensorrt_version']} on {where}{kind}"
        )


@app.command()
@clean_errors
def info(artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")]) -> None:
    """Print an artifact directory's manifest."""
    from samexport.artifacts import read_manifest

    typer.echo(json.dumps(read_manifest(artifact_dir).to_dict(), indent=2))


@app.command()
def doctor() -> None:
    """Report versions, ONNX Runtime providers, and TensorRT / GPU availability."""
    from samexport.doctor import diagnose

    for key, value in diagnose().items():
        typer.echo(f"{key:<30} {value}")


@app.command()
@clean_errors
def bench(
    artifact_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Artifact directories from `samexport build`, e.g. one fp32 and one int8 build of a variant.",
            metavar="ARTIFACT_DIR",
        ),
    ],
    backend: Annotated[
        Optional[list[str]],
        typer.Option(help=C.backends_help(C.BENCH_BACKENDS) + " Repeatable. Default: all; absent ones are reported as skipped."),
    ] = None,
    checkpoint: Annotated[
        Optional[Path], typer.Option(help="PyTorch weights: enables the torch reference and gives the peer baseline real weights.")
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option(help="Folder of images. Default: scikit-image's coffee resized to 1500x2250.")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed calls per stage (median, min, max reported).", min=1)] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed calls per stage before timing.", min=0)] = 1,
    batch_sizes: Annotated[str, typer.Option(help="Boxes per decoder call for the batching stages.")] = "1,16,64",
    peer: Annotated[bool, typer.Option(help="Also time the official segment-anything recipe decoder.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the results as Markdown tables.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of latency per stage per backend (needs matplotlib).")] = None,
    note: Annotated[str, typer.Option(help="A remark stored with the results and shown atop the Markdown (e.g. the machine was shared).")] = "",
) -> None:
    """Time every stage (preprocess, encoder, decoder per prompt type and batch, postprocess) per backend."""
    import shlex

    from samexport.bench import BACKEND_KINDS, BenchConfig, run_benchmark
    from samexport.bench.report import plot as write_plot
    from samexport.bench.report import to_markdown

    try:
        sizes = tuple(int(v) for v in batch_sizes.split(","))
    except ValueError:
        raise SamExportError(f"--batch-sizes expects integers like 1,16,64; got {batch_sizes!r}") from None
    config = BenchConfig(
        tuple(artifact_dirs), backends=tuple(backend or BACKEND_KINDS), checkpoint=checkpoint,
        images=images, runs=runs, warmup=warmup, batch_sizes=sizes, peer=peer,
    )
    results = run_benchmark(config, on_step=lambda message: typer.echo(f"- {message}", err=True))
    command = ["samexport", "bench", *map(str, artifact_dirs)]
    command += [arg for kind in backend or [] for arg in ("--backend", kind)]
    command += ["--runs", str(runs), "--warmup", str(warmup), "--batch-sizes", batch_sizes]
    for option, value in (("--checkpoint", checkpoint), ("--images", images), ("--json", json_out),
                          ("--markdown", markdown), ("--plot", plot)):
        command += [option, str(value)] if value else []
    command += ["--note", note] if note else []
    results["command"] = shlex.join(command + ([] if peer else ["--no-peer"]))
    results["note"] = note
    report = to_markdown(results)
    typer.echo(report)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
    if markdown:
        markdown.write_text(report)
        typer.echo(f"wrote {markdown}")
    if plot:
        write_plot(results, plot)
        typer.echo(f"wrote {plot}")


@app.command()
@clean_errors
def parity(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    checkpoint: Annotated[Path, typer.Option(help="The PyTorch weights the artifact was built from (the reference).")],
    images: Annotated[
        Optional[Path], typer.Option(help="Folder of images. Default: the scikit-image sample photos.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Runtime for the artifact: " + C.backends_help(C.ARTIFACT_BACKENDS))] = "onnxruntime-cpu",
    quick: Annotated[bool, typer.Option("--quick", help="Only the short prompt set that `build` checks (point, box, mask refinement, batch of 4).")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the report as Markdown tables.")] = None,
) -> None:
    """Compare the artifact with the PyTorch reference on sample photos and a fixed prompt suite.

    Exits with status 1 when a figure is outside the tolerance for the artifact's precision.
    """
    from samexport.image_sources import read_images
    from samexport.parity import PROMPT_SUITE, QUICK_PROMPTS, parity_for_artifact

    chosen = read_images(images) if images else None
    prompts = [p for p in PROMPT_SUITE if p.name in QUICK_PROMPTS] if quick else PROMPT_SUITE
    report, skipped = parity_for_artifact(
        artifact_dir, checkpoint, images=chosen, prompts=prompts, backend=backend
    )
    for name, reason in skipped.items():
        typer.echo(f"skipped image {name}: {reason}", err=True)
    text = report.to_markdown()
    typer.echo(text)
    if json_out:
        json_out.write_text(report.to_json() + "\n")
        typer.echo(f"wrote {json_out}")
    if markdown:
        markdown.write_text(text)
        typer.echo(f"wrote {markdown}")
    if not report:
        failed = ", ".join(f"{c.metric} {c.value:.4g} (limit {c.limit:g})" for c in report.failures)
        raise SamExportError(f"parity failed: {failed}")


@app.command("segment-all")
@clean_errors
def segment_all(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    images: Annotated[
        list[Path],
        typer.Argument(help="One image file, or several files and/or folders (a dataset job: Parquet rows).", metavar="IMAGES..."),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(help="One image: the JSON file to write (SA-1B style annotations; default masks.json). "
                     "Several or a folder: the output folder (see `samexport embed --help`)."),
    ] = None,
    overlay: Annotated[
        Optional[Path], typer.Option(help="Also write the image with every mask tinted and outlined in its own colour.")
    ] = None,
    points_per_side: Annotated[int, typer.Option(help="Grid points along each image side.", min=1)] = 32,
    points_per_batch: Annotated[int, typer.Option(help="Prompts per decoder call.", min=1)] = 64,
    pred_iou_thresh: Annotated[float, typer.Option(help="Keep masks with predicted IoU above this (0-1).")] = 0.88,
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
        Optional[str], typer.Option(help="Mask encoding in the JSON: uncompressed (counts list, the default) or coco (compressed, needs pycocotools). Dataset jobs always write coco.")
    ] = None,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar (over decoder batches for one image, over images for a dataset).")] = True,
    executor: Annotated[Optional[str], typer.Option(help="Dataset jobs: local (default) or ray.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Dataset jobs: parallel workers, each opening the artifact once (default 1).", min=1)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Dataset jobs: images per Parquet part file (default 8).", min=1)] = None,
    threads: Annotated[Optional[int], typer.Option(help="Dataset jobs: ONNX Runtime threads per worker.", min=1)] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Dataset jobs with --executor ray: the cluster to join (default: a local Ray).")] = None,
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
    dataset_options = dict(executor=executor, workers=workers, batch_size=batch_size, threads=threads, ray_address=ray_address)
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

    from samexport import imageio
    from samexport.amg import AutomaticMaskGenerator
    from samexport.amg.overlay import draw_masks
    from samexport.runtime.predictor import SamPredictor

    modes = {"uncompressed": "uncompressed_rle", "coco": "coco_rle"}
    if rle not in modes:
        raise SamExportError(f"--rle must be one of {', '.join(modes)}; got {rle!r}")
    if overlay:
        imageio.check_picture_path(overlay)
    picture = imageio.read_image(image)
    generator = AutomaticMaskGenerator(
        SamPredictor(artifact_dir, backend=backend), **generator_options, output_mode=modes[rle], progress=progress,
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


def _segment_all_dataset(artifact_dir, images, output, overlay, rle, backend, progress, generator_options,
                         dataset_options) -> None:
    """``segment-all`` over several images or folders: the resumable dataset job."""
    from samexport.datasets import segment_all as run_segment_all

    if output is None:
        raise SamExportError("several images or a folder need --output DIR (the folder for the Parquet rows)")
    if overlay is not None:
        raise SamExportError("--overlay is only for a single image")
    if rle not in (None, "coco"):
        raise SamExportError("dataset jobs always store COCO RLE; drop --rle or use --rle coco")
    chosen = {k: v for k, v in dataset_options.items() if v is not None}
    result = run_segment_all(artifact_dir, images, output, backend=backend, progress=progress,
                             **chosen, **generator_options)
    _report_dataset(result)


def _report_dataset(result) -> None:
    typer.echo(f"wrote {result.output_dir}: {result.summary()}")
    if result.errors:
        typer.echo(f"{result.errors} images could not be used; their rows hold the reason in the `error` column")


@app.command()
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
    ray_address: Annotated[Optional[str], typer.Option(help="With --executor ray: the cluster to join, e.g. auto or ray://head:10001 (default: a local Ray).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime threads per worker (default: the cores divided among the workers).", min=1)] = None,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar over images.")] = True,
) -> None:
    """Embed every image once into Parquet rows (1x256x64x64 float16 + sizes), resumably.

    A stored row restores a predictor without the encoder:
    samexport.datasets.predictor_from_embedding(SamPredictor(ARTIFACT_DIR), row).
    """
    from samexport.datasets import embed as run_embed

    result = run_embed(
        artifact_dir, images, output, executor=executor, workers=workers, batch_size=batch_size,
        ray_address=ray_address, threads=threads, backend=backend, progress=progress,
    )
    _report_dataset(result)

@app.command("export-official-decoder")
@clean_errors
def export_official_decoder(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    output: Annotated[Path, typer.Option(help="The .onnx file to write.")] = Path("sam_decoder_official.onnx"),
    return_single_mask: Annotated[
        bool, typer.Option(help="One mask per prompt, chosen as segment_anything's export does (else all four).")
    ] = True,
    use_stability_score: Annotated[bool, typer.Option(help="Report stability scores instead of predicted IoUs.")] = False,
) -> None:
    """Write the decoder in segment_anything's ONNX interface (orig_im_size input, masks at the
    image size) for ONNX Runtime tools built on it. Not for TensorRT: build engines from the
    artifact's decoder.onnx."""
    from samexport.export.official_onnx import export_official_decoder as export

    path = export(artifact_dir, output, return_single_mask=return_single_mask,
                  use_stability_score=use_stability_score)
    typer.echo(f"wrote {path} (segment_anything ONNX interface, for ONNX Runtime; not for TensorRT)")


if __name__ == "__main__":
    app()
