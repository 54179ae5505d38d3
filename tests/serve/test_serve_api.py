"""``samexport serve``'s API against ``SamPredictor`` on the same artifact (FastAPI's TestClient,
no socket): masks and scores for every prompt type, the embedding cache, automatic mask
generation, and a 4xx with a one-line reason for every bad input."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="the serve extra (python-multipart) is not installed")
from fastapi.testclient import TestClient
from PIL import Image

from samexport.amg import AutomaticMaskGenerator
from samexport.amg.ops import rle_to_mask
from samexport.runtime.predictor import SamPredictor
from samexport.serve.app import create_app
from samexport.serve.service import ServeConfig


def png_bytes(height: int = 90, width: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def upload(client, data: bytes):
    return client.post("/v1/images", files={"image": ("x.png", data, "image/png")})


@pytest.fixture(scope="module")
def image() -> bytes:
    return png_bytes()


@pytest.fixture(scope="module")
def reference(tiny_artifact, image) -> SamPredictor:
    predictor = SamPredictor(tiny_artifact)
    predictor.set_image(decoded(image))
    return predictor


@pytest.fixture(scope="module")
def client(tiny_artifact):
    with TestClient(create_app(tiny_artifact, ServeConfig(batch_window_ms=0))) as client:
        yield client


@pytest.fixture(scope="module")
def image_id(client, image) -> str:
    return upload(client, image).json()["image_id"]


def low_res_b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode()


PROMPTS = {
    "one point": dict(points=[[30.0, 40.0]], labels=[1]),
    "fg and bg points": dict(points=[[30.0, 40.0], [100.5, 70.25]], labels=[1, 0]),
    "box": dict(box=[10.0, 12.0, 80.0, 70.0]),
    "box and point": dict(points=[[50.0, 40.0]], labels=[1], box=[10.0, 12.0, 80.0, 70.0]),
    "one mask": dict(points=[[30.0, 40.0]], labels=[1], multimask=False),
    "mask input": dict(points=[[30.0, 40.0]], labels=[1], mask_input=True),
    "mask input only": dict(mask_input=True, multimask=False),
}


@pytest.mark.parametrize("name", PROMPTS)
def test_masks_equal_predictor(client, image_id, reference, name):
    prompt = dict(PROMPTS[name])
    official = {}
    if prompt.get("points"):
        official.update(point_coords=np.array(prompt["points"]), point_labels=np.array(prompt["labels"]))
    if prompt.get("box"):
        official["box"] = np.array(prompt["box"])
    if prompt.pop("mask_input", False):  # the low-res logits of an earlier prediction, fed back
        _, scores, logits = reference.predict(np.array([[60.0, 30.0]]), np.array([1]))
        official["mask_input"] = logits[np.argmax(scores)][None]
        prompt["mask_input"] = low_res_b64(official["mask_input"])
    multimask = prompt.get("multimask", True)
    masks, scores, low_res = reference.predict(**official, multimask_output=multimask)

    answer = client.post("/v1/masks", json={"image_id": image_id, "return_low_res": True, **prompt})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["masks"]) == len(masks) == (3 if multimask else 1)
    np.testing.assert_array_equal(np.float32(body["scores"]), scores)
    for got, want, score in zip(body["masks"], masks, scores):
        np.testing.assert_array_equal(rle_to_mask(got["rle"]), want)
        assert got["area"] == int(want.sum()) and got["score"] == float(score)
    got_low = [np.frombuffer(base64.b64decode(b), "<f4").reshape(256, 256) for b in body["low_res"]]
    np.testing.assert_array_equal(np.stack(got_low), low_res)
    assert set(body["timings_ms"]) == {"encode", "queue", "decode", "output", "total"}


def test_png_output_and_inline_image(client, image, reference):
    masks, _scores, _ = reference.predict(np.array([[30.0, 40.0]]), np.array([1]))
    body = client.post("/v1/masks", json={
        "image": base64.b64encode(image).decode(), "points": [[30, 40]], "labels": [1], "output": "png",
    }).json()
    assert body["image_id"] == hashlib.sha256(image).hexdigest() and body["cached"] is True
    for got, want in zip(body["masks"], masks):
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["png"]))))
        np.testing.assert_array_equal(png == 255, want)
        assert set(np.unique(png)) <= {0, 255}


def test_cache_hit_and_ids(tiny_artifact, image):
    other = png_bytes(seed=1)
    with TestClient(create_app(tiny_artifact, ServeConfig(cache_bytes=4 << 20))) as client:  # room for one
        first, again = upload(client, image).json(), upload(client, image).json()
        assert first["image_id"] == again["image_id"] == hashlib.sha256(image).hexdigest()
        assert (first["cached"], again["cached"]) == (False, True)
        assert client.get("/v1/info").json()["encodes"] == 1
        second = upload(client, other).json()  # evicts the first (budget: one embedding)
        assert second["image_id"] != first["image_id"] and second["cached"] is False
        prompt = {"points": [[30, 40]], "labels": [1]}
        gone = client.post("/v1/masks", json={"image_id": first["image_id"], **prompt})
        assert gone.status_code == 404 and "upload the image again" in gone.json()["detail"]
        # the second image's masks come from its own embedding, not the first's
        predictor = SamPredictor(tiny_artifact)
        predictor.set_image(decoded(other))
        _masks, scores, _ = predictor.predict(np.array([[30.0, 40.0]]), np.array([1]))
        body = client.post("/v1/masks", json={"image_id": second["image_id"], **prompt}).json()
        np.testing.assert_array_equal(np.float32(body["scores"]), scores)
        info = client.get("/v1/info").json()
        assert info["encodes"] == 2 and info["cache"]["evictions"] == 1 and info["cache"]["entries"] == 1


def test_automatic_equals_generator(client, tiny_artifact, image):
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    want = AutomaticMaskGenerator(SamPredictor(tiny_artifact), output_mode="uncompressed_rle", **options).generate(
        decoded(image)
    )
    answer = client.post("/v1/automatic", files={"image": ("x.png", image, "image/png")},
                         data={k: str(v) for k, v in options.items()})
    assert answer.status_code == 200, answer.text
    got = answer.json()["annotations"]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["segmentation"] == w["segmentation"] and g["bbox"] == w["bbox"]
        assert g["predicted_iou"] == pytest.approx(w["predicted_iou"], abs=1e-6)


class CountingEncoder:
    """A backend that counts encoder runs, passing everything through."""

    def __init__(self, inner) -> None:
        self.inner, self.encodes = inner, 0

    def encode(self, *args, **kwargs):
        self.encodes += 1
        return self.inner.encode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_automatic_reuses_the_cached_embedding(tiny_artifact, image):
    from samexport.runtime.backends import open_backend

    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    form = {k: str(v) for k, v in options.items()}
    want = AutomaticMaskGenerator(SamPredictor(tiny_artifact), output_mode="uncompressed_rle", **options).generate(
        decoded(image)
    )
    backend = CountingEncoder(open_backend(tiny_artifact))
    with TestClient(create_app(backend, ServeConfig(batch_window_ms=0))) as client:
        image_id = upload(client, image).json()["image_id"]
        assert backend.encodes == 1
        by_id = client.post("/v1/automatic", data={"image_id": image_id, **form})
        by_upload = client.post("/v1/automatic", files={"image": ("x.png", image, "image/png")}, data=form)
        prompt = client.post("/v1/masks", json={"image_id": image_id, "points": [[30.0, 40.0]], "labels": [1]})
        assert prompt.status_code == 200
        assert backend.encodes == 1  # upload, two generations and a prompt: one encoder run
        for answer in (by_id, by_upload):
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["cached"] and body["image_id"] == image_id and body["timings_ms"]["encode"] == 0
            got = body["annotations"]
            assert len(got) == len(want) > 0
            for g, w in zip(got, want):
                assert g["segmentation"] == w["segmentation"] and g["bbox"] == w["bbox"]
                assert g["predicted_iou"] == pytest.approx(w["predicted_iou"], abs=1e-6)
                assert g["stability_score"] == pytest.approx(w["stability_score"], abs=1e-6)
        neither = client.post("/v1/automatic", data=form)
        both = client.post("/v1/automatic", files={"image": ("x.png", image, "image/png")},
                           data={"image_id": image_id, **form})
        unknown = client.post("/v1/automatic", data={"image_id": "0" * 64, **form})
        for answer in (neither, both):
            assert answer.status_code == 400 and "one of them" in answer.json()["detail"]
        assert unknown.status_code == 404 and "upload the image again" in unknown.json()["detail"]


def test_health_info_docs_page(client, tiny_artifact):
    from samexport.runtime.backends import describe_auto

    assert client.get("/v1/health").json()["status"] == "ok"
    info = client.get("/v1/info").json()
    assert info["variant"] == "tiny" and info["manifest"]["variant"] == "tiny"
    assert info["backend"] == describe_auto(tiny_artifact)  # what auto opened here
    assert client.get("/docs").status_code == 200
    assert "/v1/masks" in client.get("/openapi.json").json()["paths"]
    page, script = client.get("/"), client.get("/page.js")
    assert page.status_code == script.status_code == 200
    assert "page.js" in page.text and "v1/masks" in script.text
    for text in (page.text, script.text):  # offline: nothing fetched from elsewhere
        assert "http://" not in text and "https://" not in text


BAD = {
    "no image": ({"points": [[1, 2]], "labels": [1]}, 400, "give image_id"),
    "image and id": ({"image_id": "0" * 64, "image": "AAAA", "box": [0, 0, 1, 1]}, 400, "one of them"),
    "unknown id": ({"image_id": "0" * 64, "box": [0, 0, 1, 1]}, 404, "unknown image id"),
    "id not hex": ({"image_id": "../../etc/passwd", "box": [0, 0, 1, 1]}, 422, "image_id"),
    "path as image": ({"image": base64.b64encode(b"/etc/hostname").decode(), "box": [0, 0, 1, 1]}, 400, "not an image"),
    "bad base64": ({"image": "not base64!", "box": [0, 0, 1, 1]}, 400, "base64"),
    "label 2": ({"points": [[1, 2]], "labels": [2]}, 400, "labels must be 1"),
    "labels missing": ({"points": [[1, 2]]}, 400, "together"),
    "labels count": ({"points": [[1, 2], [3, 4]], "labels": [1]}, 400, "one entry per point"),
    "point of 3": ({"points": [[1, 2, 3]], "labels": [1]}, 400, "[x, y] pairs"),
    "no prompt": ({}, 400, "give points"),
    "box of 2": ({"box": [1, 2]}, 400, "box must be 4"),
    "box inverted": ({"box": [5, 5, 1, 1]}, 400, "x0 <= x1"),
    "mask wrong size": ({"mask_input": base64.b64encode(b"\0" * 100).decode()}, 400, "mask_input must be"),
    "too many points": ({"points": [[1, 2]] * 65, "labels": [1] * 65}, 400, "at most 64"),
    "unknown field": ({"box": [0, 0, 1, 1], "path": "/etc"}, 422, "path"),
    "wrong type": ({"box": [0, 0, 1, 1], "multimask": "perhaps"}, 422, "multimask"),
    "bad output": ({"box": [0, 0, 1, 1], "output": "jpeg"}, 422, "output"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_masks_request(client, image_id, name):
    body, status, reason = BAD[name]
    if "image" not in body and "image_id" not in body and name != "no image":
        body = {"image_id": image_id, **body}
    answer = client.post("/v1/masks", json=body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail


def test_bad_requests_of_other_kinds(client, image_id):
    nan = b'{"image_id": "%s", "points": [[NaN, 1]], "labels": [1]}' % image_id.encode()
    answers = {
        "nan": client.post("/v1/masks", content=nan, headers={"content-type": "application/json"}),
        "not json": client.post("/v1/masks", content=b"{", headers={"content-type": "application/json"}),
        "not an image": client.post("/v1/images", files={"image": ("x.png", b"hello", "image/png")}),
        "empty upload": client.post("/v1/images", files={"image": ("x.png", b"", "image/png")}),
        "no file": client.post("/v1/images"),
        "amg grid": client.post("/v1/automatic", files={"image": ("x.png", png_bytes(), "image/png")},
                                data={"points_per_side": "1000"}),
        "amg thresh": client.post("/v1/automatic", files={"image": ("x.png", png_bytes(), "image/png")},
                                  data={"pred_iou_thresh": "2"}),
    }
    for name, answer in answers.items():
        assert 400 <= answer.status_code < 500, (name, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and detail, name


def test_size_limits(tiny_artifact, image):
    config = ServeConfig(max_request_bytes=64 << 10, max_image_pixels=5000)
    with TestClient(create_app(tiny_artifact, config)) as client:
        big = client.post("/v1/images", files={"image": ("x.png", b"\0" * (100 << 10), "image/png")})
        assert big.status_code == 413 and "too large" in big.json()["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"\0" * (10 << 10)

        chunked = client.post("/v1/masks", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        pixels = upload(client, image)  # 90 x 120 = 10800 pixels, over 5000
        assert pixels.status_code == 413 and "10800 pixels" in pixels.json()["detail"]


def test_cli_refuses_before_serving(tmp_path):
    from typer.testing import CliRunner

    from samexport.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", str(tmp_path)])
    assert missing.exit_code == 1 and "not an artifact directory" in missing.output
    replicas = runner.invoke(app, ["serve", str(tmp_path), "--replicas", "2"])
    assert replicas.exit_code == 1 and "need --ray" in replicas.output
    assert "--cache-mb" in runner.invoke(app, ["serve", "--help"], terminal_width=200).output
