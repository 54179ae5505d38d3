"""``samexport serve --ray``: the same application on Ray Serve (extra ``ray-serve``), with the
encoder and the decoder as separate deployments.

- ``SamexportEncoder`` (``--replicas`` replicas; ``num_gpus`` when the backend needs a GPU):
  embeds uploaded images (a :class:`~samexport.serve.service.SegmentService` used for its
  encoder: one encode per image at a time, its own LRU) and puts every embedding in the shared
  store before it answers.
- ``SamexportDecoder`` (``--replicas`` replicas; ``num_gpus`` likewise): prompts and automatic
  mask generation by image id. It takes the embedding from its own LRU or, the first time, from
  the shared store, and decodes the prompts that reach it together (its own prompt batcher).
- ``SamexportFront`` (one replica, the HTTP ingress): the FastAPI application of the
  single-process server, so the API, its limits, its errors and the page are the same, over a
  :class:`RemoteService` that hands encodes to the encoder deployment and prompts to the decoder
  deployment. Requests reach the application in process (httpx's ASGI transport).
- ``SharedEmbeddings`` (one named Ray actor): an LRU of embeddings with the ``--cache-mb``
  budget; the arrays travel to the decoders through Ray's object store.

How a prompt on an image embedded by another replica works: through the shared store, not by
routing. Ray Serve's router picks a decoder replica without regard to the image, so any decoder
replica may get any image's prompt: on a miss in its own cache it fetches the embedding from the
store (once; it keeps it from then on). Prompts on one image that reach different decoder
replicas are batched per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from samexport import constants as C
from samexport.errors import SamExportError, require
from samexport.serve.batcher import Overloaded
from samexport.serve.cache import CachedImage, EmbeddingCache, ImageRef
from samexport.serve.service import Prompt, SegmentService, ServeConfig, UnknownImageError, check_automatic

STORE_NAME = "samexport-serve-embeddings"
APP_NAME = "samexport-serve"
ENCODER, DECODER, FRONT = "SamexportEncoder", "SamexportDecoder", "SamexportFront"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_REFS_KEPT = 65536  # image ids (with sizes) the front remembers; the embeddings live elsewhere


class SharedEmbeddings:
    """The store the replicas share (run as one Ray actor): an :class:`EmbeddingCache`."""

    def __init__(self, budget_bytes: int) -> None:
        self.cache = EmbeddingCache(budget_bytes)

    def get(self, key: str) -> CachedImage | None:
        return self.cache.get(key)

    def meta(self, key: str) -> ImageRef | None:
        entry = self.cache.get(key)
        return None if entry is None else entry.ref()

    def put(self, entry: CachedImage) -> bool:
        return self.cache.put(entry)

    def stats(self) -> dict[str, int]:
        return self.cache.stats()


class _ActorStore:
    """``get``/``put`` of :class:`SharedEmbeddings` through its actor handle, blocking (``put``
    too: a decoder replica must find the image as soon as the encoder has answered)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def get(self, key: str) -> CachedImage | None:
        import ray

        return ray.get(self.handle.get.remote(key))

    def put(self, entry: CachedImage) -> None:
        import ray

        ray.get(self.handle.put.remote(entry))


@dataclass(frozen=True)
class _Failure:
    """A user error raised in a replica, handed back as a value so the front re-raises it as is
    (its class decides the HTTP status) rather than wrapped in a Ray error."""

    error: SamExportError


def _unwrap(answer: Any) -> Any:
    if isinstance(answer, _Failure):
        raise answer.error
    return answer


class _Replica:
    """A :class:`SegmentService` in a Ray Serve replica, sharing embeddings through the store."""

    def __init__(self, artifact: str, config: ServeConfig, backend: str, store) -> None:
        self.service = SegmentService(artifact, config, backend=backend, shared=_ActorStore(store))

    async def stats(self) -> dict[str, Any]:
        """Which replica this is and what it did (for tests and operators)."""
        import ray

        return {"actor": ray.get_runtime_context().get_actor_id(), "encodes": self.service.encodes,
                "prompts": self.service.batcher.jobs, "decoder_calls": self.service.batcher.calls}

    async def info(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.service.info)

    def __del__(self) -> None:  # Ray Serve's graceful shutdown: queued work is finished first
        service = getattr(self, "service", None)
        if service is not None:
            service.close(timeout=30)


class EncoderReplica(_Replica):
    """The encoder deployment's replica."""

    async def embed(self, data: bytes) -> tuple[ImageRef, bool] | _Failure:
        try:
            future, hit = await asyncio.to_thread(self.service.embed, data)  # may ask the store
            entry = await asyncio.wrap_future(future)
        except SamExportError as exc:
            return _Failure(exc)
        return entry.ref(), hit


class DecoderReplica(_Replica):
    """The decoder deployment's replica."""

    async def _entry(self, key: str) -> CachedImage:
        return await asyncio.to_thread(self.service.lookup, key)  # may fetch from the store

    async def predict(self, key: str, prompt: Prompt):
        try:
            return await asyncio.wrap_future(self.service.predict(await self._entry(key), prompt))
        except SamExportError as exc:
            return _Failure(exc)

    async def automatic(self, key: str, options: dict[str, Any]):
        try:
            return await asyncio.wrap_future(self.service.automatic(await self._entry(key), options))
        except SamExportError as exc:
            return _Failure(exc)


