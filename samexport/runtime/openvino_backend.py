"""OpenVINO: the artifact's ONNX graphs (encoder, decoder and the decoder's two halves) compiled
for a CPU, an Intel GPU or NPU, or OpenVINO's AUTO device.

The inference precision is an explicit choice (:data:`samexport.constants.INFERENCE_PRECISIONS`):
OpenVINO would otherwise run an fp32 graph in bf16 by itself on CPUs with AVX512_BF16 or AMX.
``auto`` asks the device what it computes in (``OPTIMIZATION_CAPABILITIES``) and takes bf16, then
f16, else f32; an explicit ``bf16`` on a device without it is an error, not a silent f32.

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in samexport's cache folder, one subfolder
per graph named by the sha256 of its files, so a second start skips compilation and a changed
graph never meets the blob compiled from another one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.errors import SamExportError, require
from samexport.integrity import FileRecord
from samexport.utils import default_cache_dir, sha256_file

_LOG = logging.getLogger(__name__)
# OPTIMIZATION_CAPABILITIES entry -> our precision name, fastest first.
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
_HINT_TYPES = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def openvino_cache_root() -> Path:
    """Where compiled models are cached: ``<samexport cache>/openvino``."""

    return default_cache_dir() / "openvino"


def graph_cache_key(graph: Path, files: Mapping[str, FileRecord]) -> str:
    """A key naming ``graph``'s compiled blobs: the sha256 of the manifest records (name and
    sha256) of the graph and its external data files, so any change to them gives a new key.
    Without a record (a graph opened outside an artifact) the graph's files are hashed here."""
    names = sorted(n for n in files if n.startswith(graph.name))
    digest = hashlib.sha256()
    if graph.name in names:
        for name in names:
            digest.update(f"{name}:{files[name].sha256};".encode())
    else:
        for path in sorted(graph.parent.glob(graph.name + "*")):
            digest.update(f"{path.name}:{sha256_file(path)};".encode())
    return digest.hexdigest()[:32]


