"""What the HTTP layer calls: images in, embeddings cached, prompts batched, masks out. No web
framework here, so the same service runs under FastAPI, Ray Serve or a test directly.

Heavy work runs off the caller's thread: encodes and automatic mask generation on one image
worker (a bounded number waiting), prompt decoding on the :class:`~samexport.serve.batcher.PromptBatcher`
worker. Every public method returns a ``concurrent.futures.Future`` or raises at once
(:class:`~samexport.errors.InvalidInputError` for bad input, :class:`Overloaded` when full).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samexport import constants as C
from samexport import imageio
from samexport.amg import AutomaticMaskGenerator
from samexport.artifacts import read_manifest
from samexport.errors import InvalidInputError
from samexport.runtime.predictor import SamPredictor
from samexport.serve.batcher import Overloaded, PromptBatcher, PromptJob
from samexport.serve.cache import CachedImage, EmbeddingCache, image_id

__all__ = ["CachedImage", "ImageTooLargeError", "Overloaded", "Prompt", "PromptResult", "SegmentService", "ServeConfig", "UnknownImageError"]


@dataclass(frozen=True)
class ServeConfig:
    """How the service spends memory and time (``samexport serve --help`` names each).

    Attributes:
        cache_bytes: embedding cache budget (4 MiB per image).
        batch_window_ms: how long the decoder waits after a prompt for others on the same image.
        adaptive_window: close a batch as soon as no other prompt is queued or on its way (the
            window is then only the upper bound); False waits the whole window.
        max_batch: most prompts in one decoder call (1: one by one).
        max_queue: most prompt requests waiting; more get 503.
        max_image_jobs: most encodes / automatic mask generations waiting or running; more get 503.
        max_request_bytes: largest request body.
        max_image_pixels: largest image (width x height) accepted.
        max_points: most points in one prompt.
        max_points_per_side: largest grid for automatic mask generation.
        retry_after_s: the ``Retry-After`` a 503 carries.
    """

    cache_bytes: int = 512 << 20
    batch_window_ms: float = 5.0
    adaptive_window: bool = True
    max_batch: int = 32
    max_queue: int = 256
    max_image_jobs: int = 8
    max_request_bytes: int = 32 << 20
    max_image_pixels: int = 50_000_000
    max_points: int = 64
    max_points_per_side: int = 64
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "adaptive_window":
                continue
            if value < 0 or (value == 0 and name not in ("cache_bytes", "batch_window_ms")):
                raise InvalidInputError(f"{name} must be {'>= 0' if name in ('cache_bytes', 'batch_window_ms') else '> 0'}; got {value}")


class UnknownImageError(InvalidInputError):
    """An image id the cache does not hold (never uploaded, or evicted): HTTP 404."""


class ImageTooLargeError(InvalidInputError):
    """An image over ``max_image_pixels``: HTTP 413."""


@dataclass(frozen=True)
class Prompt:
    """One prompt in original-image pixels, checked.

    Attributes:
        points: Nx2 float32 (X, Y), or ``None``.
        labels: N float32, 1 foreground / 0 background, or ``None``.
        box: 4 float32 (X0, Y0, X1, Y1), or ``None``.
        mask_input: 1x256x256 float32 low-resolution logits, or ``None``.
        multimask: three masks instead of one.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    multimask: bool = True

    def shape_key(self) -> tuple:
        """Prompts with equal keys (on one image) are decoded in one call."""
        points = 0 if self.points is None else len(self.points)
        return points, self.box is not None, self.mask_input is not None, self.multimask


