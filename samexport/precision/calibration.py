"""INT8 calibration: the images (checked at the build's door, then read as every samexport command
reads images), the activation ranges measured on them, and the JSON cache that keeps those ranges.

Calibration runs one image at a time through an ONNX Runtime session of the graph extended with
one ``ReduceMax(Abs(x))`` scalar output per calibrated tensor, so memory stays at one inference
(see :mod:`samexport.precision.int8` for the figures). The cache file is written atomically; what
it is keyed by (the graph, the images, the recipe) is :func:`samexport.precision.int8.cache_key`.
The module imports onnx and ONNX Runtime only to calibrate, so the build checks its images and
cache at the door without them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.image_sources import image_files
from samexport.imageio import read_image
from samexport.staging import write_atomically
from samexport.transforms import preprocess

log = logging.getLogger(__name__)


def list_images(calib_dir: Path | str, limit: int | None = None) -> list[Path]:
    """Image files of ``calib_dir`` (not recursive), sorted by name; raises if there are none."""
    return image_files(calib_dir, what="calibration")[:limit]


def check_calibration_images(calib_dir: Path | str, limit: int | None = None) -> list[Path]:
    """:func:`list_images`, each image decoded in full once, before any export work.

    A file ``samexport.imageio.read_image`` (what calibration reads with) refuses (truncated,
    not an image, too large, a float image outside 0..1) is refused by name rather than skipped: the calibration ranges, and their cache key, are those of the
    images the user chose, and a skipped file would silently calibrate on fewer.

    Raises:
        SamExportError: no images, or an image that cannot be read (the message names it).
    """

    paths = list_images(calib_dir, limit)
    for path in paths:
        try:
            read_image(path)  # what encoder_feeds reads: the same decoder, the same refusals
        except SamExportError as exc:
            raise SamExportError(
                f"calibration image {path} cannot be read ({exc}); fix or remove it from {calib_dir}"
            ) from None
    return paths


def encoder_feeds(
    paths: Iterable[Path], preprocess: Callable[[np.ndarray], np.ndarray] = preprocess
) -> Iterator[dict[str, np.ndarray]]:
    """Encoder inputs, one image at a time: image file (read by ``samexport.imageio.read_image``,
    as every samexport command reads images) -> ``preprocess``, the model family's (SAM's
    ``samexport.transforms.preprocess`` by default; SAM 2.1's ``preprocess_sam2``)."""

    for path in paths:
        yield {C.IMAGE.name: preprocess(read_image(path))}


def collect_ranges(model_path: Path | str, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max ``|x|`` of each tensor over all ``feeds``, running the model one feed at a time.

    The graph gets one scalar ``ReduceMax(Abs(x))`` output per tensor, so only scalars leave
    the session and memory stays at one inference.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    outputs = []
    for i, name in enumerate(tensors):
        absolute, peak = f"__calib_abs_{i}", f"__calib_absmax_{i}"
        model.graph.node.extend([
            helper.make_node("Abs", [name], [absolute], name=absolute),
            helper.make_node("ReduceMax", [absolute], [peak], name=peak, keepdims=0),
        ])
        model.graph.output.append(helper.make_tensor_value_info(peak, TensorProto.FLOAT, []))
        outputs.append(peak)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # return each image's activations to the system
    with tempfile.TemporaryDirectory(prefix="samexport-calib-") as tmp:
        # From a file, so no serialized copy of the weights is held next to the session's.
        augmented = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(augmented), save_as_external_data=True, location="augmented.onnx.data")
        del model
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    peaks = np.zeros(len(tensors), dtype=np.float32)
    count = 0
    for feed in feeds:
        values = session.run(outputs, feed)
        peaks = np.maximum(peaks, np.asarray(values, dtype=np.float32))
        count += 1
    if count == 0:
        raise SamExportError("calibration got no inputs")
    return {name: float(v) for name, v in zip(tensors, peaks)}


class MalformedCacheError(SamExportError):
    """A calibration cache file that is not one (not JSON, or not a ``key`` and ``ranges``)."""


def check_calibration_cache(cache_path: Path | str, *, replace_malformed: bool = False) -> None:
    """Check, before any export work, that the calibration cache can be read and then written: not
    a folder, its folder writable (or creatable), and, when it exists, readable and a cache.

    Args:
        replace_malformed: the file is samexport's own (the build's cache in samexport's cache
            folder), so a malformed one is reported as a warning and replaced by the calibration;
            otherwise (a path the caller chose) it is an error.

    Raises:
        SamExportError: the path cannot be used; a malformed file unless ``replace_malformed``.
    """
    cache_path = Path(cache_path)
    if cache_path.is_dir():
        raise SamExportError(f"calibration cache {cache_path} is a folder; remove it or choose another cache path")
    folder = cache_path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SamExportError(f"calibration cache {cache_path} cannot be written: {folder} is not a writable folder")
    try:
        load_cached_ranges(cache_path, {})
    except MalformedCacheError as exc:
        if not replace_malformed:
            raise
        log.warning("%s; samexport wrote it, so it is recalibrated and replaced", exc)


def load_cached_ranges(cache_path: Path, key: dict) -> dict[str, float] | None:
    """The cached ranges when ``cache_path`` holds ranges for exactly ``key``, else None (also
    when there is no cache file yet).

    Raises:
        MalformedCacheError: the file is not a calibration cache (not JSON, or not an object with
            a ``key`` and finite numeric ``ranges``); the message names it.
        SamExportError: the file cannot be read.
    """
    try:
        text = cache_path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SamExportError(f"cannot read calibration cache {cache_path}: {exc}") from None
    malformed = f"calibration cache {cache_path} is malformed"
    try:
        cached = json.loads(text)
    except ValueError as exc:
        raise MalformedCacheError(f"{malformed} (not valid JSON: {exc}); delete it to recalibrate") from None
    ranges = cached.get("ranges") if isinstance(cached, dict) else None
    if not isinstance(ranges, dict) or "key" not in cached or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in ranges.values()
    ):
        raise MalformedCacheError(
            f"{malformed} (expected an object with 'key' and numeric 'ranges', got "
            f"{type(cached).__name__}); delete it to recalibrate"
        )
    if cached["key"] != json.loads(json.dumps(key)):
        return None
    return {k: float(v) for k, v in ranges.items()}


def save_ranges(cache_path: Path, key: dict, ranges: dict[str, float]) -> None:
    """Write the cache atomically (:func:`samexport.staging.write_atomically`)."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache_path, json.dumps({"key": key, "ranges": ranges}, indent=1))
