"""Commands that check: ``doctor`` (this machine), ``bench`` (latency) and ``parity`` (against
the PyTorch weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from samexport import constants as C
from samexport.bench import BACKEND_KINDS, BenchConfig, run_benchmark
from samexport.bench.report import plot as write_plot
from samexport.bench.report import to_markdown
from samexport.cli.errors import clean_errors
from samexport.doctor import diagnose
from samexport.errors import SamExportError
from samexport.image_sources import read_images
from samexport.parity import PROMPT_SUITE, QUICK_PROMPTS, parity_for_artifact
from samexport.parity.verify import describe_failure, verify_artifact_backend
from samexport.pipeline import add_references


def doctor() -> None:
    """Report versions, ONNX Runtime providers, and TensorRT / GPU availability."""

    for key, value in diagnose().items():
        typer.echo(f"{key:<30} {value}")


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
        list[str] | None,
        typer.Option(help=C.backends_help(C.BENCH_BACKENDS) + " Repeatable. Default: all; absent ones are reported as skipped."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="PyTorch weights: enables the torch reference and gives the peer baseline real weights.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of images. Default: scikit-image's coffee resized to 1500x2250.")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed calls per stage (median, min, max reported).", min=1)] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed calls per stage before timing.", min=0)] = 1,
    batch_sizes: Annotated[str, typer.Option(help="Boxes per decoder call for the batching stages.")] = "1,16,64",
    peer: Annotated[bool, typer.Option(help="Also time the official segment-anything recipe decoder.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the results as Markdown tables.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of latency per stage per backend (needs matplotlib).")] = None,
    note: Annotated[str, typer.Option(help="A remark stored with the results and shown atop the Markdown (e.g. the machine was shared).")] = "",
) -> None:
    """Time every stage (preprocess, encoder, decoder per prompt type and batch, postprocess) per backend."""
    import shlex

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


@clean_errors
def parity(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    checkpoint: Annotated[Path, typer.Option(help="The PyTorch weights the artifact was built from (the reference).")],
    images: Annotated[
        Path | None, typer.Option(help="Folder of images. Default: the scikit-image sample photos.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Runtime for the artifact: " + C.backends_help(C.ARTIFACT_BACKENDS))] = "onnxruntime-cpu",
    quick: Annotated[bool, typer.Option("--quick", help="Only the short prompt set that `build` checks (point, box, mask refinement, batch of 4).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the report as Markdown tables.")] = None,
) -> None:
    """Compare the artifact with the PyTorch reference on sample photos and a fixed prompt suite.

    Exits with status 1 when a figure is outside the tolerance for the artifact's precision.
    """

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


@clean_errors
def verify(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory (with its stored PyTorch references).")],
    backend: Annotated[str, typer.Option(help="Runtime to check: " + C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the full report as JSON instead of tables.")] = False,
) -> None:
    """Check a backend against the PyTorch outputs stored in the artifact (no torch needed).

    Reports the figures and tolerances of `samexport parity`; exits with status 1 when a figure is
    outside the tolerance for the artifact's precision, naming the worst one and where.
    """

    report = verify_artifact_backend(artifact_dir, backend)
    typer.echo(report.to_json() if json_output else report.to_markdown())
    if not report:
        raise SamExportError(f"verify failed on {report.candidate}: {describe_failure(report)}")


@clean_errors
def references(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    checkpoint: Annotated[Path, typer.Option(help="The PyTorch weights the artifact was built from.")],
) -> None:
    """Store the PyTorch FP32 reference outputs in an artifact built without them (needs torch).

    The manifest is replaced atomically once the new references are written.
    """

    manifest = add_references(artifact_dir, checkpoint, on_step=lambda message: typer.echo(f"- {message}", err=True))
    record = manifest.references
    typer.echo(
        f"wrote {Path(artifact_dir) / record.file}: {record.bytes / 2**20:.1f} MiB, "
        f"{len(record.images)} images, {record.decoder_calls} decoder calls"
    )
