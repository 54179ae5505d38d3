"""The Ray Data executor: ``read_binary_files`` -> ``map_batches`` over a pool of actors.

Each actor (:class:`RayImageWorker`) opens the artifact once and writes every batch it processes
as a staged part file into the output folder, so on a cluster the images, the artifact and the
output folder must be at the same paths on every node (a shared filesystem), and samexport
installed there. Only each batch's keys, errors and staged file name travel back to the driver,
which commits the part under the folder lock and draws the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.datasets.images import ImageError, check_readable, image_key, is_utf8
from samexport.datasets.schema import arrow_schema
from samexport.datasets.store import stage_part
from samexport.datasets.worker import ImageWorker, JobSpec, image_row
from samexport.errors import SamExportError, require


class RayImageWorker:
    """A Ray Data actor: ``{"path", "bytes"}`` batches in, ``{"path", "error", "part"}`` batches out
    (``part``: the staged file holding the row)."""

    def __init__(self, spec: JobSpec, folder: str) -> None:
        self.worker = ImageWorker(spec)
        self.folder = folder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(p) for p in batch["path"]]
        for key in keys:
            if image_key(key) != key:  # Ray returns the paths it was given; guard the resume key
                raise SamExportError(f"Ray returned path {key!r}, which is not the canonical {image_key(key)!r}")
        staged, errors = self.worker.write_batch(self.folder, keys, [bytes(b) for b in batch["bytes"]])
        return {
            "path": np.array(keys, dtype=object),
            "error": np.array(["" if e is None else e for e in errors], dtype=object),
            "part": np.array([staged] * len(keys), dtype=object),
        }


def _gpus_per_worker(ray, backend: str, requested: float | None) -> float:
    if requested is not None:
        if requested < 0:
            raise SamExportError(f"gpus_per_worker must be >= 0; got {requested}")
        return float(requested)
    name, _ = C.split_backend(backend)
    if name in C.BACKENDS and C.BACKENDS[name].needs_gpu:
        return 1.0
    if backend == "auto" and ray.cluster_resources().get("GPU", 0) > 0:
        return 1.0
    return 0.0


def run_ray(
    spec: JobSpec, folder: Path, todo: Sequence[str], *, workers: int, batch_size: int,
    ray_address: str | None, gpus_per_worker: float | None,
    commit: Callable[[str | None, list[str | None]], None],
) -> None:
    """Process ``todo`` on Ray Data with ``workers`` actors, ``batch_size`` images per call.

    Uses the Ray instance this process already initialised, else joins ``ray_address``, else
    starts a local one (shut down again at the end).

    Files the driver cannot open become error rows here, without Ray: a read task that fails
    would fail the whole job.
    """
    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not todo:
        return
    readable, unreadable = [], []
    for key in todo:
        try:
            if not is_utf8(key):
                raise ImageError("Ray Data cannot read a file whose name is not UTF-8: rename it, or use "
                                 "the local executor (then rerun with --retry-errors)")
            check_readable(key, spec.max_file_bytes)
            readable.append(key)
        except ImageError as exc:
            unreadable.append((key, str(exc)))
    schema = arrow_schema(spec.job, spec.contract)
    import pyarrow as pa

    for start in range(0, len(unreadable), batch_size):
        rows = []
        for key, reason in unreadable[start : start + batch_size]:
            row = image_row(schema, key, artifact_sha256=spec.manifest_sha256, max_file_bytes=spec.max_file_bytes)[0]
            if row["error"] is None:  # readable by now, or a name Ray cannot take: keep the reason
                row.update(error=reason, height=None, width=None)
            rows.append(row)
        commit(str(stage_part(folder, pa.Table.from_pylist(rows, schema=schema))), [row["error"] for row in rows])
    if not readable:
        return

    started = False
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
        started = True
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = spec.threads or max(1, int(cpus // workers))
        gpus = _gpus_per_worker(ray, spec.backend, gpus_per_worker)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images
        # Reading is I/O: with CPUs for the tasks, actors holding every CPU starve the reads (a hang
        # on a 2-CPU instance with 2 workers).
        dataset = ray.data.read_binary_files(readable, include_paths=True, num_cpus=0)
        results = dataset.map_batches(
            RayImageWorker,
            fn_constructor_kwargs={"spec": _with_threads(spec, threads), "folder": str(Path(folder).resolve())},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=min(threads, cpus / workers),  # never more than the cluster has: Ray would wait forever
            num_gpus=gpus,
            batch_format="numpy",
        )
        expected, committed = set(readable), set()
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            keys = [str(k) for k in batch["path"]]
            unknown = [k for k in keys if k not in expected]
            if unknown:
                raise SamExportError(f"Ray processed {unknown[0]!r}, which is not one of this job's images")
            # Ray may split or merge the actors' outputs: commit each staged file once, on its first row.
            errors: dict[str, list[str | None]] = {}
            for part, error in zip(batch["part"], batch["error"]):
                errors.setdefault(str(part), []).append(str(error) or None)
            for part, part_errors in errors.items():
                commit(None if part in committed else part, part_errors)  # None: rows counted only
                committed.add(part)
    finally:
        if started:
            ray.shutdown()


def _with_threads(spec: JobSpec, threads: int) -> JobSpec:
    from dataclasses import replace

    return replace(spec, threads=threads)
