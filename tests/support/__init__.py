"""Helpers shared by test files in several folders (fixtures live in the ``conftest.py`` files).

``tests/`` is on ``sys.path`` (pyproject's ``pythonpath``), so test files import these as
``from support import needs_rtx``. Beside this module: ``support.graphs`` (ONNX graph structure:
tensor types, attention products, FP16 islands, INT8 Q/DQ), ``support.official`` (stand-ins and
comparisons for tests against the official ``segment_anything``) and ``support.trt_bindings``
(NVIDIA's TensorRT Python bindings per release, downloaded from the package index).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samexport import constants as C
from samexport.cli import app

# Why tests against the official SAM 2.1 package skip where it is absent.
SAM2_OFFICIAL_MISSING = (
    "the official SAM 2.1 package is not installed: "
    "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 (see .ci/run)"
)

# The opset the attention tests export each attention mode's encoder at (``tiny_attention_encoders``
# in ``tests/conftest.py``); onnx-attention needs the ONNX Attention op of opset 23.
ATTENTION_OPSETS = {"plain": 18, "fused-pattern": 18, "onnx-attention": 23, "plugin": 18}

HAVE_RTX = any(importlib.util.find_spec(m) is not None for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))


needs_rtx = pytest.mark.skipif(
    not HAVE_RTX,
    reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu12-libs tensorrt-rtx-cu12-bindings)",
)


def run_engine(plan: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a plan once with torch CUDA buffers (test helper, not the runtime backend)."""
    import tensorrt as trt
    import torch

    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    buffers = {}
    for name, value in feeds.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(value)).cuda()
        context.set_input_shape(name, tuple(value.shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {name: t.cpu().numpy() for name, t in buffers.items() if name not in feeds}


SAMPLE_PHOTOS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle")


HELD_OUT_PHOTO = "astronaut"  # never used for calibration


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as HxWx3 uint8 RGB."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs
    return np.ascontiguousarray(image[..., :3])


def write_calibration_folder(folder: Path, names=SAMPLE_PHOTOS) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(sample_photo(name)).save(folder / f"{name}.png")
    return folder


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of thresholded mask logits, per mask: ``BxKxHxW`` -> ``BxK``; empty vs empty is 1."""
    a, b = a > C.MASK_THRESHOLD, b > C.MASK_THRESHOLD
    union = (a | b).sum(axis=(-1, -2))
    return np.where(union == 0, 1.0, (a & b).sum(axis=(-1, -2)) / np.maximum(union, 1))


def decoder_feed(embedding: np.ndarray, *, prompts: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """One foreground click (+ the padding point) per prompt, spread over the 1024 frame."""
    rng = np.random.default_rng(seed)
    coords = np.zeros((prompts, 2, 2), np.float32)
    coords[:, 0] = rng.uniform(64, 960, size=(prompts, 2))
    labels = np.tile(np.array([C.LABEL_FOREGROUND, C.LABEL_PADDING], np.float32), (prompts, 1))
    return {
        C.IMAGE_EMBEDDINGS.name: embedding,
        C.POINT_COORDS.name: coords,
        C.POINT_LABELS.name: labels,
        C.MASK_INPUT.name: np.zeros((prompts, 1, C.LOW_RES_MASK_SIZE, C.LOW_RES_MASK_SIZE), np.float32),
        C.HAS_MASK_INPUT.name: np.zeros(prompts, np.float32),
    }


runner = CliRunner()


HEAVY = ("torch", "onnxscript", "onnx", "samexport.export")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class Perturbed:
    """A backend whose embedding has one element moved by ``rel`` of the embedding's max |value|;
    through the graph contract (``run_encoder``), the last feature: SAM's embedding, SAM 2.1's
    second high-resolution map."""

    def __init__(self, inner, rel: float) -> None:
        self.inner, self.rel = inner, rel
        self.name = f"{inner.name}+perturbed({rel:g})"
        self.shares_mask_input = inner.shares_mask_input
        self.contract = inner.contract

    def run_encoder(self, image):
        *features, last = self.inner.run_encoder(image)
        last = np.array(last, copy=True)
        last.flat[last.size // 3] += self.rel * np.abs(last).max()
        return (*features, last)

    def run_decoder(self, features, *prompts):
        return self.inner.run_decoder(features, *prompts)

    def encode(self, image):
        embedding = np.array(self.inner.encode(image), copy=True)
        embedding.flat[embedding.size // 3] += self.rel * np.abs(embedding).max()
        return embedding

    def decode(self, *args):
        return self.inner.decode(*args)


def onnxruntime_runner(rel: float = 0.0):
    """A runner for the seam: the artifact's graphs on ONNX Runtime CPU (perturbed by ``rel``)."""

    def open_runner(folder: Path, manifest):
        from samexport.runtime.backends import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device="cpu", contract=manifest.contract)
        assert set(manifest.engines) == {"encoder", "decoder"}  # it is handed the candidate plans
        assert all((folder / record.plan).is_file() for record in manifest.engines.values())
        return Perturbed(backend, rel) if rel else backend

    return open_runner


REPO = Path(__file__).resolve().parents[2]


DEVICE_DISTRIBUTIONS = ("polygraphy", "tensorrt-rtx-cu12-bindings", "tensorrt-rtx-cu12-libs")


NOT_ON_THE_DEVICE = ("torch", "onnx", "onnxscript", "triton")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependency_closure(roots) -> set[str]:
    from packaging.requirements import Requirement

    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if _normalise(name) in seen:
            continue
        seen.add(_normalise(name))
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return seen


DEVICE_SCRIPT = """
import json, sys
from samexport.cli import app
status = 2
try:
    status = app(sys.argv[1:], standalone_mode=False) or 0  # the exit code, without sys.exit
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {not_on_device!r})
    print("IMPORTED-HEAVY " + json.dumps(heavy))
sys.exit(status)
"""


def run_on_device(python: Path, *args: str) -> subprocess.CompletedProcess:
    script = DEVICE_SCRIPT.format(not_on_device=set(NOT_ON_THE_DEVICE))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)


