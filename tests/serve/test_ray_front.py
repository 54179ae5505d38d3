"""The Ray Serve front (``RemoteService`` under the FastAPI application) without Ray: the encoder
and decoder replicas run in process behind stand-in deployment handles and share one in-process
store. An image uploaded through the front is encoded by the encoder replica only and prompted
on the decoder replica with ``SamPredictor``'s answers; errors raised in a replica keep their
HTTP status; the front bounds what it has in flight (503) and refuses new work once closed."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="the serve extra (python-multipart) is not installed")
from fastapi.testclient import TestClient
from PIL import Image
from support import assert_point_answer_equals

from samexport.runtime.predictor import SamPredictor
from samexport.serve.app import create_app
from samexport.serve.batcher import Overloaded
from samexport.serve.cache import ImageRef
from samexport.serve.ray_app import DecoderReplica, EncoderReplica, RemoteService, SharedEmbeddings
from samexport.serve.service import SegmentService, ServeConfig, check_prompt


class Response:
    """What ``handle.method.remote(...)`` gives: ``result()`` blocks, ``await`` waits."""

    def __init__(self, method, args) -> None:
        self.method, self.args = method, args

    def result(self):
        return asyncio.run(self.method(*self.args))

    def __await__(self):
        return self.method(*self.args).__await__()


class Handle:
    """A deployment handle over one in-process replica."""

    def __init__(self, replica) -> None:
        self.replica = replica

    def __getattr__(self, name):
        method = getattr(self.replica, name)
        return type("Method", (), {"remote": staticmethod(lambda *args: Response(method, args))})


def replica(kind, artifact, config, store):
    made = kind.__new__(kind)  # as Ray would build it, with the store in process instead of an actor
    made.service = SegmentService(artifact, config, shared=store)
    return made


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(9).random((64, 96, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def front(tiny_artifact):
    config = ServeConfig(batch_window_ms=0, max_queue=1)
    store = SharedEmbeddings(64 << 20)
    encoder = replica(EncoderReplica, tiny_artifact, config, store)
    decoder = replica(DecoderReplica, tiny_artifact, config, store)
    service = RemoteService(config, Handle(encoder), Handle(decoder), store)
    yield service, encoder, decoder
    service.close(5)
    encoder.service.close()
    decoder.service.close()


def test_front_over_encoder_and_decoder_replicas(tiny_artifact, front, image, image_png):
    service, encoder, decoder = front
    reference = SamPredictor(tiny_artifact)
    reference.set_image(image)
    with TestClient(create_app(service=service)) as client:
        upload = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")})
        assert upload.status_code == 200 and not upload.json()["cached"]
        image_id = upload.json()["image_id"]
        for point in ([10.0, 20.0], [70.0, 5.0]):
            assert_point_answer_equals(client, image_id, point, reference)
        assert encoder.service.encodes == 1 and decoder.service.encodes == 0  # found in the store
        again = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")})
        assert again.json()["cached"] and encoder.service.encodes == 1
        # raised in the decoder replica, answered with its own status
        big = client.post("/v1/automatic", data={"image_id": image_id, "points_per_side": "1000"})
        assert big.status_code == 400 and "points_per_side" in big.json()["detail"]
        service._remember(ImageRef("f" * 64, (10, 10), (1024, 1024), 0.0))  # known here, in no cache
        evicted = client.post("/v1/masks", json={"image_id": "f" * 64, "box": [1, 1, 5, 5]})
        assert evicted.status_code == 404 and "upload the image again" in evicted.json()["detail"]
        unknown = client.post("/v1/masks", json={"image_id": "0" * 64, "box": [1, 1, 5, 5]})
        assert unknown.status_code == 404
        info = client.get("/v1/info").json()
        assert info["ray"]["store"]["entries"] == 1 and info["variant"] == "tiny"


def test_front_bounds_what_is_in_flight_and_closes(front, image_png):
    service, _, _ = front
    ref = service.embed(image_png)[0].result()
    prompt = check_prompt([[5.0, 5.0]], [1], None, None, True, 64)
    first = service.predict(ref, prompt)  # max_queue=1: one prompt in flight
    with pytest.raises(Overloaded, match="try again"):
        service.predict(ref, prompt)
    assert service.pending == 1
    result = asyncio.run(first)
    assert result.masks.shape == (3, 64, 96) and service.pending == 0
    service.close(5)
    with pytest.raises(Overloaded, match="shutting down"):
        service.predict(ref, prompt)
    with pytest.raises(Overloaded, match="shutting down"):
        service.embed(image_png)
