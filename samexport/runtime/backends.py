"""Inference backends behind ``SamPredictor``: the protocols, ONNX Runtime, and opening an
artifact's backend (TensorRT, OpenVINO, their split; the torch reference is in
:mod:`samexport.runtime.torch_backend`).

A backend runs the two graphs and nothing else: ``encode`` takes the preprocessed 1x3x1024x1024
image, ``decode`` a batch of prompts already in the 1024 frame. Pre- and postprocessing live in
``samexport.transforms`` and are shared by every backend.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Protocol

import numpy as np

from samexport import constants as C
from samexport.artifacts import read_manifest, verify_artifact
from samexport.errors import SamExportError
from samexport.runtime.openvino_backend import OpenVINOBackend
from samexport.runtime.split_backend import SplitBackend
from samexport.runtime.tensorrt_backend import TensorRTBackend, why_engines_cannot_run
from samexport.utils import sha256_file

BackendName = str  # one of constants.ARTIFACT_BACKENDS


class Backend(Protocol):
    name: str
    # ``decode`` takes one mask input (M = 1) for a batch of B prompts (graphs with the
    # ``C.NUM_MASKS`` axis). Optional: a backend without the attribute gets M = B.
    shares_mask_input: bool

    def encode(self, image: np.ndarray) -> np.ndarray:
        """image 1x3x1024x1024 float32 (normalised, padded) -> embedding 1x256x64x64 float32."""

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prompts in the 1024 frame (shapes in ``constants.DECODER_INPUTS``) ->
        (low_res_masks Bx4x256x256, iou_predictions Bx4), float32 (the official order)."""


class GraphRunner(Protocol):
    """The backend seam every model family uses: the two graphs run by their
    :class:`~samexport.constants.GraphContract` (``contract``), the per-image features kept by
    the predictor and fed back to the decoder in order. ``Backend.encode`` / ``decode`` are SAM's
    special case (one feature, two outputs)."""

    name: str
    contract: C.GraphContract

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        """image 1x3x1024x1024 float32 -> ``contract.encoder_outputs``, float32, in order."""

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        """``run_encoder``'s features and ``contract.prompt_inputs`` -> ``contract.decoder_outputs``."""


class DecoderHalves(Protocol):
    """Optional backend methods: the decoder in two calls, cut after the two-way transformer
    (``constants.DECODER_SCORES_ONNX`` / ``DECODER_MASKS_ONNX``), so masks are computed only for
    the prompts that need them. A backend has them when its ``has_decoder_halves`` is True."""

    has_decoder_halves: bool

    def decode_scores(
        self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``decode``'s inputs -> (iou_predictions Bx4, mask_tokens Bx4x256, image_tokens
        Bx4096x256), float32."""

    def decode_masks(self, mask_tokens: np.ndarray, image_tokens: np.ndarray) -> np.ndarray:
        """K rows of ``decode_scores``' tokens -> low_res_masks Kx4x256x256, float32: what
        ``decode`` gives for those K prompts."""


def onnxruntime_providers(device: str = "auto") -> list[str]:
    """Execution providers to ask ONNX Runtime for: CUDA first when available (and asked for)."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise SamExportError(
            "ONNX Runtime has no CUDA provider here; install onnxruntime-gpu on a machine with an "
            f"NVIDIA GPU (available providers: {', '.join(available)})"
        )
    cuda = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    return cuda + ["CPUExecutionProvider"]


# ONNX Runtime CPU (1.31) fuses Add + LayerNormalization into SkipLayerNormalization, whose kernel
# took 5-9 ms on the decoder's 4096x256 image tokens where Add + LayerNormalization take ~1 ms
# (the decoder fell from ~58 to ~36 ms per prompt with it off, 2-core machine).
DECODER_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def _decoder_options(ort, options):
    """Session options for the decoder: the encoder's, without busy-waiting worker threads.

    After a decoder run, spinning ORT threads compete for the cores with the NumPy mask
    postprocessing that follows, and on a loaded machine a spinning pool stalls each parallel op
    of a small graph; measured with spinning off: SamPredictor.predict 0.60 -> 0.42x and 0.80 ->
    0.54x of the official 4-mask decoder (1 and 3 masks at 1500x2250), same process, 2 cores.
    """
    decoder = ort.SessionOptions()
    decoder.enable_cpu_mem_arena = options.enable_cpu_mem_arena
    decoder.intra_op_num_threads = options.intra_op_num_threads
    decoder.log_severity_level = options.log_severity_level
    decoder.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return decoder


