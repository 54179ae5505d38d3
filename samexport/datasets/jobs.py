"""The two dataset jobs, ``embed`` and ``segment_all``.

A job lists its images, takes its output folder's lock, opens (or resumes) the folder, skips the
images that already have a row, and hands the rest in batches to an executor: ``local``
(:mod:`samexport.datasets.local_executor`: this process, or ``workers`` processes) or ``ray``
(:mod:`samexport.datasets.ray_executor`). Each batch becomes one part file, staged by the worker
that processed it and committed by the driver under the lock: rows are read as done and added
only while the lock is held, so a kill at any moment neither loses nor duplicates a row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from samexport import constants as C
from samexport.artifacts import read_manifest
from samexport.datasets.images import DEFAULT_MAX_FILE_BYTES, file_changed, scan_images
from samexport.datasets.local_executor import run_local, sigterm_as_interrupt
from samexport.datasets.ray_executor import run_ray
from samexport.datasets.schema import Job, manifest_extra
from samexport.datasets.store import FolderLock, artifact_fingerprint, check_output, open_output
from samexport.datasets.worker import JobSpec, resolve_generator_options
from samexport.errors import SamExportError, require
from samexport.utils import sha256_file

Executor = Literal["local", "ray"]
EXECUTORS: tuple[Executor, ...] = ("local", "ray")
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class JobResult:
    """What a run did. ``skipped`` images already had a row; ``written`` rows were added by this
    run, ``errors`` of them error rows; ``redone`` of them replaced a row of a file that changed
    since, or an error row (``retry_errors``). ``passed_over``: ``(path, reason)`` of each
    unreadable folder, symlinked folder or special file the listing did not take."""

    output_dir: Path
    images: int
    skipped: int
    written: int
    errors: int
    seconds: float
    executor: str
    redone: int = 0
    passed_over: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else float("nan")
        redone = f", {self.redone} of them redone" if self.redone else ""
        passed = f", {len(self.passed_over)} files or folders passed over" if self.passed_over else ""
        return (
            f"{self.written} rows written ({self.errors} errors{redone}), {self.skipped} already done, "
            f"{self.images} images{passed}, {self.seconds:.1f} s ({rate:.2f} images/s, {self.executor})"
        )


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SamExportError(f"{name} must be a positive integer; got {value!r}")
    return value


# -- the jobs ----------------------------------------------------------------------------------


def _contract(artifact_dir: Path | str) -> C.GraphContract:
    """The artifact's graph contract; SAM's when its manifest cannot be read (the job then says
    why, in its own order of checks)."""
    try:
        return read_manifest(Path(artifact_dir)).contract
    except (SamExportError, OSError, ValueError):
        return C.SAM_GRAPHS


def _run(
    job: Job, artifact_dir: Path | str, images: Iterable[Path | str] | Path | str, output_dir: Path | str, *,
    parameters: dict[str, Any], generator_options: dict[str, Any], executor: Executor, workers: int,
    batch_size: int, backend: str, threads: int | None, ray_address: str | None,
    gpus_per_worker: float | None, progress: bool, retry_errors: bool, max_file_bytes: int,
) -> JobResult:
    require("pyarrow", "datasets")
    if executor not in EXECUTORS:
        raise SamExportError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    workers = _positive("workers", workers)
    batch_size = _positive("batch_size", batch_size)
    max_file_bytes = _positive("max_file_bytes", max_file_bytes)
    if threads is not None:
        threads = _positive("threads", threads)
    if ray_address is not None and executor != "ray":
        raise SamExportError("ray_address is only used with executor='ray'")
    C.check_backend(backend, C.ARTIFACT_BACKENDS)
    if executor == "ray":
        require("ray.data", "ray")  # before any folder is made
    if isinstance(images, (str, Path)):
        images = [images]
    output = Path(output_dir)
    listing = scan_images(images, exclude=output)
    keys = listing.keys
    artifact = artifact_fingerprint(artifact_dir)
    contract = _contract(artifact_dir)
    extra = manifest_extra(job, contract)
    check_output(output)  # reads only: nothing is created in a folder that is not ours
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with sigterm_as_interrupt(), FolderLock(output) as lock:
        folder = open_output(output, job=job, artifact=artifact, parameters=parameters, extra=extra, lock=lock)
        folder.remove_temporaries()
        wanted = set(keys)
        done = {k: r for k, r in folder.done_rows().items() if k in wanted}
        redo = {
            k for k, r in done.items()
            if (retry_errors and r["error"] is not None)
            or file_changed(k, r["file_size"], r["file_mtime_ns"], r["file_sha256"], max_file_bytes)
        }
        folder.drop_rows(redo)
        todo = [k for k in keys if k not in done or k in redo]
        if threads is None and executor == "local" and workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
        spec = JobSpec(
            job=job, artifact_dir=str(Path(artifact_dir).resolve()),
            manifest_sha256=sha256_file(Path(artifact_dir) / C.MANIFEST), backend=backend,
            threads=threads, generator_options=generator_options, max_file_bytes=max_file_bytes,
            contract=contract.name,
        )
        from tqdm.auto import tqdm

        counts = {"written": 0, "errors": 0}
        with tqdm(total=len(keys), initial=len(keys) - len(todo), disable=not progress,
                  desc=job.replace("_", "-"), unit="image") as bar:

            def commit(staged: str | None, errors: list[str | None]) -> None:
                if staged is not None:  # None: more rows of a part already committed (Ray)
                    folder.commit(staged)
                counts["written"] += len(errors)
                counts["errors"] += sum(e is not None for e in errors)
                bar.update(len(errors))

            if executor == "local":
                run_local(spec, output, todo, workers=workers, batch_size=batch_size, commit=commit)
            else:
                run_ray(spec, output, todo, workers=workers, batch_size=batch_size, ray_address=ray_address,
                        gpus_per_worker=gpus_per_worker, commit=commit)
    return JobResult(output, len(keys), len(keys) - len(todo), counts["written"], counts["errors"],
                     time.perf_counter() - start, executor, len(redo), tuple(listing.passed_over))


def embed(
    artifact_dir: Path | str,
    images: Iterable[Path | str] | Path | str,
    output_dir: Path | str,
    *,
    executor: Executor = "local",
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = "auto",
    threads: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float | None = None,
    progress: bool = True,
    retry_errors: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> JobResult:
    """Embed every image once: one Parquet row per image with its 1x256x64x64 float16 embedding
    (SAM 2.1: and its two high-resolution maps, 1x32x256x256 and 1x64x128x128 float16; the
    columns and their layouts are in ``samexport.datasets.schema`` and the dataset's manifest).

    Args:
        artifact_dir: an artifact directory from ``samexport build``, readable by every worker.
        images: image files and/or folders (walked recursively for image extensions).
        output_dir: the output folder: new, empty, or the output of an earlier run of the same
            job with the same artifact and parameters (that run is resumed: images with a row
            are skipped, unless their file changed since: another size, or another modification
            time and other bytes; then their row is made again).
        executor: ``"local"`` (this machine) or ``"ray"`` (Ray Data: a local Ray instance, the
            one already initialised, or the cluster at ``ray_address``; extra ``ray``).
        workers: parallel workers, each opening the artifact once (local: processes; Ray: actors).
        batch_size: images per part file; a killed run loses at most the batches in flight.
        backend: as ``SamPredictor(backend=...)``; recorded in the manifest.
        threads: ONNX Runtime threads per worker. Default: ONNX Runtime's (all cores) for one
            local worker, the cores divided among workers otherwise.
        ray_address: a Ray cluster to join, e.g. ``"ray://head:10001"`` or ``"auto"``.
        gpus_per_worker: GPUs each Ray actor reserves. Default: 1 when the backend uses a GPU
            (``tensorrt``, ``onnxruntime-cuda``, or ``auto`` on a cluster with GPUs), else 0.
        progress: show a progress bar.
        retry_errors: on a resume, make the error rows again too (files that were unreadable or
            undecodable then; a changed file is redone without it).
        max_file_bytes: files larger than this become error rows without being read (default
            512 MiB), so one huge file cannot exhaust a worker's memory.

    Returns:
        a :class:`JobResult`. Rows are read back with :func:`samexport.datasets.read_rows`.

    Raises:
        SamExportError: no images, a folder that is not ours or not this job's, a missing extra.
    """
    return _run(
        "embed", artifact_dir, images, output_dir, parameters={"backend": backend}, generator_options={},
        executor=executor, workers=workers, batch_size=batch_size, backend=backend, threads=threads,
        ray_address=ray_address, gpus_per_worker=gpus_per_worker, progress=progress,
        retry_errors=retry_errors, max_file_bytes=max_file_bytes,
    )


def segment_all(
    artifact_dir: Path | str,
    images: Iterable[Path | str] | Path | str,
    output_dir: Path | str,
    *,
    executor: Executor = "local",
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    backend: str = "auto",
    threads: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float | None = None,
    progress: bool = True,
    retry_errors: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    **generator_options: Any,
) -> JobResult:
    """Automatic mask generation on every image: one Parquet row per image with its masks.

    Masks are COCO RLE (needs the ``coco`` extra) with area, bbox, predicted_iou,
    stability_score, the prompt point and the crop box, as ``AutomaticMaskGenerator`` returns them.

    Args:
        generator_options: ``AutomaticMaskGenerator`` options (``points_per_side``,
            ``pred_iou_thresh``, ``crop_n_layers``, ...); all of them, defaults included, are
            recorded in the manifest, and a resumed run must use the same.
        the others: as :func:`embed`.
    """
    require("pycocotools.mask", "coco")
    options = resolve_generator_options(generator_options, _contract(artifact_dir))
    return _run(
        "segment_all", artifact_dir, images, output_dir, parameters={"backend": backend, **options},
        generator_options=options, executor=executor, workers=workers, batch_size=batch_size,
        backend=backend, threads=threads, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
        progress=progress, retry_errors=retry_errors, max_file_bytes=max_file_bytes,
    )