@contextlib.contextmanager
def serving(app):
    """``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def another_artifact(artifact: Path, folder: Path) -> Path:
    """A copy of ``artifact``'s files in ``folder`` whose manifest differs by one byte: another
    build, as far as anything keyed by the manifest's hash can tell."""
    folder.mkdir()
    for entry in artifact.iterdir():
        if entry.is_file():
            (folder / entry.name).write_bytes(entry.read_bytes())
    with open(folder / "manifest.json", "a") as f:
        f.write("\n")
    return folder


def prompt_suite(height: int, width: int, rng: np.random.Generator, *, ten_points: bool = True) -> list[dict]:
    """``SamPredictor.predict`` keyword sets in a ``height`` x ``width`` image: a click, three
    points for one mask, ten points (``ten_points``), a box, a box with points, a click with a
    mask input, and logits out. Drawn from ``rng`` in that order."""

    def points(n):
        return rng.uniform(0, [width, height], (n, 2)).astype(np.float32), rng.integers(0, 2, n)

    def box():
        xs, ys = np.sort(rng.uniform(0, width, 2)), np.sort(rng.uniform(0, height, 2))
        return np.array([xs[0], ys[0], xs[1], ys[1]], np.float32)

    p1, p3 = points(1), points(3)
    many = [dict(point_coords=p10[0], point_labels=p10[1]) for p10 in [points(10)] if ten_points]
    return [
        dict(point_coords=p1[0], point_labels=np.ones(1)),
        dict(point_coords=p3[0], point_labels=p3[1], multimask_output=False),
        *many,
        dict(box=box()),
        dict(box=box(), point_coords=p3[0], point_labels=p3[1], multimask_output=False),
        dict(point_coords=p1[0], point_labels=np.ones(1),
             mask_input=(rng.standard_normal((1, 256, 256)) * 3).astype(np.float32)),
        dict(point_coords=p3[0], point_labels=p3[1], return_logits=True),
    ]


def assert_point_answer_equals(client, image_id: str, point: list[float], reference) -> None:
    """``POST /v1/masks`` with one foreground point on ``image_id`` answers what ``reference``
    (a ``SamPredictor`` with the same image set) predicts: scores and masks (RLE) equal."""
    from samexport.amg.ops import rle_to_mask

    answer = client.post("/v1/masks", json={"image_id": image_id, "points": [point], "labels": [1]})
    assert answer.status_code == 200, answer.text
    masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
    np.testing.assert_array_equal(np.float32(answer.json()["scores"]), scores)
    for got, want in zip(answer.json()["masks"], masks):
        np.testing.assert_array_equal(rle_to_mask(got["rle"]), want)