def _open_session(ort, path: Path | str, options, **kwargs):
    """``ort.InferenceSession`` for ``path``; a file ONNX Runtime cannot load as a graph (empty,
    truncated, not ONNX) is a :class:`SamExportError` naming it, not ONNX Runtime's traceback."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    unreadable = tuple(getattr(state, name) for name in ("InvalidProtobuf", "InvalidArgument", "NoSuchFile") if hasattr(state, name))
    try:
        return ort.InferenceSession(str(path), options, **kwargs)
    except unreadable as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SamExportError(
            f"{path} is not a readable ONNX graph ({reason}); the file is damaged or incomplete: "
            "copy the artifact again or rebuild it"
        ) from None


class OnnxRuntimeBackend:
    """Runs ``encoder.onnx`` and ``decoder.onnx`` with ONNX Runtime, and the decoder's two halves
    (:class:`DecoderHalves`) when given their graphs."""

    def __init__(
        self, encoder_path: Path | str | None, decoder_path: Path | str, *, device: str = "auto",
        threads: int | None = None, memory_arena: bool = True,
        decoder_halves: tuple[Path | str, Path | str] | None = None, contract: C.GraphContract = C.SAM_GRAPHS,
    ) -> None:
        """``memory_arena=False`` for FP16 graphs on CPU: ONNX Runtime runs them in fp32 behind
        inserted Casts, and with its arena the vit_b encoder grew past 18 GiB (4.4 GiB without).
        ``decoder_halves``: (``decoder_scores.onnx``, ``decoder_masks.onnx``), opened on first use.
        ``encoder_path=None``: the decoder only (:class:`~samexport.runtime.split_backend.SplitBackend`
        runs the encoder elsewhere); ``encode`` then raises. ``contract``: what the graphs take and
        give (the manifest's ``contract``)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = memory_arena
        options.log_severity_level = 3  # errors only: fp16 graphs warn per node about constant folding
        if threads:
            options.intra_op_num_threads = threads
        providers = onnxruntime_providers(device)
        halves = tuple(decoder_halves or ())
        for path in (encoder_path, decoder_path, *halves):
            if path is not None and not Path(path).is_file():
                raise SamExportError(f"ONNX graph not found: {path}")
        self.contract = contract
        self.encoder = None if encoder_path is None else _open_session(ort, encoder_path, options, providers=providers)
        self.decoder = self._open_decoder(ort, decoder_path, options, providers)
        self._halves_paths, self._halves_lock = halves, threading.Lock()
        self._halves = None
        self._session_args = ort, options, providers
        self.has_decoder_halves = bool(halves)
        self._run_options = _decoder_run_options() if memory_arena else None
        # Graphs exported before the mask axis existed name it num_prompts: they need M = B.
        mask_axis = next(i.shape[0] for i in self.decoder.get_inputs() if i.name == C.MASK_INPUT.name)
        self.shares_mask_input = mask_axis == C.NUM_MASKS
        active = self.decoder.get_providers()[0].replace("ExecutionProvider", "").lower()
        self.name = f"onnxruntime-{active}"

    @staticmethod
    def _open_decoder(ort, path, options, providers):
        return _open_session(
            ort, path, _decoder_options(ort, options), providers=providers,
            disabled_optimizers=list(DECODER_DISABLED_OPTIMIZERS),
        )

    def encode(self, image: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            raise SamExportError("this backend was opened without the encoder (encoder_path=None)")
        return self.encoder.run([C.IMAGE_EMBEDDINGS.name], {C.IMAGE.name: image})[0]

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        masks, iou = _run(self.decoder, C.DECODER_INPUTS, C.DECODER_OUTPUTS, inputs, self._run_options)
        return masks, iou

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(_run(self.encoder, self.contract.encoder_inputs, self.contract.encoder_outputs, (image,)))

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        contract = self.contract
        return tuple(_run(self.decoder, contract.decoder_inputs, contract.decoder_outputs, (*features, *prompts), self._run_options))

    def _decoder_halves(self):
        if not self.has_decoder_halves:
            raise SamExportError("this backend was opened without the decoder halves (decoder_halves=)")
        with self._halves_lock:  # the sessions are opened once, by the first caller
            if self._halves is None:
                ort, options, providers = self._session_args
                self._halves = tuple(self._open_decoder(ort, path, options, providers) for path in self._halves_paths)
        return self._halves

    def decode_scores(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        scores, _ = self._decoder_halves()
        inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        iou, mask_tokens, image_tokens = _run(scores, C.SCORES_INPUTS, C.SCORES_OUTPUTS, inputs, self._run_options)
        return iou, mask_tokens, image_tokens

    def decode_masks(self, mask_tokens, image_tokens):
        _, masks = self._decoder_halves()
        return _run(masks, C.MASKS_INPUTS, C.MASKS_OUTPUTS, (mask_tokens, image_tokens), self._run_options)[0]


def _run(session, inputs: tuple[C.TensorSpec, ...], outputs: tuple[C.TensorSpec, ...], arrays, run_options=None) -> list[np.ndarray]:
    return session.run([s.name for s in outputs], {s.name: a for s, a in zip(inputs, arrays)}, run_options)


def _decoder_run_options():
    """Run options for decoder calls: the CPU arena hands back what a call freed when it ends.

    The whole decoder and its two halves are three sessions with an arena each, and an arena keeps
    its high-water mark: the mask generator, which uses all three, held three calls' worth (over
    2.5 GB at 40 prompts a call) past ``SamPredictor.decode_budget_bytes``. With each arena
    shrunk after its call, decoding holds one call's worth at a time.
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


_BACKEND_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def backend_lock(backend: object) -> threading.Lock | None:
    """The lock that serialises calls into ``backend``, or ``None`` if it may be called from
    several threads at once (ONNX Runtime sessions and eager torch modules may; a TensorRT
    execution context, with its fixed device buffers, may not; unknown backends get a lock).
    One lock per backend object, shared by every predictor that uses it."""
    if isinstance(backend, OnnxRuntimeBackend) or getattr(backend, "thread_safe", False):
        return None
    with _LOCKS_GUARD:
        try:
            lock = _BACKEND_LOCKS.get(backend)
            if lock is None:
                lock = _BACKEND_LOCKS[backend] = threading.Lock()
        except TypeError:  # not weak-referenceable: a lock of its own
            return threading.Lock()
    return lock


def cpu_auto_uses_openvino() -> bool:
    """Whether ``auto`` (with no usable TensorRT engines) splits the graphs between OpenVINO and
    ONNX Runtime here: OpenVINO is installed and ONNX Runtime has no CUDA provider (on a GPU
    machine ONNX Runtime's CUDA provider runs both graphs, as before)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return False
    return "CUDAExecutionProvider" not in onnxruntime_providers("auto")


def describe_auto(folder: Path | str, manifest=None) -> str:
    """What ``backend="auto"`` opens for this artifact on this machine, said without opening it
    (``samexport info``): ``tensorrt``, ``onnxruntime-cuda``, ``onnxruntime-cpu``, or
    ``openvino-cpu-f32+onnxruntime-cpu`` (encoder + decoder, :func:`_cpu_auto`)."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest.engines and why_engines_cannot_run(manifest) is None:
        return "tensorrt"
    if not manifest.runtime.onnxruntime_encoder:
        return "none (the encoder runs only on TensorRT)"
    if cpu_auto_uses_openvino():
        return "openvino-cpu-f32+onnxruntime-cpu"
    return "onnxruntime-cuda" if "CUDAExecutionProvider" in onnxruntime_providers("auto") else "onnxruntime-cpu"


def _cpu_auto(folder: Path, manifest, *, threads: int | None) -> Backend:
    """``auto`` on a CPU with OpenVINO: the encoder on OpenVINO in f32 (the graph's precision,
    never bf16 unasked), the decoder and its halves on ONNX Runtime: per graph, the runtime that
    was faster at f32 here (docs/openvino.md, "What auto does"). A graph OpenVINO cannot compile
    leaves everything on ONNX Runtime, logged."""
    halves = manifest.decoder_halves()
    try:
        encoder = OpenVINOBackend(
            folder / C.ENCODER_ONNX, None, threads=threads, precision="f32", files=manifest.files,
        )
    except SamExportError as exc:
        logging.getLogger(__name__).info("auto: ONNX Runtime for both graphs (OpenVINO: %s)", exc)
        encoder = None
    decoder = OnnxRuntimeBackend(
        None if encoder else folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device="cpu", threads=threads,
        memory_arena=manifest.runtime.onnxruntime_memory_arena,
        decoder_halves=tuple(folder / name for name in halves) if halves else None,
    )
    if encoder is None:
        return decoder
    return SplitBackend(encoder, decoder, encoder_lock=backend_lock(encoder), decoder_lock=backend_lock(decoder))


def open_backend(artifact_dir: Path | str, backend: BackendName = "auto", *, threads: int | None = None) -> Backend:
    """The backend for an artifact directory.

    ``auto`` takes the TensorRT engines when the directory has them and this machine can run them
    (``tensorrt`` installed, a GPU present, plans built for this TensorRT and GPU and not test
    builds), else ONNX Runtime's CUDA provider when present, else, with OpenVINO installed, the
    encoder on OpenVINO (f32) and the decoder on ONNX Runtime (:func:`cpu_auto_uses_openvino`,
    a :class:`~samexport.runtime.split_backend.SplitBackend`), else ONNX Runtime. ``openvino`` takes options after a
    colon: ``openvino:device=GPU,precision=bf16`` (:mod:`samexport.runtime.openvino_backend`).
    ``threads`` sets ONNX Runtime's intra-op threads and OpenVINO's CPU threads (None: their
    default); TensorRT ignores it.

    The files the backend loads are checked against the manifest's sizes and sha256s first
    (``samexport.artifacts.verify_artifact``; hashed on first open only). The backend's
    ``artifact_manifest_sha256`` attribute is the sha256 of the artifact's ``manifest.json``
    (what a stored dataset row records, so a row is never restored into another artifact).
    """
    backend = _open_backend(artifact_dir, backend, threads=threads)
    backend.artifact_manifest_sha256 = sha256_file(Path(artifact_dir) / C.MANIFEST)
    return backend


def _open_backend(artifact_dir: Path | str, backend: BackendName, *, threads: int | None) -> Backend:
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    C.check_backend(backend, C.ARTIFACT_BACKENDS)
    backend, options = C.split_backend(backend)
    if backend == "auto" and manifest.engines:
        reason = why_engines_cannot_run(manifest)
        if reason is None:
            backend = "tensorrt"
        else:
            logging.getLogger(__name__).info("not using the TensorRT engines of %s: %s", folder, reason)
    contract = manifest.contract
    if backend == "tensorrt":
        return TensorRTBackend(folder, manifest)
    if not manifest.runtime.onnxruntime_encoder:
        raise SamExportError(
            f"{folder}'s encoder has nodes only TensorRT can run (--attention plugin); use "
            "backend='tensorrt', or rebuild with --attention fused-pattern for ONNX Runtime"
        )
    verify_artifact(folder, manifest, names=[n for n in manifest.files if n in (*C.GRAPH_FILES, *C.GRAPH_DATA_FILES)])
    halves = manifest.decoder_halves()
    if backend == "openvino":
        mask_input = manifest.decoder.input(C.MASK_INPUT.name)
        mask_axis = mask_input.shape[0] if mask_input else None
        return OpenVINOBackend(
            folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, threads=threads,
            device=options.get("device", C.OPENVINO_DEFAULT_DEVICE),
            precision=options.get("precision", C.OPENVINO_DEFAULT_PRECISION),
            decoder_halves=tuple(folder / name for name in halves) if halves else None,
            shares_mask_input=mask_axis == C.NUM_MASKS, files=manifest.files, contract=contract,
        )
    if backend == C.AUTO_BACKEND and contract is C.SAM_GRAPHS and cpu_auto_uses_openvino():
        return _cpu_auto(folder, manifest, threads=threads)
    device = C.BACKENDS[backend].onnxruntime_device if backend != C.AUTO_BACKEND else "auto"
    return OnnxRuntimeBackend(
        folder / C.ENCODER_ONNX, folder / C.DECODER_ONNX, device=device, threads=threads,
        memory_arena=manifest.runtime.onnxruntime_memory_arena,
        decoder_halves=tuple(folder / name for name in halves) if halves else None, contract=contract,
    )
