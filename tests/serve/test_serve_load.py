"""``samexport serve`` under concurrency, over a real socket (uvicorn on 127.0.0.1): prompts on one
image that arrive together share a decoder call and give the one-by-one results, a full queue
answers 503 with Retry-After, and shutting down finishes the queued work."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
from support import serving  # noqa: E402

from samexport.amg.ops import rle_to_mask  # noqa: E402
from samexport.runtime.backends import open_backend  # noqa: E402
from samexport.runtime.predictor import SamPredictor  # noqa: E402
from samexport.serve.app import create_app  # noqa: E402
from samexport.serve.batcher import Overloaded  # noqa: E402
from samexport.serve.service import SegmentService, ServeConfig, check_prompt  # noqa: E402


class CountingBackend:
    """A backend that counts decoder calls and their batch sizes, passing everything through."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def decode(self, image_embeddings, point_coords, *rest):
        self.batches.append(len(point_coords))
        return self.inner.decode(image_embeddings, point_coords, *rest)

    def __getattr__(self, name):
        return getattr(self.inner, name)


POINTS = [[5.0 + 11 * i, 3.0 + 8 * i] for i in range(8)]


def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body to ``url`` at once, one client thread each."""
    barrier = threading.Barrier(len(bodies))

    def one(body):
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(url, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_concurrent_prompts_share_decoder_calls(tiny_artifact, image, image_png):
    backend = CountingBackend(open_backend(tiny_artifact))
    reference = SamPredictor(tiny_artifact)
    reference.set_image(image)
    config = ServeConfig(batch_window_ms=1500, adaptive_window=False, max_batch=32)
    with serving(create_app(backend, config)) as base, httpx.Client(base_url=base, timeout=120) as client:
        image_id = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")}).json()["image_id"]
        bodies = [{"image_id": image_id, "points": [p], "labels": [1]} for p in POINTS]
        backend.batches.clear()
        answers = post_all(f"{base}/v1/masks", bodies)
    assert [a.status_code for a in answers] == [200] * len(POINTS)
    assert len(backend.batches) < len(POINTS) and sum(backend.batches) == len(POINTS)
    assert max(a.json()["batch_size"] for a in answers) > 1
    for point, answer in zip(POINTS, answers):  # each equals its prompt decoded alone
        masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
        body = answer.json()
        np.testing.assert_allclose(body["scores"], scores, rtol=0, atol=1e-5)
        for got, want in zip(body["masks"], masks):
            differ = np.count_nonzero(rle_to_mask(got["rle"]) != want)
            assert differ <= 2, f"{differ} pixels differ from one-by-one decoding at {point}"


def test_overload_answers_503_with_retry_after(tiny_artifact, image_png):
    config = ServeConfig(batch_window_ms=2000, adaptive_window=False, max_queue=2)
    with serving(create_app(tiny_artifact, config)) as base, httpx.Client(base_url=base, timeout=120) as client:
        image_id = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")}).json()["image_id"]
        answers = post_all(f"{base}/v1/masks", [{"image_id": image_id, "points": [p], "labels": [1]} for p in POINTS[:6]])
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 503, 503, 503, 503]
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1" and "try again" in answer.json()["detail"]
        assert client.get("/v1/health").json()["status"] == "ok"  # still serving afterwards
        assert client.post("/v1/masks", json={"image_id": image_id, "box": [1, 1, 30, 30]}).status_code == 200


def test_close_finishes_queued_prompts_then_refuses(tiny_artifact, image_png):
    service = SegmentService(tiny_artifact, ServeConfig(batch_window_ms=1000))
    future, _hit = service.embed(image_png)
    entry = future.result(120)
    prompts = [check_prompt([p], [1], None, None, True, 64) for p in POINTS[:3]]
    pending = [service.predict(entry, p) for p in prompts]
    service.close()
    assert all(f.done() for f in pending)
    assert [f.result().masks.shape for f in pending] == [(3, 70, 100)] * 3
    with pytest.raises(Overloaded, match="shutting down"):
        service.predict(entry, prompts[0])
    with pytest.raises(Overloaded, match="shutting down"):
        service.embed(b"other bytes")