def check_prompt(points, labels, box, mask_input, multimask: bool, max_points: int) -> Prompt:
    """A :class:`Prompt` from client values, or an :class:`InvalidInputError` saying what is wrong."""
    if (points is None) != (labels is None):
        raise InvalidInputError("points and labels must be given together")
    if points is not None:
        points = np.asarray(points, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        if points.ndim != 2 or points.shape[1:] != (2,) or len(points) == 0:
            raise InvalidInputError("points must be a non-empty list of [x, y] pairs")
        if len(points) > max_points:
            raise InvalidInputError(f"at most {max_points} points per prompt; got {len(points)}")
        if labels.shape != (len(points),):
            raise InvalidInputError(f"labels must have one entry per point ({len(points)}); got {labels.size}")
        if not np.isin(labels, (0, 1)).all():
            raise InvalidInputError("labels must be 1 (foreground) or 0 (background)")
        if not np.isfinite(points).all():
            raise InvalidInputError("points must be finite numbers")
        points, labels = points.astype(np.float32), labels.astype(np.float32)
    if box is not None:
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InvalidInputError("box must be 4 finite numbers [x0, y0, x1, y1]")
        if box[2] < box[0] or box[3] < box[1]:
            raise InvalidInputError("box must have x0 <= x1 and y0 <= y1")
        box = box.astype(np.float32)
    if mask_input is not None:
        size = C.LOW_RES_MASK_SIZE
        mask_input = np.asarray(mask_input, dtype=np.float32)
        if mask_input.size != size * size or not np.isfinite(mask_input).all():
            raise InvalidInputError(f"mask_input must be {size}x{size} finite float32 logits")
        mask_input = mask_input.reshape(1, size, size)
    if points is None and box is None and mask_input is None:
        raise InvalidInputError("give points (with labels), a box or a mask_input")
    return Prompt(points, labels, box, mask_input, bool(multimask))


def check_automatic(options: dict[str, Any], config: ServeConfig) -> None:
    """An :class:`InvalidInputError` if automatic mask generation ``options`` ask for more than
    ``config`` allows."""
    side = options.get("points_per_side", 32)
    if not isinstance(side, int) or not 1 <= side <= config.max_points_per_side:
        raise InvalidInputError(f"points_per_side must be 1..{config.max_points_per_side}; got {side!r}")


@dataclass(frozen=True)
class PromptResult:
    """Masks for one prompt: ``masks`` CxHxW bool, ``scores`` C float32, ``low_res`` Cx256x256
    float32 logits (C = 3 with multimask, else 1), and how long it waited and decoded."""

    masks: np.ndarray
    scores: np.ndarray
    low_res: np.ndarray
    queue_ms: float
    decode_ms: float
    batch_size: int


class SegmentService:
    """One model behind an embedding cache, a prompt batcher and an image worker.

    Args:
        model: an artifact directory, a :class:`~samexport.SamModel` or a backend (anything
            :class:`~samexport.SamPredictor` takes).
        config: limits and batching (:class:`ServeConfig`).
        backend: which runtime opens an artifact directory.
        shared: a second-level store beside this service's own cache, with ``get(image_id) ->
            CachedImage | None`` and ``put(CachedImage)``, shared by several services (the Ray
            Serve replicas share one): an image encoded by one is found by the others.
    """

    def __init__(self, model: Any, config: ServeConfig | None = None, *, backend: str = "auto", shared: Any = None) -> None:
        self.config = config or ServeConfig()
        self.shared = shared
        self.shared_errors, self.last_shared_error = 0, None
        self._encoder = SamPredictor(model, backend=backend)  # used on the image worker only
        self.model = self._encoder.model
        self._decoder = SamPredictor(self.model)  # used on the batcher's worker only
        self.cache = EmbeddingCache(self.config.cache_bytes)
        self.batcher = PromptBatcher(
            self._decode, window_s=self.config.batch_window_ms / 1000, max_batch=self.config.max_batch,
            max_pending=self.config.max_queue, adaptive=self.config.adaptive_window,
        )
        self._images = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samexport-serve-image")
        self._lock = threading.Lock()
        self._image_jobs = 0
        self._inflight: dict[str, Future] = {}
        self.encodes = 0
        self._closed = False

    @property
    def backend_name(self) -> str:
        return str(getattr(self.model.backend, "name", type(self.model.backend).__name__))

    # -- images ----------------------------------------------------------------------------

    def decode_image(self, data: bytes) -> np.ndarray:
        """HxWx3 uint8 RGB pixels of an uploaded file, within ``max_image_pixels``."""
        from PIL import Image

        if not data:
            raise InvalidInputError("the image is empty (0 bytes)")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
        except Exception:  # noqa: BLE001 - any failure to read the header: not an image we read
            raise imageio.UnreadableImageError("not an image format Pillow can read") from None
        if width * height > self.config.max_image_pixels:
            raise ImageTooLargeError(
                f"image too large: {width}x{height} = {width * height} pixels, limit {self.config.max_image_pixels}"
            )
        return imageio.decode(io.BytesIO(data))

    def _submit_image_job(self, function, *args) -> Future:
        with self._lock:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._image_jobs >= self.config.max_image_jobs:
                raise Overloaded(f"too many images waiting to be encoded ({self._image_jobs}); try again shortly")
            self._image_jobs += 1
        future = self._images.submit(function, *args)
        future.add_done_callback(self._image_job_done)
        return future

    def _image_job_done(self, _future: Future) -> None:
        with self._lock:
            self._image_jobs -= 1

    def embed(self, data: bytes) -> tuple[Future, bool]:
        """``(future of CachedImage, cache hit)`` for an uploaded image's bytes. An image being
        encoded for another request is waited for, not encoded twice."""
        key = image_id(data)
        entry = self._cached(key)
        if entry is not None:
            done: Future = Future()
            done.set_result(entry)
            return done, True
        with self._lock:
            running = self._inflight.get(key)
        if running is not None:
            return running, False
        future = self._submit_image_job(self._encode, key, data)
        with self._lock:
            self._inflight.setdefault(key, future)
        future.add_done_callback(lambda _f: self._forget(key, future))
        return future, False

    def _forget(self, key: str, future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def _encode(self, key: str, data: bytes) -> CachedImage:
        pixels = self.decode_image(data)
        start = time.perf_counter()
        self._encoder.set_image(pixels)
        state = self._encoder.image_state
        encode_ms = (time.perf_counter() - start) * 1000
        embedding = state.embedding
        embedding.setflags(write=False)
        entry = CachedImage(key, embedding, tuple(state.original_size), tuple(state.input_size), encode_ms)
        self._encoder.reset_image()
        self.cache.put(entry)
        if self.shared is not None:
            try:
                self.shared.put(entry)
            except Exception as exc:  # noqa: BLE001 - the entry is still in this service's cache
                self.shared_errors += 1
                self.last_shared_error = f"{type(exc).__name__}: {exc}"[:300]
        self.encodes += 1
        return entry

    def _cached(self, key: str) -> CachedImage | None:
        """``key`` from this service's cache, else from the shared store (then kept here too)."""
        entry = self.cache.get(key)
        if entry is None and self.shared is not None:
            try:
                entry = self.shared.get(key)
            except Exception as exc:  # noqa: BLE001 - a lost store (e.g. its Ray actor died) is a miss
                self.shared_errors += 1
                self.last_shared_error = f"{type(exc).__name__}: {exc}"[:300]
                entry = None
            if entry is not None:
                if entry.image_id != key:  # a store answering for another key would mix images up
                    raise RuntimeError(f"the shared embedding store answered {entry.image_id} for {key}")
                self.cache.put(entry)
        return entry

    def lookup(self, key: str) -> CachedImage:
        """The cached image ``key``, or :class:`UnknownImageError`."""
        entry = self._cached(key)
        if entry is None:
            raise UnknownImageError(f"unknown image id {key[:16]}...: upload the image again (it may have been evicted)")
        return entry

    # -- prompts ---------------------------------------------------------------------------

    def arriving(self):
        """A context in which a prompt request is announced to the batcher while it is checked
        and its image looked up (see :meth:`PromptBatcher.arriving`)."""
        return self.batcher.arriving()

    @property
    def pending(self) -> int:
        """Prompt requests queued or being decoded."""
        return self.batcher.pending

    def predict(self, image: CachedImage, prompt: Prompt) -> Future:
        """Future of the :class:`PromptResult` for ``prompt`` on ``image``, decoded with the
        prompts of the same shape that arrive on the same image within the batch window."""
        return self.batcher.submit((image.image_id, prompt.shape_key()), (image, prompt)).future

    def _decode(self, jobs: Sequence[PromptJob]) -> list[PromptResult]:
        image, first = jobs[0].payload
        prompts = [job.payload[1] for job in jobs]
        self._decoder.set_embedding(image.embedding, image.original_size, image.input_size)
        start = time.perf_counter()
        try:
            masks, scores, low_res = self._decoder.predict_batch(
                None if first.points is None else np.stack([p.points for p in prompts]),
                None if first.labels is None else np.stack([p.labels for p in prompts]),
                None if first.box is None else np.stack([p.box for p in prompts]),
                None if first.mask_input is None else np.stack([p.mask_input for p in prompts]),
                multimask_output=first.multimask,
            )
        finally:
            self._decoder.reset_image()
        decode_ms = (time.perf_counter() - start) * 1000
        return [
            PromptResult(masks[i], scores[i], low_res[i], (job.started_at - job.queued_at) * 1000, decode_ms, len(jobs))
            for i, job in enumerate(jobs)
        ]

    # -- automatic mask generation ---------------------------------------------------------

    def automatic(self, image: CachedImage, options: dict[str, Any]) -> Future:
        """Future of ``(records, milliseconds)``: the mask generator's records (uncompressed RLE)
        for a cached image, from its embedding (the encoder is not run again); ``options`` are
        :class:`~samexport.amg.AutomaticMaskGenerator` keywords (no crop layers: they would need
        the pixels encoded crop by crop)."""
        self.check_automatic(options)
        return self._submit_image_job(self._generate, image, dict(options))

    def check_automatic(self, options: dict[str, Any]) -> None:
        """An :class:`InvalidInputError` if ``options`` ask for more than the limits allow."""
        check_automatic(options, self.config)

    def _generate(self, image: CachedImage, options: dict[str, Any]):
        start = time.perf_counter()
        predictor = SamPredictor(self.model)
        predictor.set_embedding(image.embedding, image.original_size, image.input_size)
        generator = AutomaticMaskGenerator(predictor=predictor, output_mode="uncompressed_rle", **options)
        records = generator.generate_embedded()
        return records, (time.perf_counter() - start) * 1000

    # -- lifecycle ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The model, backend, limits and counters, JSON-ready."""
        manifest = None
        artifact_dir = getattr(self.model, "artifact_dir", None)
        if artifact_dir is not None:
            manifest = read_manifest(Path(artifact_dir)).to_dict()
        return {
            "variant": getattr(self.model, "variant", None),
            "backend": self.backend_name,
            "manifest": manifest,
            "limits": asdict(self.config),
            "cache": self.cache.stats(),
            "decoder": {"calls": self.batcher.calls, "prompts": self.batcher.jobs, "pending": self.batcher.pending},
            "encodes": self.encodes,
            "shared_store": None if self.shared is None else {"errors": self.shared_errors, "last_error": self.last_shared_error},
        }

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the workers."""
        with self._lock:
            self._closed = True
        self.batcher.close(timeout)
        self._images.shutdown(wait=True)
