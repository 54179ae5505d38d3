"""Graceful shutdown of a running ``samexport serve``: SIGTERM while prompts are queued answers
them (with the predictor's masks), then the process shuts down cleanly and stops listening."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
from PIL import Image  # noqa: E402

from samexport.amg.ops import rle_to_mask  # noqa: E402
from samexport.runtime.predictor import SamPredictor  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_answers_queued_prompts_then_exits(tiny_artifact):
    pixels = (np.random.default_rng(11).random((50, 70, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "samexport.cli", "serve", str(tiny_artifact), "--port", str(port),
               "--batch-window-ms", "4000", "--fixed-window"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "samexport serve did not start"
            time.sleep(0.2)
        upload = httpx.post(f"{base}/v1/images", files={"image": ("x.png", buffer.getvalue(), "image/png")}, timeout=120)
        image_id = upload.raise_for_status().json()["image_id"]
        points = [[4.0 + 15 * i, 3.0 + 11 * i] for i in range(4)]

        def ask(point):
            return httpx.post(f"{base}/v1/masks", json={"image_id": image_id, "points": [point], "labels": [1]},
                              timeout=120)

        with ThreadPoolExecutor(len(points)) as pool:
            answers = [pool.submit(ask, p) for p in points]
            while httpx.get(f"{base}/v1/health", timeout=5).json()["pending_prompts"] < len(points):
                assert time.monotonic() < deadline and not any(a.done() for a in answers)
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)  # all four wait in the 4 s window
            answers = [a.result() for a in answers]
        # uvicorn re-raises the SIGTERM it caught once it has shut down, so the status is the
        # signal's; its log says the shutdown (lifespan: the service closed) completed
        assert process.wait(120) in (0, -signal.SIGTERM)
        log = process.stdout.read()
        assert "Application shutdown complete" in log and "Traceback" not in log, log
        reference = SamPredictor(tiny_artifact)
        reference.set_image(pixels)
        for point, answer in zip(points, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json()["batch_size"] == len(points)
            masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
            np.testing.assert_allclose(answer.json()["scores"], scores, rtol=0, atol=1e-5)
            for got, want in zip(answer.json()["masks"], masks):
                assert np.count_nonzero(rle_to_mask(got["rle"]) != want) <= 2
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v1/health", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
