"""The HTTP face: a FastAPI application over a :class:`~samexport.serve.service.SegmentService`.

API (version 1, JSON; OpenAPI at ``/docs``):

- ``POST /v1/images`` (multipart ``image``): encode and cache -> id (sha256 of the bytes), size,
  whether it was a cache hit, timings.
- ``POST /v1/masks`` (JSON): one prompt (points + labels, box, mask input, multimask) on an
  ``image_id`` or an inline base64 ``image`` -> masks (COCO RLE or PNG), scores, timings.
- ``POST /v1/automatic`` (multipart ``image`` or ``image_id`` + options): the mask generator's
  records, from the cached embedding (the encoder runs at most once per image).
- ``GET /v1/health``, ``GET /v1/info``; ``GET /`` the click-to-segment page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import time
from concurrent.futures import Future
from importlib import resources
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from samexport import constants as C
from samexport.amg import ops
from samexport.errors import SamExportError
from samexport.serve.limits import BodyLimit
from samexport.serve.service import (
    ImageTooLargeError,
    Overloaded,
    PromptResult,
    SegmentService,
    ServeConfig,
    UnknownImageError,
    check_prompt,
)

API_VERSION = "v1"
IMAGE_ID_PATTERN = "^[0-9a-f]{64}$"


class MaskRequest(BaseModel):
    """One prompt on one image (give ``image_id`` or ``image``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image_id: str | None = Field(None, pattern=IMAGE_ID_PATTERN, description="id from POST /v1/images")
    image: str | None = Field(None, description="the image file's bytes, base64 (instead of image_id)")
    points: list[list[float]] | None = Field(None, description="[[x, y], ...] in image pixels")
    labels: list[int] | None = Field(None, description="one per point: 1 foreground, 0 background")
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in image pixels")
    mask_input: str | None = Field(
        None, description="256x256 float32 little-endian logits, base64 (a previous answer's low_res)"
    )
    multimask: bool = Field(True, description="three masks (true) or one")
    output: Literal["rle", "coco_rle", "png"] = Field(
        "rle", description="rle: uncompressed COCO RLE (counts list); coco_rle: compressed (needs pycocotools); "
        "png: base64 PNG, 255 = object"
    )
    return_low_res: bool = Field(False, description="also return the 256x256 float32 logits, base64")


def _b64(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SamExportError(f"{name} is not valid base64") from None


def _encode_mask(mask: np.ndarray, output: str) -> dict[str, Any]:
    if output == "rle":
        return {"rle": ops.mask_to_rle(mask)}
    if output == "coco_rle":
        return {"rle": ops.coco_encode_mask(mask)}
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"png": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _mask_answer(result: PromptResult, request: MaskRequest) -> dict[str, Any]:
    start = time.perf_counter()
    masks = [
        {"score": float(score), "area": int(np.count_nonzero(mask)), **_encode_mask(mask, request.output)}
        for mask, score in zip(result.masks, result.scores)
    ]
    answer: dict[str, Any] = {"masks": masks, "scores": [float(s) for s in result.scores]}
    if request.return_low_res:
        answer["low_res"] = [base64.b64encode(np.ascontiguousarray(m, "<f4").tobytes()).decode("ascii")
                             for m in result.low_res]
    answer["output_ms"] = (time.perf_counter() - start) * 1000
    return answer


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": " ".join(detail.split())}, status_code=status, headers=headers)


async def _resolve(pending):
    """The result of a service call: a ``concurrent.futures.Future`` (:class:`SegmentService`) or
    an awaitable (the Ray Serve front, whose work runs in other deployments)."""
    if isinstance(pending, Future):
        return await asyncio.wrap_future(pending)
    return await pending


def _page(name: str) -> str:
    return resources.files("samexport.serve").joinpath("static", name).read_text(encoding="utf-8")


def create_app(
    model: Any = None, config: ServeConfig | None = None, *, backend: str = "auto",
    service: SegmentService | None = None,
):
    """The ASGI application serving ``model`` (an artifact directory, a ``SamModel`` or a
    backend) or an existing ``service`` (a :class:`SegmentService`, or anything with its methods,
    such as the Ray Serve front in :mod:`samexport.serve.ray_app`); the service is closed
    (queued work finished) when the application shuts down."""
    if (model is None) == (service is None):
        raise SamExportError("create_app takes a model or a service, one of them")
    service = service or SegmentService(model, config, backend=backend)
    config = service.config

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="samexport serve", version=API_VERSION, lifespan=lifespan,
        description="Segment Anything over an exported artifact: embed once, prompt many times.",
    )
    app.state.service = service
    retry = {"Retry-After": str(config.retry_after_s)}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(SamExportError)
    async def user_error(_request: Request, exc: SamExportError):
        if isinstance(exc, Overloaded):
            return _error(503, str(exc), retry)
        if isinstance(exc, UnknownImageError):
            return _error(404, str(exc))
        if isinstance(exc, ImageTooLargeError):
            return _error(413, str(exc))
        return _error(400, str(exc))

    async def _embed(data: bytes):
        future, hit = await run_in_threadpool(service.embed, data)  # may ask a shared store
        return await _resolve(future), hit

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page("index.html"))

    @app.get("/page.js", include_in_schema=False)
    async def page_script() -> Response:
        return Response(_page("page.js"), media_type="text/javascript")

    @app.get(f"/{API_VERSION}/health")
    async def health() -> dict[str, Any]:
        """Liveness: ``ok`` while the service accepts work."""
        return {"status": "ok", "pending_prompts": service.pending}

    @app.get(f"/{API_VERSION}/info")
    async def info() -> dict[str, Any]:
        """The model, backend, manifest, limits and counters."""
        return await run_in_threadpool(service.info)

    @app.post(f"/{API_VERSION}/images")
    async def embed(image: UploadFile = File(..., description="the image file")) -> dict[str, Any]:
        """Encode an image (or find it in the cache): its id is the sha256 of the bytes."""
        start = time.perf_counter()
        entry, hit = await _embed(await image.read())
        height, width = entry.original_size
        return {
            "image_id": entry.image_id, "width": width, "height": height, "cached": hit,
            "timings_ms": {"encode": 0.0 if hit else entry.encode_ms, "total": (time.perf_counter() - start) * 1000},
        }

    @app.post(f"/{API_VERSION}/masks")
    async def masks(request: MaskRequest) -> dict[str, Any]:
        """Masks for one prompt; concurrent prompts on one image share a decoder call."""
        start = time.perf_counter()
        if (request.image_id is None) == (request.image is None):
            raise SamExportError("give image_id (from POST /v1/images) or image (base64 bytes), one of them")
        mask_input = None
        if request.mask_input is not None:
            raw = _b64("mask_input", request.mask_input)
            size = C.LOW_RES_MASK_SIZE
            if len(raw) != size * size * 4:
                raise SamExportError(f"mask_input must be {size}x{size} float32 ({size * size * 4} bytes); got {len(raw)}")
            mask_input = np.frombuffer(raw, "<f4")
        prompt = check_prompt(request.points, request.labels, request.box, mask_input, request.multimask,
                              config.max_points)
        encode_ms, hit = 0.0, True
        if request.image is not None:
            entry, hit = await _embed(_b64("image", request.image))
            encode_ms = 0.0 if hit else entry.encode_ms
            pending = service.predict(entry, prompt)
        else:
            with service.arriving():  # the batcher may keep its batch open for this prompt
                entry = await run_in_threadpool(service.lookup, request.image_id)
                pending = service.predict(entry, prompt)
        result = await _resolve(pending)
        answer = await run_in_threadpool(_mask_answer, result, request)
        height, width = entry.original_size
        return {
            "image_id": entry.image_id, "width": width, "height": height, "cached": hit, **answer,
            "batch_size": result.batch_size,
            "timings_ms": {"encode": encode_ms, "queue": result.queue_ms, "decode": result.decode_ms,
                           "output": answer.pop("output_ms"), "total": (time.perf_counter() - start) * 1000},
        }

    @app.post(f"/{API_VERSION}/automatic")
    async def automatic(
        image: UploadFile | None = File(None, description="the image file (or give image_id)"),
        image_id: str | None = Form(None, pattern=IMAGE_ID_PATTERN, description="id from POST /v1/images"),
        points_per_side: int = Form(32, ge=1, description="grid points along each side"),
        pred_iou_thresh: float = Form(0.88, ge=0, le=1),
        stability_score_thresh: float = Form(0.95, ge=0, le=1),
        box_nms_thresh: float = Form(0.7, ge=0, le=1),
        min_mask_region_area: int = Form(0, ge=0),
    ) -> dict[str, Any]:
        """Segment everything: the automatic mask generator's records (uncompressed COCO RLE),
        from the image's cached embedding (an uploaded image is embedded and cached first)."""
        start = time.perf_counter()
        if (image is None) == (image_id is None):
            raise SamExportError("give image (a file) or image_id (from POST /v1/images), one of them")
        options = dict(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                       stability_score_thresh=stability_score_thresh, box_nms_thresh=box_nms_thresh,
                       min_mask_region_area=min_mask_region_area)
        service.check_automatic(options)  # before an upload is encoded
        encode_ms, hit = 0.0, True
        if image is not None:
            entry, hit = await _embed(await image.read())
            encode_ms = 0.0 if hit else entry.encode_ms
        else:
            entry = await run_in_threadpool(service.lookup, image_id)
        records, ms = await _resolve(service.automatic(entry, options))
        height, width = entry.original_size
        return {"image_id": entry.image_id, "width": width, "height": height, "cached": hit, "annotations": records,
                "timings_ms": {"encode": encode_ms, "generate": ms, "total": (time.perf_counter() - start) * 1000}}

    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    return app
