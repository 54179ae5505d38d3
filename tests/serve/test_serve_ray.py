"""``samexport serve --ray``: replicas share embeddings (an image uploaded to one is prompted on
another), and the Ray Serve deployment on a local Ray answers as ``SamPredictor`` does."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
from PIL import Image  # noqa: E402

from samexport.amg.ops import rle_to_mask  # noqa: E402
from samexport.runtime.predictor import SamPredictor  # noqa: E402
from samexport.serve.ray_app import SharedEmbeddings  # noqa: E402
from samexport.serve.service import SegmentService, ServeConfig, check_prompt  # noqa: E402


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(7).random((60, 80, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_replicas_share_embeddings(tiny_artifact, image, image_png):
    store = SharedEmbeddings(64 << 20)
    first, second = (SegmentService(tiny_artifact, ServeConfig(batch_window_ms=0), shared=store) for _ in range(2))
    try:
        entry = first.embed(image_png)[0].result(120)
        found = second.lookup(entry.image_id)  # never uploaded to the second
        assert second.encodes == 0 and store.stats()["hits"] == 1
        np.testing.assert_array_equal(found.embedding, entry.embedding)
        again, hit = second.embed(image_png)
        assert hit and again.result() is found and second.encodes == 0
        result = second.predict(found, check_prompt([[20.0, 30.0]], [1], None, None, True, 64)).result(120)
        reference = SamPredictor(tiny_artifact)
        reference.set_image(image)
        masks, scores, _ = reference.predict(np.array([[20.0, 30.0]]), np.array([1]))
        np.testing.assert_array_equal(result.scores, scores)
        np.testing.assert_array_equal(result.masks, masks)
    finally:
        first.close()
        second.close()


class LostStore:
    """A shared store whose actor has died: every call fails."""

    def get(self, key):
        raise ConnectionError("the store actor died")

    def put(self, entry):
        raise ConnectionError("the store actor died")


def test_a_lost_shared_store_is_a_miss(tiny_artifact, image_png):
    from samexport.serve.service import UnknownImageError

    service = SegmentService(tiny_artifact, ServeConfig(batch_window_ms=0), shared=LostStore())
    try:
        entry = service.embed(image_png)[0].result(120)  # encoded here, kept in its own cache
        assert service.encodes == 1 and service.lookup(entry.image_id) is entry
        with pytest.raises(UnknownImageError):
            service.lookup("0" * 64)
        info = service.info()["shared_store"]
        assert info["errors"] == 3 and "store actor died" in info["last_error"]
    finally:
        service.close()


@pytest.mark.ray
def test_ray_serve_answers_as_the_predictor(tiny_artifact, image, image_png):
    ray = pytest.importorskip("ray", reason="the ray-serve extra is not installed")
    serve = pytest.importorskip("ray.serve", reason="the ray-serve extra (ray[serve]) is not installed")
    from samexport.serve.ray_app import APP_NAME, STORE_NAME, application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(str(tiny_artifact), ServeConfig(batch_window_ms=0), replicas=2), name=APP_NAME,
                  route_prefix="/")
        reference = SamPredictor(tiny_artifact)
        reference.set_image(image)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            upload = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")})
            assert upload.status_code == 200, upload.text
            image_id = upload.json()["image_id"]
            for i in range(8):  # spread over both replicas by Ray Serve's router
                point = [5.0 + 9 * i, 4.0 + 6 * i]
                answer = client.post("/v1/masks", json={"image_id": image_id, "points": [point], "labels": [1]})
                assert answer.status_code == 200, answer.text
                masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
                np.testing.assert_array_equal(np.float32(answer.json()["scores"]), scores)
                for got, want in zip(answer.json()["masks"], masks):
                    np.testing.assert_array_equal(rle_to_mask(got["rle"]), want)
            bad = client.post("/v1/masks", json={"image_id": image_id, "points": [[1, 2]], "labels": [7]})
            assert bad.status_code == 400 and "labels must be" in bad.json()["detail"]
            assert client.get("/").status_code == 200
        stats = ray.get(ray.get_actor(STORE_NAME).stats.remote())
        assert stats["entries"] == 1
    finally:
        serve.shutdown()
        ray.shutdown()
