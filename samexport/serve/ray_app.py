"""``samexport serve --ray``: the same application on Ray Serve (extra ``ray-serve``).

One deployment, ``--replicas`` replicas; each replica is a whole
:class:`~samexport.serve.service.SegmentService` (encoder, embedding cache, prompt batcher) behind
the same FastAPI application, with ``num_gpus=1`` when the backend needs a GPU. Ray Serve's proxy
spreads requests over the replicas without regard to the image, so the replicas share their
embeddings through one Ray actor, :class:`SharedEmbeddings` (an LRU store with the same byte
budget, the arrays passed through Ray's object store): an image uploaded to one replica is found
by the others on their first prompt for it, and kept in their own caches from then on.

The replica answers Ray Serve's requests by handing them to its FastAPI application in process
(httpx's ASGI transport), so the API, its limits and its errors are exactly those of the
single-process server.
"""

from __future__ import annotations

from typing import Any

from samexport import constants as C
from samexport.errors import require
from samexport.serve.cache import CachedImage, EmbeddingCache
from samexport.serve.service import ServeConfig

STORE_NAME = "samexport-serve-embeddings"
APP_NAME = "samexport-serve"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class SharedEmbeddings:
    """The store the replicas share (run as one Ray actor): an :class:`EmbeddingCache`."""

    def __init__(self, budget_bytes: int) -> None:
        self.cache = EmbeddingCache(budget_bytes)

    def get(self, key: str) -> CachedImage | None:
        return self.cache.get(key)

    def put(self, entry: CachedImage) -> bool:
        return self.cache.put(entry)

    def stats(self) -> dict[str, int]:
        return self.cache.stats()


class _ActorStore:
    """``get``/``put`` of :class:`SharedEmbeddings` through its actor handle, blocking."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def get(self, key: str) -> CachedImage | None:
        import ray

        return ray.get(self.handle.get.remote(key))

    def put(self, entry: CachedImage) -> None:
        self.handle.put.remote(entry)  # fire and forget: the uploading replica keeps its own copy


class ServeReplica:
    """One Ray Serve replica: a service and its FastAPI application, answering in process."""

    def __init__(self, artifact: str, config: ServeConfig, backend: str, store) -> None:
        import httpx

        from samexport.serve.app import create_app
        from samexport.serve.service import SegmentService

        self.service = SegmentService(artifact, config, backend=backend, shared=_ActorStore(store))
        self.app = create_app(service=self.service)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica",
                                        timeout=None)

    async def __call__(self, request):
        from starlette.responses import Response

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        answer = await self.client.request(
            request.method, request.url.path, params=request.url.query, headers=headers, content=await request.body()
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close(timeout=30)


def application(artifact: str, config: ServeConfig, *, backend: str = "auto", replicas: int = 1) -> Any:
    """The Ray Serve application (bound deployment) for ``artifact``; needs ``ray.init`` first.

    The shared store actor is created (or reused, by name) here.
    """
    ray = require("ray", "ray-serve")
    serve = require("ray.serve", "ray-serve")
    store = ray.remote(SharedEmbeddings).options(
        name=STORE_NAME, get_if_exists=True, num_cpus=0
    ).remote(config.cache_bytes)
    name, _ = C.split_backend(backend)
    needs_gpu = name in C.BACKENDS and C.BACKENDS[name].needs_gpu
    if backend == "auto" and ray.cluster_resources().get("GPU", 0) > 0:
        needs_gpu = True
    deployment = serve.deployment(
        ServeReplica, name="SamexportServe", num_replicas=replicas,
        ray_actor_options={"num_cpus": 1, "num_gpus": 1 if needs_gpu else 0},
        max_ongoing_requests=config.max_queue + config.max_image_jobs,
    )
    return deployment.bind(str(artifact), config, backend, store)


def run(artifact: str, config: ServeConfig, *, backend: str, host: str, port: int, replicas: int,
        ray_address: str | None) -> None:
    """Serve on Ray Serve until interrupted (the command line's ``--ray``)."""
    ray = require("ray", "ray-serve")
    serve = require("ray.serve", "ray-serve")
    ray.init(address=ray_address, include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(artifact, config, backend=backend, replicas=replicas), name=APP_NAME,
                  route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
