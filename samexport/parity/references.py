"""PyTorch reference outputs stored in the artifact, so any backend can be checked without torch.

At build time (where torch and the checkpoint are) :func:`record_references` runs the PyTorch
model in FP32 on a small fixed set, :data:`REFERENCE_SET`: two images of different aspect ratios,
stored already at the 1024 frame (the longest side is 1024, so preprocessing does no resize and
the encoder input is reproduced exactly: normalise and pad), each with part of the prompt suite
(:data:`samexport.parity.prompts.REFERENCE_PROMPTS`). Every encoder and decoder call the parity
loop makes is recorded with its inputs and outputs in one ``references-<sha>.npz`` in the
artifact (listed in the manifest's file records, hashed like the graphs).

On the device, :class:`ReferenceBackend` replays them: it is a backend whose ``encode`` and
``decode`` return the stored outputs for the stored inputs, so ``run_parity`` compares any
candidate with it exactly as it compares with ``TorchBackend`` (``samexport.parity.verify``).

Storage: images uint8 (as PNG, lossless), embeddings and low-res logits float16, IoU predictions float32, prompts
float32. FP16 rounds a value by at most 2**-11 of itself, so it adds at most 4.9e-4 to the
``*_rel_max_abs`` figures (limit 1e-3 for fp32, 2e-2 for fp16) and nothing measurable to cosine
or mask IoU; the recorder measures what it adds and the manifest records it (``storage_error``).
The PyTorch decoder runs on the full-precision embedding; only what is stored is rounded, and
the recorder hands the rounded outputs back to the parity loop, so the mask-refinement input it
derives is exactly the one the replay derives later.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samexport import transforms
from samexport.artifacts import REFERENCES_PREFIX, Manifest, verify_artifact
from samexport.errors import SamExportError
from samexport.image_sources import sample_images, synthetic_image
from samexport.parity.prompts import REFERENCE_PROMPTS, Prompt
from samexport.parity.runner import run_parity
from samexport.runtime.backends import Backend
from samexport.staging import atomic_file

FORMAT = 1
STORED_DTYPE = np.float16  # embeddings and low-res logits
# (name, size at the 1024 frame (H, W), scikit-image photo and crop (rows, cols) or None, prompts)
REFERENCE_SET: tuple[tuple[str, tuple[int, int], tuple[str, tuple[slice, slice]], tuple[str, ...]], ...] = (
    ("landscape", (683, 1024), ("coffee", (slice(None), slice(None))), ("point", "box", "box_point", "mask_refinement")),
    ("portrait", (1024, 640), ("astronaut", (slice(None), slice(96, 416))), ("ten_points", "batch_boxes_4")),
)
DECODER_FIELDS = ("point_coords", "point_labels", "mask_input", "has_mask_input")


def reference_images() -> tuple[dict[str, np.ndarray], str]:
    """The images of :data:`REFERENCE_SET` at the 1024 frame: scikit-image's photos when it is
    installed, else synthetic pictures of the same sizes. Returns (name -> HxWx3 uint8, source)."""

    try:
        photos, skipped = sample_images(tuple(photo for _, _, (photo, _), _ in REFERENCE_SET))
    except ImportError:  # MissingExtraError: scikit-image is not installed
        photos, skipped = {}, {}
    images, sources = {}, []
    for index, (name, size, (photo, crop), _) in enumerate(REFERENCE_SET):
        if photo in photos:
            image = transforms.resize_image(np.ascontiguousarray(photos[photo][crop]))
            sources.append(f"{name}: scikit-image {photo}")
        else:
            image = synthetic_image(*size, seed=index)
            sources.append(f"{name}: synthetic ({skipped.get(photo, 'photo unavailable')})")
        if image.shape[:2] != size:
            raise SamExportError(f"reference image {name} is {image.shape[:2]}, expected {size}")  # a bug
        images[name] = image
    return images, "; ".join(sources)


def _prompts_by_name() -> dict[str, Prompt]:
    return {p.name: p for p in REFERENCE_PROMPTS}


@dataclass
class _Call:
    """One decoder call: which image, its inputs and outputs (float32 in memory)."""

    image: int
    inputs: tuple[np.ndarray, ...]  # DECODER_FIELDS
    low_res_masks: np.ndarray
    iou_predictions: np.ndarray


def _rounded(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(STORED_DTYPE).astype(np.float32)


def _rel_error(full: np.ndarray, rounded: np.ndarray) -> float:
    scale = float(np.abs(full).max())
    return float(np.abs(full.astype(np.float64) - rounded).max() / scale) if scale else 0.0


@dataclass
class ReferenceBackend:
    """A backend that returns stored reference outputs for the stored inputs.

    Replaying (``model=None``): an input it has no output for is a :class:`SamExportError`.
    Recording (``model`` given, e.g. ``TorchBackend``): a new input is run on ``model`` and its
    outputs stored, rounded to :data:`STORED_DTYPE`; a repeated input is answered from the store,
    so ``run_parity(recorder, recorder, ...)`` runs the model once per call of the parity loop.

    Attributes:
        encoder_inputs: the 1x3x1024x1024 float32 encoder inputs, one per image.
        embeddings: the stored 1x256x64x64 embeddings (float32 holding float16 values).
    """

    model: Backend | None = None
    encoder_inputs: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    name: str = "references (PyTorch FP32, stored)"
    shares_mask_input: bool = True
    has_decoder_halves: bool = False
    storage_error: dict[str, float] = field(default_factory=lambda: {"embedding_rel_max_abs": 0.0, "logits_rel_max_abs": 0.0})
    _full: dict[int, np.ndarray] = field(default_factory=dict)  # id(stored embedding) -> model's

    def encode(self, image: np.ndarray) -> np.ndarray:
        for stored, embedding in zip(self.encoder_inputs, self.embeddings):
            if stored.shape == image.shape and np.array_equal(stored, image):
                return embedding
        if self.model is None:
            raise SamExportError(
                "the stored references have no embedding for this encoder input: this samexport "
                "preprocesses the stored images differently from the one that recorded them; "
                "record them again with `samexport references ARTIFACT --checkpoint PATH`"
            )
        full = np.asarray(self.model.encode(image), dtype=np.float32)
        rounded = _rounded(full)
        self._note("embedding_rel_max_abs", _rel_error(full, rounded))
        self.encoder_inputs.append(np.array(image, dtype=np.float32, copy=True))
        self.embeddings.append(rounded)
        self._full[id(rounded)] = full
        return rounded

    def _image_index(self, embedding: np.ndarray) -> int:
        for index, stored in enumerate(self.embeddings):
            if embedding is stored or (embedding.shape == stored.shape and np.array_equal(embedding, stored)):
                return index
        raise SamExportError("decode was given an embedding the references do not hold")  # a bug: encode first

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        index = self._image_index(image_embeddings)
        inputs = tuple(np.asarray(a, dtype=np.float32) for a in (point_coords, point_labels, mask_input, has_mask_input))
        for call in self.calls:
            if call.image == index and all(
                a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-5) for a, b in zip(inputs, call.inputs)
            ):
                return call.low_res_masks, call.iou_predictions
        if self.model is None:
            raise SamExportError(
                f"the stored references have no decoder output for a prompt of {inputs[0].shape[0]} x "
                f"{inputs[0].shape[1]} points on image {index}: this samexport transforms the stored "
                "prompts differently from the one that recorded them; record them again with "
                "`samexport references ARTIFACT --checkpoint PATH`"
            )
        full_embedding = self._full[id(self.embeddings[index])]
        masks, iou = self.model.decode(full_embedding, *inputs)
        masks = np.asarray(masks, dtype=np.float32)
        rounded = _rounded(masks)
        self._note("logits_rel_max_abs", _rel_error(masks, rounded))
        call = _Call(index, tuple(a.copy() for a in inputs), rounded, np.asarray(iou, dtype=np.float32))
        self.calls.append(call)
        return call.low_res_masks, call.iou_predictions

    def _note(self, figure: str, value: float) -> None:
        self.storage_error[figure] = max(self.storage_error[figure], value)


@dataclass(frozen=True)
class References:
    """The stored set of one artifact: the replaying backend and, per image, what parity runs."""

    backend: ReferenceBackend
    images: dict[str, np.ndarray]  # name -> HxWx3 uint8 at the 1024 frame
    prompts: dict[str, tuple[Prompt, ...]]  # image name -> its prompts

    def groups(self) -> Iterator[tuple[dict[str, np.ndarray], tuple[Prompt, ...]]]:
        """({name: image}, prompts) per image, for ``run_parity``."""
        for name, image in self.images.items():
            yield {name: image}, self.prompts[name]


def record_references(model: Backend, folder: Path) -> dict:
    """Run ``model`` (``TorchBackend`` of the FP32 weights) on :data:`REFERENCE_SET` and write
    ``references-<sha>.npz`` into ``folder``; returns the manifest's ``references`` section.

    The file is written under a hidden name and renamed when complete; nothing else in ``folder``
    changes (the caller writes the manifest that names it).
    """

    recorder = ReferenceBackend(model=model)
    images, source = reference_images()
    prompts = _prompts_by_name()
    started = time.perf_counter()
    for (name, _, _, names) in REFERENCE_SET:
        run_parity(recorder, recorder, {name: images[name]}, [prompts[n] for n in names], precision="fp32")
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT)}
    for index, (name, _, _, names) in enumerate(REFERENCE_SET):
        arrays[f"image_{index}_png"] = _png(images[name])
        arrays[f"embedding_{index}"] = recorder.embeddings[index].astype(STORED_DTYPE)
        arrays[f"encoder_input_sha256_{index}"] = np.array(_sha(recorder.encoder_inputs[index]))
        arrays[f"prompts_{index}"] = np.array(names)
    for name, prompt in prompts.items():
        for key in ("points", "labels", "boxes"):
            if getattr(prompt, key) is not None:
                arrays[f"prompt_{name}_{key}"] = getattr(prompt, key).astype(np.float32)
        arrays[f"prompt_{name}_refine"] = np.array(prompt.refine)
    for k, call in enumerate(recorder.calls):
        arrays[f"call_{k}_image"] = np.array(call.image)
        for key, value in zip(DECODER_FIELDS, call.inputs):
            arrays[f"call_{k}_{key}"] = value.astype(STORED_DTYPE) if key == "mask_input" else value
        arrays[f"call_{k}_low_res_masks"] = call.low_res_masks.astype(STORED_DTYPE)
        arrays[f"call_{k}_iou_predictions"] = call.iou_predictions
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    name = f"{REFERENCES_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.npz"
    # The temporary name (.NAME.partial-XXXXXXXX) is one samexport.artifacts knows as its own.
    with atomic_file(Path(folder) / name, prefix=f".{name}.partial-", suffix="") as stream:
        stream.write(data)
    return {
        "file": name,
        "format": FORMAT,
        "images": {n: {"size": list(images[n].shape[:2]), "prompts": list(p)} for n, _, _, p in REFERENCE_SET},
        "image_source": source,
        "decoder_calls": len(recorder.calls),
        "stored_dtype": {"images": "uint8 (PNG)", "embeddings": "float16", "low_res_masks": "float16", "iou_predictions": "float32"},
        "storage_error": {k: float(f"{v:.3g}") for k, v in recorder.storage_error.items()},
        "reference": f"{model.name} (FP32)",
        "seconds": round(time.perf_counter() - started, 1),
        "bytes": len(data),
    }


def _png(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> the bytes of a PNG (lossless; ~half of the raw size on photos)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def _unpng(data: np.ndarray) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def no_references_message(folder: Path) -> str:
    return (
        f"{folder} has no stored PyTorch references (it was built before samexport stored them): "
        f"add them where torch and the checkpoint are, with `samexport references {folder} "
        "--checkpoint PATH`, and copy the artifact again"
    )


def load_references(folder: Path | str, manifest: Manifest) -> References:
    """Read the references ``manifest`` names, after checking the file's sha256.

    Raises:
        SamExportError: the artifact has none (built before samexport stored them), the file is
            damaged, or this samexport preprocesses the stored images differently.
    """
    folder = Path(folder)
    if not manifest.references:
        raise SamExportError(no_references_message(folder))
    file = manifest.references["file"]
    verify_artifact(folder, manifest, names=[file])
    if file not in manifest.files:
        raise SamExportError(f"{folder / file} is not in the manifest's file records; rebuild the artifact")
    with np.load(folder / file, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if int(arrays.get("format", -1)) != FORMAT:
        raise SamExportError(f"{folder / file} has references format {arrays.get('format')}; this samexport reads {FORMAT}")
    backend = ReferenceBackend()
    images, prompts = {}, {}
    index = 0
    while f"image_{index}_png" in arrays:
        image = _unpng(arrays[f"image_{index}_png"])
        name = list(manifest.references["images"])[index]
        encoder_input = transforms.preprocess(image)
        if _sha(encoder_input) != str(arrays[f"encoder_input_sha256_{index}"]):
            raise SamExportError(
                f"this samexport turns the stored reference image {name!r} into another encoder input "
                "than the one that recorded the references; record them again with `samexport references`"
            )
        backend.encoder_inputs.append(encoder_input)
        backend.embeddings.append(arrays[f"embedding_{index}"].astype(np.float32))
        images[name] = image
        prompts[name] = tuple(_stored_prompt(arrays, str(p)) for p in arrays[f"prompts_{index}"])
        index += 1
    k = 0
    while f"call_{k}_image" in arrays:
        inputs = tuple(arrays[f"call_{k}_{key}"].astype(np.float32) for key in DECODER_FIELDS)
        backend.calls.append(_Call(
            int(arrays[f"call_{k}_image"]), inputs,
            arrays[f"call_{k}_low_res_masks"].astype(np.float32), arrays[f"call_{k}_iou_predictions"].astype(np.float32),
        ))
        k += 1
    return References(backend, images, prompts)


def _stored_prompt(arrays: dict[str, np.ndarray], name: str) -> Prompt:
    get = arrays.get
    return Prompt(
        name, points=get(f"prompt_{name}_points"), labels=get(f"prompt_{name}_labels"),
        boxes=get(f"prompt_{name}_boxes"), refine=bool(get(f"prompt_{name}_refine", False)),
    )
