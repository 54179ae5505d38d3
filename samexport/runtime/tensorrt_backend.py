"""TensorRT backend: runs the engine plans of an artifact directory on an NVIDIA GPU.

Device buffers are allocated once per engine at the largest profile shape and reused across calls;
tensors are bound by name (``set_tensor_address`` / ``execute_async_v3``, TensorRT >= 8.5). The
image embedding stays on the GPU between the encoder and the decoder: ``decode`` skips the upload
when it is handed the array that the last ``encode`` returned.

Needs the ``tensorrt`` extra (``tensorrt`` and ``cuda-python``) and a GPU; nothing here is imported
by ``import samexport``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samexport import constants as C
from samexport.engines import GpuInfo, cuda_devices, load_tensorrt
from samexport.errors import SamExportError, require

ENGINE_NAMES = ("encoder", "decoder")


def _release(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``: plans are tied to the release, not the build number."""
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def check_engine_compatibility(record: dict, *, name: str, tensorrt_version: str, gpu: GpuInfo) -> None:
    """Refuse a plan this TensorRT or this GPU cannot run, saying what to rebuild.

    Args:
        record: the engine's entry in ``manifest.json`` (as written by ``build_engine``).
        name: ``"encoder"`` or ``"decoder"``, for the message.
        tensorrt_version: version of the TensorRT that would deserialize the plan.
        gpu: the GPU it would run on.

    Raises:
        SamExportError: another TensorRT release (unless built version-compatible and run by a
            newer release of the same major version), or another compute capability (unless built
            hardware-compatible for Ampere and newer and this GPU is Ampere or newer).
    """
    rebuild = "rebuild it on this machine with `samexport build`"
    built, running = _release(record["tensorrt_version"]), _release(tensorrt_version)
    version_ok = built == running or (
        record.get("config", {}).get("version_compatible") and running[0] == built[0] and running >= built
    )
    if not version_ok:
        raise SamExportError(
            f"the {name} engine was built with TensorRT {record['tensorrt_version']}, this is TensorRT "
            f"{tensorrt_version}: {rebuild}"
        )
    built_cc = record.get("compute_capability")
    if built_cc is None:
        raise SamExportError(f"the {name} engine was built without a GPU (test build): {rebuild}")
    level = record.get("config", {}).get("hardware_compatibility", "none")
    major = int(gpu.compute_capability.split(".")[0])
    hardware_ok = built_cc == gpu.compute_capability or (level == "ampere_plus" and major >= 8)
    if not hardware_ok:
        raise SamExportError(
            f"the {name} engine was built for {record.get('gpu')} (compute capability {built_cc}), "
            f"this GPU is {gpu.name} ({gpu.compute_capability}): {rebuild}"
        )


def _cudart():
    """CUDA runtime bindings from cuda-python (module path moved in cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        runtime = require("cuda.cudart", "tensorrt")
    return runtime


def _check(result):
    """cuda-python calls return (error, *values): raise on error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class _Engine:
    """One deserialized plan with an execution context and reusable device buffers."""

    def __init__(self, trt, runtime, plan: Path, cudart, stream) -> None:
        self.trt, self.cudart, self.stream = trt, cudart, stream
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise SamExportError(f"TensorRT could not load {plan}: rebuild it with `samexport build`")
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = self._largest_shape(name, is_input)
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.buffers[name] = _check(cudart.cudaMalloc(max(nbytes, 1)))
            self.context.set_tensor_address(name, self.buffers[name])

    def _largest_shape(self, name: str, is_input: bool) -> tuple[int, ...]:
        shape = tuple(self.engine.get_tensor_shape(name))
        if -1 not in shape:
            return shape
        if is_input:
            return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
        # outputs: set every input to its max shape and ask the context
        for input_name in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)):
            if self.engine.get_tensor_mode(input_name) == self.trt.TensorIOMode.INPUT:
                dims = tuple(self.engine.get_tensor_shape(input_name))
                if -1 in dims:
                    self.context.set_input_shape(input_name, tuple(self.engine.get_tensor_profile_shape(input_name, 0)[2]))
        return tuple(self.context.get_tensor_shape(name))

    def run(self, feeds: dict[str, np.ndarray], *, on_device: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """Upload ``feeds``, bind ``on_device`` pointers as they are, run, download outputs."""
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        on_device = on_device or {}
        for name in self.inputs:
            if name in on_device:
                self.context.set_tensor_address(name, on_device[name])
                continue
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, array.shape):
                raise ValueError(f"{name} shape {array.shape} is outside the engine's optimisation profile")
            self.context.set_tensor_address(name, self.buffers[name])
            _check(cudart.cudaMemcpyAsync(self.buffers[name], array.ctypes.data, array.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execution failed")
        results = {}
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream))
            results[name] = out
        _check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def close(self) -> None:
        for pointer in self.buffers.values():
            self.cudart.cudaFree(pointer)
        self.buffers.clear()


class TensorRTBackend:
    """Encoder and decoder engines of an artifact directory on one GPU."""

    name = "tensorrt"

    def __init__(self, artifact_dir: Path | str, manifest: dict, *, device: int = 0) -> None:
        trt = load_tensorrt("tensorrt")
        engines = manifest.get("engines", {})
        missing = [n for n in ENGINE_NAMES if n not in engines]
        if missing:
            raise SamExportError(
                f"{artifact_dir} has no TensorRT {' or '.join(missing)} engine "
                f"({manifest.get('skipped_engines', {}).get(missing[0], 'not built')}); "
                "build on a machine with TensorRT and a GPU, or use backend='onnxruntime'"
            )
        gpu = cuda_devices()[device]
        for name in ENGINE_NAMES:
            check_engine_compatibility(engines[name], name=name, tensorrt_version=trt.__version__, gpu=gpu)
        if manifest.get("attention") == "plugin":
            from samexport.plugins.tensorrt_plugin import register_tensorrt_plugin

            register_tensorrt_plugin()  # the plan's plugin nodes need their creator registered
        self.cudart = _cudart()
        _check(self.cudart.cudaSetDevice(device))
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        folder = Path(artifact_dir)
        self.encoder = _Engine(trt, runtime, folder / engines["encoder"]["plan"], self.cudart, self.stream)
        self.decoder = _Engine(trt, runtime, folder / engines["decoder"]["plan"], self.cudart, self.stream)
        self._last_embedding: np.ndarray | None = None

    def encode(self, image: np.ndarray) -> np.ndarray:
        embedding = self.encoder.run({C.IMAGE.name: image})[C.IMAGE_EMBEDDINGS.name]
        self._last_embedding = embedding
        return embedding

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        feeds = dict(zip((s.name for s in C.DECODER_INPUTS),
                         (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)))
        on_device = {}
        if image_embeddings is self._last_embedding:  # still on the GPU from encode()
            on_device[C.IMAGE_EMBEDDINGS.name] = self.encoder.buffers[C.IMAGE_EMBEDDINGS.name]
        out = self.decoder.run(feeds, on_device=on_device)
        return out[C.IOU_PREDICTIONS.name], out[C.LOW_RES_MASKS.name]

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()
        self.cudart.cudaStreamDestroy(self.stream)
