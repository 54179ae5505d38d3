"""TensorRT backend: runs the engine plans of an artifact directory on an NVIDIA GPU.

Polygraphy does the TensorRT work: ``EngineFromPath`` deserializes each plan (and allows the lean
runtime's host code that version-compatible plans embed: ``engine_host_code_allowed``),
``TrtRunner`` owns the execution context, the device buffers (``polygraphy.cuda``, plain ctypes
over ``libcudart``: no cuda-python, so no CUDA 13 binding on a CUDA 12 driver such as JetPack 6)
and the copies. The one thing samexport adds: the image features (the graph contract's encoder
outputs: SAM's embedding, SAM 2.1's embedding and two high-resolution maps) stay on the GPU between
the two engines (the encoder runner returns them as device views; ``run_decoder`` feeds those views
to the decoder runner when it is handed the arrays that the last ``run_encoder`` returned), which a
single Polygraphy runner cannot do because it copies every output to the host.

Plans built with ``--attention plugin`` hold the ahead-of-time plugin kernel (PTX) inside the
engine: TensorRT launches it with no Python at inference, so the runtime neither registers the
plugin nor imports Triton (TensorRT's ``tensorrt.plugin.aot_impl`` documentation; Torch-TensorRT's
AOT plugin tutorial: "required for serialized engines that will run without a Python environment").

Needs the ``tensorrt`` extra (``tensorrt`` and ``polygraphy``) and a GPU; nothing here is imported
by ``import samexport``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samexport import constants as C
from samexport.artifacts import Manifest, verify_artifact
from samexport.engine_records import EngineRecord
from samexport.engines import GpuInfo, cuda_devices, load_tensorrt, polygraphy_trt, tensorrt_availability
from samexport.errors import InvalidInputError, SamExportError

if TYPE_CHECKING:  # typing.Self is Python 3.11+; only the type checker reads it
    from typing_extensions import Self

ENGINE_NAMES = ("encoder", "decoder")
# TensorRT documents one cross-major combination for version-compatible plans in the releases
# samexport supports: "TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime"
# (TensorRT 11.4 support matrix, Engine Portability).
_CROSS_MAJOR_VERSION_COMPATIBLE = {(10, 11)}


def tensorrt_release(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``: every numeric component, build number included."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def check_engine_compatibility(
    record: EngineRecord, *, name: str, tensorrt_version: str, gpu: GpuInfo, gpu_specific_kernels: bool = False
) -> None:
    """Refuse a plan this TensorRT or this GPU cannot run, saying what to rebuild.

    The rules are TensorRT's ("Engine Compatibility", TensorRT 11 developer guide): a plan runs
    only on the exact TensorRT version that built it, build number included, unless it was built
    version-compatible, in which case it runs on that version and later ones of the same major
    version, and a 10.x plan also on 11.x. A plan runs only on GPUs of the building GPU's compute
    capability unless built hardware-compatible: ``ampere_plus`` on compute capability 8.0 and up,
    ``same_compute_capability`` on the same compute capability. A plan with the attention plugin
    holds PTX compiled for the building GPU only, so hardware compatibility does not extend to it.

    Args:
        record: the engine's record (``Manifest.engines[name]``, written by ``build_engine``).
        name: ``"encoder"`` or ``"decoder"``, for the message.
        tensorrt_version: version of the TensorRT that would deserialize the plan.
        gpu: the GPU it would run on.
        gpu_specific_kernels: the plan holds kernels compiled for the building GPU (the
            attention plugin; ``Manifest.runtime``), which hardware compatibility does not cover.

    Raises:
        SamExportError: a test build (TensorRT-RTX, or built without a GPU), another TensorRT
            version, or another GPU; the message says what to rebuild.
    """
    rebuild = "rebuild the engines on this machine with `samexport engines ARTIFACT_DIR`"
    if record.test_build or record.builder == "tensorrt_rtx":
        raise SamExportError(
            f"the {name} engine is a test build ({record.tensorrt_module or 'TensorRT-RTX'} "
            f"{record.tensorrt_version}, built to prove the graph builds, not to run): {rebuild}"
        )
    built_cc = record.compute_capability
    if built_cc is None:
        raise SamExportError(f"the {name} engine was built without a GPU (test build): {rebuild}")
    built, running = tensorrt_release(record.tensorrt_version or ""), tensorrt_release(tensorrt_version)
    if record.version_compatible:
        same_line = running[0] == built[0] or (built[0], running[0]) in _CROSS_MAJOR_VERSION_COMPATIBLE
        version_ok = same_line and running >= built
    else:
        version_ok = running == built
    if not version_ok:
        raise SamExportError(
            f"the {name} engine was built with TensorRT {record.tensorrt_version}, this is TensorRT "
            f"{tensorrt_version}: {rebuild}"
        )
    level = record.hardware_compatibility
    major = int(gpu.compute_capability.split(".")[0])
    if level == "ampere_plus" and not gpu_specific_kernels:
        hardware_ok = major >= 8
    else:
        hardware_ok = built_cc == gpu.compute_capability
    if not hardware_ok:
        plugin = " (its attention plugin kernel is compiled for that GPU only)" if gpu_specific_kernels else ""
        raise SamExportError(
            f"the {name} engine was built for {record.gpu} (compute capability {built_cc}){plugin}, "
            f"this GPU is {gpu.name} ({gpu.compute_capability}): {rebuild}"
        )


def why_engines_cannot_run(manifest: Manifest, *, device: int = 0) -> str | None:
    """None when this machine can run the artifact's plans; else the reason, in one line
    (no engines, no TensorRT or GPU, a test build, another TensorRT version or GPU)."""
    engines = manifest.engines
    if any(name not in engines for name in ENGINE_NAMES):
        return "the artifact has no TensorRT engines"
    availability = tensorrt_availability()
    if not availability:
        return availability.reason
    try:
        gpu = cuda_devices()[device]
        for name in ENGINE_NAMES:
            check_engine_compatibility(
                engines[name], name=name, tensorrt_version=availability.tensorrt_version or "", gpu=gpu,
                gpu_specific_kernels=manifest.runtime.gpu_specific_kernels,
            )
    except (SamExportError, IndexError) as exc:
        return str(exc)
    return None


class TensorRTBackend:
    """Encoder and decoder engines of an artifact directory on one GPU, as Polygraphy runners,
    fed and read by the artifact's graph contract (``run_encoder`` / ``run_decoder``, the
    :class:`~samexport.runtime.backends.GraphRunner` seam; ``encode`` / ``decode`` for SAM).

    A context manager: ``with TensorRTBackend(folder, manifest) as backend: ...`` frees the
    engines and device buffers on exit (``close()`` does the same).
    """

    name = "tensorrt"
    # M = B, as before the mask axis: TensorRT-RTX builds the decoder with M and B independent and
    # the profile admits M = 1, but broadcasting at run time has not yet run on a GPU here.
    shares_mask_input = False

    def __init__(self, artifact_dir: Path | str, manifest: Manifest, *, device: int = 0) -> None:
        engines = manifest.engines
        missing = [n for n in ENGINE_NAMES if n not in engines]
        if missing:  # the artifact's own problem: said first, whether or not TensorRT is installed
            raise SamExportError(
                f"{artifact_dir} has no TensorRT {' or '.join(missing)} engine "
                f"({manifest.skipped_engines.get(missing[0], 'not built')}); "
                f"run `samexport engines {artifact_dir}` on this machine, or use backend='onnxruntime'"
            )
        trt = load_tensorrt("tensorrt")
        pg = polygraphy_trt("tensorrt")
        devices = cuda_devices()
        if not 0 <= device < len(devices):
            raise SamExportError(f"no CUDA device {device}; this machine has {len(devices)}")
        gpu = devices[device]
        for name in ENGINE_NAMES:
            check_engine_compatibility(
                engines[name], name=name, tensorrt_version=trt.__version__, gpu=gpu,
                gpu_specific_kernels=manifest.runtime.gpu_specific_kernels,
            )
        if device != 0:
            _set_device(device)
        folder = Path(artifact_dir)
        records = {name: manifest.engine(name) for name in ENGINE_NAMES}
        verify_artifact(folder, manifest, names=[record.plan for record in records.values()])
        self._runners = []
        try:
            for name in ENGINE_NAMES:
                plan = folder / records[name].plan
                if not plan.is_file():
                    raise SamExportError(f"{plan} is missing: run `samexport engines {artifact_dir}`")
                runner = pg.TrtRunner(pg.EngineFromPath(str(plan)), name=name)
                runner.activate()
                self._runners.append(runner)
        except BaseException:
            self.close()
            raise
        self.encoder, self.decoder = self._runners
        # What the two plans take and give (SAM: the embedding; SAM 2.1: also both high-res maps).
        self.contract = manifest.contract
        # The decoder profile's largest prompt batch: SamPredictor splits larger batches.
        self.max_prompts = records["decoder"].max_prompts
        self._last_features: tuple[np.ndarray, ...] = ()
        self._last_features_on_device: tuple = ()

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        """image 1x3x1024x1024 float32 -> the contract's encoder outputs, float32, in order (also
        kept on the GPU: :meth:`run_decoder` feeds those device buffers when handed these arrays)."""
        outputs = self.encoder.infer({C.IMAGE.name: np.ascontiguousarray(image, np.float32)}, copy_outputs_to_host=False)
        on_device = tuple(outputs[spec.name] for spec in self.contract.encoder_outputs)
        features = tuple(np.asarray(view.numpy(), dtype=np.float32) for view in on_device)
        self._last_features, self._last_features_on_device = features, on_device
        return features

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        """``run_encoder``'s features and the contract's prompt inputs -> its decoder outputs."""
        contract = self.contract
        if len(features) != len(contract.encoder_outputs) or len(prompts) != len(contract.prompt_inputs):
            raise InvalidInputError(
                f"the {contract.name} decoder takes {len(contract.encoder_outputs)} features and "
                f"{len(contract.prompt_inputs)} prompt inputs; got {len(features)} and {len(prompts)}"
            )
        feeds = {spec.name: np.ascontiguousarray(a, spec.dtype) for spec, a in zip(contract.decoder_inputs, (*features, *prompts))}
        for spec, array, last, view in zip(contract.encoder_outputs, features, self._last_features, self._last_features_on_device):
            if array is last:  # still on the GPU from run_encoder()
                feeds[spec.name] = view
        self._check_profile(feeds)
        out = self.decoder.infer(feeds)
        return tuple(out[spec.name] for spec in contract.decoder_outputs)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """SAM's special case: image 1x3x1024x1024 float32 -> embedding 1x256x64x64 float32."""
        return self.run_encoder(image)[0]

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        """SAM's special case: (low_res_masks, iou_predictions) for one embedding's prompts."""
        masks, iou = self.run_decoder((image_embeddings,), point_coords, point_labels, mask_input, has_mask_input)[:2]
        return masks, iou

    def _check_profile(self, feeds: dict) -> None:
        """A prompt batch outside the decoder's profile is the caller's error, said as such."""
        engine = self.decoder.engine
        for name, value in feeds.items():
            if -1 not in tuple(engine.get_tensor_shape(name)):
                continue
            low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            shape = tuple(value.shape)
            if len(shape) != len(low) or not all(a <= b <= c for a, b, c in zip(low, shape, high)):
                raise InvalidInputError(
                    f"{name} shape {shape} is outside the decoder engine's profile {low}..{high}; "
                    "rebuild with a larger --max-batch / --max-points"
                )

    def close(self) -> None:
        for runner in getattr(self, "_runners", []):
            if runner.is_active:
                runner.deactivate()
        self._runners = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _set_device(device: int) -> None:
    """Select CUDA device ``device`` for this thread. Polygraphy has no device selection (it uses
    the current device), so this one call goes to libcudart through Polygraphy's own handle."""
    from polygraphy import cuda

    cuda.wrapper().check(cuda.wrapper().handle.cudaSetDevice(device))