class RemoteService:
    """What the front's FastAPI application calls: :class:`SegmentService`'s methods, with the
    work done by the encoder and decoder deployments. Prompts and images in flight are bounded
    here (``max_queue``, ``max_image_jobs``: more get 503)."""

    def __init__(self, config: ServeConfig, encoder, decoder, store) -> None:
        self.config, self.encoder, self.decoder, self.store = config, encoder, decoder, store
        self._lock = threading.Lock()
        self._inflight = {"prompts": 0, "images": 0}
        self._closed = False
        self._refs: OrderedDict[str, ImageRef] = OrderedDict()

    @property
    def pending(self) -> int:
        return self._inflight["prompts"]

    def arriving(self):
        return contextlib.nullcontext()  # each decoder replica batches what reaches it

    def check_automatic(self, options: dict[str, Any]) -> None:
        check_automatic(options, self.config)

    def _enter(self, kind: str) -> None:
        limit = self.config.max_queue if kind == "prompts" else self.config.max_image_jobs
        with self._lock:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._inflight[kind] >= limit:
                raise Overloaded(f"too many {kind} in flight ({self._inflight[kind]}); try again shortly")
            self._inflight[kind] += 1

    def _leave(self, kind: str) -> None:
        with self._lock:
            self._inflight[kind] -= 1

    def _remember(self, ref: ImageRef) -> None:
        with self._lock:
            self._refs[ref.image_id] = ref
            self._refs.move_to_end(ref.image_id)
            while len(self._refs) > _REFS_KEPT:
                self._refs.popitem(last=False)

    def embed(self, data: bytes) -> tuple[Future, bool]:
        """Called in a worker thread: waits for the encoder deployment."""
        self._enter("images")
        try:
            ref, hit = _unwrap(self.encoder.embed.remote(data).result())
        finally:
            self._leave("images")
        self._remember(ref)
        done: Future = Future()
        done.set_result(ref)
        return done, hit

    def lookup(self, key: str) -> ImageRef:
        """The image's id and sizes (the embedding stays in the store); called in a worker thread."""
        with self._lock:
            ref = self._refs.get(key)
        if ref is None:
            import ray

            ref = ray.get(self.store.meta.remote(key))
            if ref is None:
                raise UnknownImageError(f"unknown image id {key[:16]}...: upload the image again (it may have been evicted)")
            self._remember(ref)
        return ref

    def predict(self, image: ImageRef, prompt: Prompt):
        self._enter("prompts")  # a 503 at once, before anything is sent
        return self._call("prompts", self.decoder.predict, image.image_id, prompt)

    def automatic(self, image: ImageRef, options: dict[str, Any]):
        self.check_automatic(options)
        self._enter("images")
        return self._call("images", self.decoder.automatic, image.image_id, dict(options))

    async def _call(self, kind: str, method, *args):
        try:
            return _unwrap(await method.remote(*args))
        finally:
            self._leave(kind)

    def info(self) -> dict[str, Any]:
        """A decoder replica's info, plus the deployments and the shared store."""
        import ray

        info = self.decoder.info.remote().result()
        info["ray"] = {"deployments": [ENCODER, DECODER, FRONT], "store": ray.get(self.store.stats.remote()),
                       "front_in_flight": dict(self._inflight)}
        return info

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new work and wait (up to ``timeout``) for what is in flight."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + (timeout or 0)
        while any(self._inflight.values()) and time.monotonic() < deadline:
            time.sleep(0.05)


class FrontReplica:
    """The ingress: the FastAPI application over a :class:`RemoteService`, answering in process."""

    def __init__(self, config: ServeConfig, encoder, decoder, store) -> None:
        import httpx

        from samexport.serve.app import create_app

        self.service = RemoteService(config, encoder, decoder, store)
        self.app = create_app(service=self.service)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://front",
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


def application(
    artifact: str, config: ServeConfig, *, backend: str = "auto", replicas: int = 1,
    cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.5,
) -> Any:
    """The Ray Serve application for ``artifact`` (needs ``ray.init`` first): ``replicas``
    encoder replicas, ``replicas`` decoder replicas and one front. Each encoder and decoder
    replica asks for ``gpus_per_replica`` GPUs when the backend needs one (0.5: an encoder and a
    decoder share a GPU). The shared store actor is created (or reused, by name) here."""
    ray = require("ray", "ray-serve")
    serve = require("ray.serve", "ray-serve")
    if replicas < 1:
        raise SamExportError(f"replicas must be >= 1; got {replicas}")
    store = ray.remote(SharedEmbeddings).options(
        name=STORE_NAME, get_if_exists=True, num_cpus=0
    ).remote(config.cache_bytes)
    name, _ = C.split_backend(backend)
    needs_gpu = name in C.BACKENDS and C.BACKENDS[name].needs_gpu
    if backend == "auto" and ray.cluster_resources().get("GPU", 0) > 0:
        needs_gpu = True
    worker = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica if needs_gpu else 0}
    encoder = serve.deployment(EncoderReplica, name=ENCODER, num_replicas=replicas, ray_actor_options=worker,
                               max_ongoing_requests=config.max_image_jobs)
    decoder = serve.deployment(DecoderReplica, name=DECODER, num_replicas=replicas, ray_actor_options=worker,
                               max_ongoing_requests=config.max_queue + config.max_image_jobs)
    front = serve.deployment(FrontReplica, name=FRONT, num_replicas=1, ray_actor_options={"num_cpus": cpus_per_replica},
                             max_ongoing_requests=config.max_queue + config.max_image_jobs)
    args = (str(artifact), config, backend, store)
    return front.bind(config, encoder.bind(*args), decoder.bind(*args), store)


def run(artifact: str, config: ServeConfig, *, backend: str, host: str, port: int, replicas: int,
        ray_address: str | None, gpus_per_replica: float = 0.5) -> None:
    """Serve on Ray Serve until interrupted (the command line's ``--ray``)."""
    ray = require("ray", "ray-serve")
    serve = require("ray.serve", "ray-serve")
    ray.init(address=ray_address, include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(artifact, config, backend=backend, replicas=replicas, gpus_per_replica=gpus_per_replica),
                  name=APP_NAME, route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
