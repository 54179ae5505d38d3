"""``samexport serve``: the HTTP service (FastAPI + uvicorn, extra ``serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samexport import constants as C
from samexport.cli.errors import clean_errors
from samexport.errors import SamExportError, require
from samexport.serve import ray_app
from samexport.serve.service import ServeConfig


@clean_errors
def serve(
    artifact_dir: Annotated[Path, typer.Argument(help="Artifact directory from `samexport build`.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    backend: Annotated[str, typer.Option(help=C.backends_help(C.ARTIFACT_BACKENDS))] = "auto",
    cache_mb: Annotated[int, typer.Option(help="Embedding cache budget in MiB (4 MiB per image; 0 keeps none).", min=0)] = 512,
    batch_window_ms: Annotated[float, typer.Option(help="Longest a prompt waits for others on the same image to share its decoder call.", min=0)] = 5.0,
    adaptive_window: Annotated[bool, typer.Option("--adaptive-window/--fixed-window", help="Close a batch as soon as no other prompt is queued or on its way (the window is the upper bound), or always wait the whole window.")] = True,
    max_batch: Annotated[int, typer.Option(help="Most prompts per decoder call (1: one by one).", min=1)] = 32,
    max_queue: Annotated[int, typer.Option(help="Most prompt requests waiting; more are answered 503 with Retry-After.", min=1)] = 256,
    max_image_jobs: Annotated[int, typer.Option(help="Most image encodes / automatic runs waiting; more get 503.", min=1)] = 8,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body in MiB (413 above).", min=0.01)] = 32.0,
    max_image_mp: Annotated[float, typer.Option(help="Largest image in megapixels (413 above).", min=0.01)] = 50.0,
    ray: Annotated[bool, typer.Option("--ray", help="Run on Ray Serve (extra ray-serve): encoder and decoder deployments of --replicas replicas each, sharing one embedding store.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="With --ray: the cluster to join, e.g. auto (default: a local Ray).")] = None,
    replicas: Annotated[int | None, typer.Option(help="With --ray: replicas of the encoder and of the decoder (default 1 each).", min=1)] = None,
    gpus_per_replica: Annotated[float | None, typer.Option(help="With --ray and a GPU backend: GPUs each encoder or decoder replica asks for (default 0.5: one of each per GPU).", min=0)] = None,
) -> None:
    """Serve an artifact over HTTP: embed images once, answer prompts fast, a page at /.

    API at /v1 (see /docs); stop with Ctrl-C (queued requests are finished first).
    """

    if not ray and (ray_address or replicas or gpus_per_replica is not None):
        raise SamExportError("--ray-address, --replicas and --gpus-per-replica need --ray")
    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from samexport.serve.app import create_app

    config = ServeConfig(
        cache_bytes=cache_mb << 20, batch_window_ms=batch_window_ms, adaptive_window=adaptive_window, max_batch=max_batch, max_queue=max_queue,
        max_image_jobs=max_image_jobs, max_request_bytes=int(max_request_mb * (1 << 20)),
        max_image_pixels=int(max_image_mp * 1e6),
    )
    if ray:
        typer.echo(f"serving {artifact_dir} on Ray Serve at http://{host}:{port}/ ({replicas or 1} encoder and decoder replicas)")
        ray_app.run(str(artifact_dir), config, backend=backend, host=host, port=port, replicas=replicas or 1,
                    ray_address=ray_address, gpus_per_replica=0.5 if gpus_per_replica is None else gpus_per_replica)
        return
    if not (Path(artifact_dir) / C.MANIFEST).is_file():
        raise SamExportError(f"{artifact_dir} is not an artifact directory (no {C.MANIFEST}); build one with `samexport build`")
    app = create_app(artifact_dir, config, backend=backend)
    typer.echo(f"serving {artifact_dir} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
