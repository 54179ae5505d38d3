"""``samexport serve --ray``: replicas share embeddings (an image uploaded to one is prompted on
another), and the Ray Serve deployment on a local Ray answers as ``SamPredictor`` does."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

from support import assert_point_answer_equals  # noqa: E402

from samexport.runtime.predictor import SamPredictor  # noqa: E402
from samexport.serve.ray_app import SharedEmbeddings  # noqa: E402
from samexport.serve.service import SegmentService, ServeConfig, check_prompt  # noqa: E402


@pytest.fixture(scope="module")
def image() -> np.ndarray:  # overrides serve/conftest.py's (the PNG upload follows it)
    return (np.random.default_rng(7).random((60, 80, 3)) * 255).astype(np.uint8)


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


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.slow
def test_ray_serve_encoder_and_decoder_deployments(tiny_artifact, image, image_png):
    """Local Ray (2 CPUs, a small object store), 2 encoder + 2 decoder replicas: an image
    embedded by an encoder replica is prompted on both decoder replicas (neither encodes), the
    answers equal ``SamPredictor``'s, concurrent prompts too, and automatic generation reuses the
    embedding."""
    ray = pytest.importorskip("ray", reason="the ray-serve extra is not installed")
    serve = pytest.importorskip("ray.serve", reason="the ray-serve extra (ray[serve]) is not installed")
    from samexport.amg import AutomaticMaskGenerator
    from samexport.serve.ray_app import APP_NAME, DECODER, ENCODER, STORE_NAME, application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, object_store_memory=128 << 20, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(str(tiny_artifact), ServeConfig(batch_window_ms=0), replicas=2, cpus_per_replica=0.25),
                  name=APP_NAME, route_prefix="/")
        reference = SamPredictor(tiny_artifact)
        reference.set_image(image)
        points = [[5.0 + 4.5 * i, 4.0 + 3 * i] for i in range(16)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            upload = client.post("/v1/images", files={"image": ("x.png", image_png, "image/png")})
            assert upload.status_code == 200, upload.text
            image_id = upload.json()["image_id"]
            for point in points:  # one by one: Ray Serve's router spreads them over both decoders
                assert_point_answer_equals(client, image_id, point, reference)
            with ThreadPoolExecutor(8) as pool:  # together: batched within each decoder replica
                answers = list(pool.map(lambda p: client.post(
                    "/v1/masks", json={"image_id": image_id, "points": [p], "labels": [1]}), points[:8]))
            for point, answer in zip(points, answers):
                assert answer.status_code == 200, answer.text
                _masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
                np.testing.assert_allclose(answer.json()["scores"], scores, rtol=0, atol=1e-5)
            options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
            generated = client.post("/v1/automatic", data={"image_id": image_id, **{k: str(v) for k, v in options.items()}})
            assert generated.status_code == 200, generated.text
            want = AutomaticMaskGenerator(reference, output_mode="uncompressed_rle", **options).generate(image)
            got = generated.json()["annotations"]
            assert len(got) == len(want) > 0
            assert [g["segmentation"] for g in got] == [w["segmentation"] for w in want]
            bad = client.post("/v1/masks", json={"image_id": image_id, "points": [[1, 2]], "labels": [7]})
            assert bad.status_code == 400 and "labels must be" in bad.json()["detail"]
            unknown = client.post("/v1/masks", json={"image_id": "0" * 64, "box": [1, 2, 3, 4]})
            assert unknown.status_code == 404 and "upload the image again" in unknown.json()["detail"]
            assert client.get("/").status_code == 200
            assert client.get("/v1/info").json()["ray"]["store"]["entries"] == 1

        def replicas(name: str) -> dict:
            handle, seen = serve.get_deployment_handle(name, app_name=APP_NAME), {}
            for _ in range(40):
                stats = handle.stats.remote().result()
                seen[stats["actor"]] = stats
            return seen

        decoders, encoders = replicas(DECODER), replicas(ENCODER)
        assert len(decoders) == 2 and len(encoders) == 2
        assert sum(e["encodes"] for e in encoders.values()) == 1  # the image was encoded once, in all
        assert all(d["encodes"] == 0 and d["prompts"] > 0 for d in decoders.values()), decoders
        assert sum(d["prompts"] for d in decoders.values()) == 24
        stats = ray.get(ray.get_actor(STORE_NAME).stats.remote())
        assert stats["entries"] == 1
    finally:
        serve.shutdown()
        ray.shutdown()