def device_capabilities(core, device: str) -> tuple[str, ...]:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32``, ``BF16``, ``FP16``, ``INT8``);
    empty where the device does not report them."""
    try:
        return tuple(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return ()


def resolve_precision(requested: str, capabilities: Sequence[str], device: str) -> str:
    """The precision to compile in: ``requested`` (f32 / bf16 / f16) if the device has it;
    ``auto``: bf16, then f16, else f32, from ``capabilities`` (the device's
    ``OPTIMIZATION_CAPABILITIES``). An explicit precision the device lacks is an error."""
    if requested not in C.INFERENCE_PRECISIONS:
        raise SamExportError(f"unknown inference precision {requested!r}; valid: {', '.join(C.INFERENCE_PRECISIONS)}")
    if requested == "auto":
        return next((name for name, cap in _CAPABILITY.items() if cap in capabilities), "f32")
    if requested in _CAPABILITY and _CAPABILITY[requested] not in capabilities:
        raise SamExportError(
            f"OpenVINO device {device} cannot compute in {requested} (its capabilities: "
            f"{', '.join(capabilities) or 'none reported'}); use precision=f32 or precision=auto"
        )
    return requested


class OpenVINOBackend:
    """Runs ``encoder.onnx`` and ``decoder.onnx`` (and the decoder halves, :class:`~samexport.
    runtime.backends.DecoderHalves`, when given) with OpenVINO.

    Attributes:
        name: ``openvino-<device>-<precision>``, e.g. ``openvino-cpu-bf16``.
        device: the OpenVINO device the graphs are compiled for.
        inference_precision: what the graphs compute in (``f32``, ``bf16`` or ``f16``).
    """

    thread_safe = False  # one infer request per graph: SamPredictor serialises calls

    def __init__(
        self, encoder_path: Path | str, decoder_path: Path | str | None, *, device: str = C.OPENVINO_DEFAULT_DEVICE,
        precision: str = C.OPENVINO_DEFAULT_PRECISION, threads: int | None = None,
        decoder_halves: tuple[Path | str, Path | str] | None = None, shares_mask_input: bool = True,
        files: Mapping[str, FileRecord] | None = None, cache: bool = True, contract: C.GraphContract = C.SAM_GRAPHS,
    ) -> None:
        """``files``: the manifest's file records (name -> sha256), which key the compile cache;
        ``cache=False`` compiles every time. ``shares_mask_input``: the decoder's mask input has
        its own ``num_masks`` axis (the manifest's decoder inputs say so). ``decoder_path=None``:
        the encoder only (:class:`~samexport.runtime.split_backend.SplitBackend` runs the decoder
        elsewhere); ``decode`` then raises. ``contract``: what the graphs take and give
        (:class:`~samexport.runtime.backends.GraphRunner`)."""
        ov = require("openvino", "openvino")
        halves = tuple(Path(p) for p in decoder_halves or ())
        paths = (Path(encoder_path), *(() if decoder_path is None else (Path(decoder_path),)), *halves)
        for path in paths:
            if not path.is_file():
                raise SamExportError(f"ONNX graph not found: {path}")
        self._core = ov.Core()
        devices = self._core.available_devices
        base = device.split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and device not in devices and base not in devices:
            raise SamExportError(f"OpenVINO has no device {device!r} here; available: {', '.join(devices) or 'none'}")
        self.device = device
        self.capabilities = device_capabilities(self._core, device)
        self.inference_precision = resolve_precision(precision, self.capabilities, device)
        self._config = {"INFERENCE_PRECISION_HINT": _HINT_TYPES[self.inference_precision]}
        if threads and base == "CPU":
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._files, self._cache = dict(files or {}), cache
        self.contract = contract
        self.encoder = self._compile(paths[0])
        self.decoder = None if decoder_path is None else self._compile(Path(decoder_path))
        self._halves_paths, self._halves = halves, None
        self.has_decoder_halves = bool(halves)
        self.shares_mask_input = shares_mask_input
        self.name = f"openvino-{device.lower()}-{self.inference_precision}"

    def _compile(self, path: Path) -> _CompiledGraph:
        config = dict(self._config)
        if self._cache:
            folder = openvino_cache_root() / graph_cache_key(path, self._files)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(folder)
            except OSError as exc:  # a read-only home: run, without the cache
                _LOG.info("OpenVINO compile cache off (%s): %s", folder, exc)
        try:
            compiled = self._core.compile_model(str(path), self.device, config)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SamExportError(f"OpenVINO could not compile {path} for {self.device}: {reason}") from None
        return _CompiledGraph(compiled)

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self.encoder.run(C.ENCODER_INPUTS, C.ENCODER_OUTPUTS, (image,))[0]

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        if self.decoder is None:
            raise SamExportError("this backend was opened without the decoder (decoder_path=None)")
        inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        masks, iou = self.decoder.run(C.DECODER_INPUTS, C.DECODER_OUTPUTS, inputs)
        return masks, iou

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.encoder.run(self.contract.encoder_inputs, self.contract.encoder_outputs, (image,)))

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        contract = self.contract
        return tuple(self.decoder.run(contract.decoder_inputs, contract.decoder_outputs, (*features, *prompts)))

    def _decoder_halves(self) -> tuple[_CompiledGraph, _CompiledGraph]:
        if not self.has_decoder_halves:
            raise SamExportError("this backend was opened without the decoder halves (decoder_halves=)")
        if self._halves is None:  # compiled by the first caller (calls are serialised)
            self._halves = tuple(self._compile(path) for path in self._halves_paths)
        return self._halves

    def decode_scores(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        scores, _ = self._decoder_halves()
        inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        iou, mask_tokens, image_tokens = scores.run(C.SCORES_INPUTS, C.SCORES_OUTPUTS, inputs)
        return iou, mask_tokens, image_tokens

    def decode_masks(self, mask_tokens, image_tokens):
        _, masks = self._decoder_halves()
        return masks.run(C.MASKS_INPUTS, C.MASKS_OUTPUTS, (mask_tokens, image_tokens))[0]


class _CompiledGraph:
    """A compiled model and its one infer request; outputs are copied out of OpenVINO's buffers
    (the next call reuses them)."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._outputs = {name: port for port in compiled.outputs for name in port.get_names()}

    def run(self, inputs: tuple[C.TensorSpec, ...], outputs: tuple[C.TensorSpec, ...], arrays) -> list[np.ndarray]:
        feed = {spec.name: np.ascontiguousarray(array) for spec, array in zip(inputs, arrays)}
        results = self.request.infer(feed, share_inputs=True, share_outputs=False)
        return [results[self._outputs[spec.name]] for spec in outputs]
