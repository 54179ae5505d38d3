"""PyTorch reference outputs stored in the artifact, so any backend can be checked without torch.

At build time (where torch and the checkpoint are) :func:`record_references` runs the PyTorch
model in FP32 on a small fixed set, :data:`REFERENCE_SET`: two images of different aspect ratios,
stored already at SAM's 1024 frame (the longest side is 1024, so SAM's preprocessing does no
resize and its encoder input is reproduced exactly: normalise and pad), each with part of the
prompt suite (:data:`samexport.parity.prompts.REFERENCE_PROMPTS`). Every encoder and decoder call
the family's parity loop makes (:func:`parity_runner`: ``run_parity`` for SAM and MobileSAM,
``run_sam2_parity`` for SAM 2.1) is recorded with its inputs and outputs in one
``references-<sha>.npz`` in the artifact (listed in the manifest's file records, hashed like the
graphs).

What is stored per image and per call follows the artifact's
:class:`~samexport.constants.GraphContract`: the encoder's features (SAM: the embedding; SAM 2.1:
the embedding and the two high-resolution maps) and every decoder output (SAM 2.1 adds the
object-score logits).

On the device, :class:`ReferenceBackend` replays them: it is a backend whose ``encode`` /
``decode`` (SAM's ``Backend``) and ``run_encoder`` / ``run_decoder`` (the contract's
``GraphRunner``) return the stored outputs for the stored inputs, so the family's parity loop
compares any candidate with it exactly as it compares with the PyTorch backend
(``samexport.parity.verify``).

Storage: images uint8 (as PNG, lossless), encoder features and low-res logits float16, IoU
predictions and object scores float32, prompts float32. FP16 rounds a value by at most 2**-11 of
itself, so it adds at most 4.9e-4 to the ``*_rel_max_abs`` figures (limit 1e-3 for fp32, 2e-2
for fp16) and nothing measurable to cosine or mask IoU; the recorder measures what it adds and
the manifest records it (``storage_error``; ``embedding_rel_max_abs`` is the worst feature, each
relative to its own scale, as ``run_sam2_parity`` folds them). The PyTorch decoder runs on the
full-precision features; only what is stored is rounded, and the recorder hands the rounded
outputs back to the parity loop, so the mask-refinement input it derives is exactly the one the
replay derives later.

Formats: 2 (this samexport writes it) keys the features and decoder outputs by the contract's
tensor names and records the contract; 1 (written before SAM 2.1) held SAM's one embedding per
image (``embedding_<i>``) and is still read. The encoder input of a stored image is checked when
the references are read: its sha256, or (format 2; SAM 2.1 resizes every image to 1024x1024 with a
matrix product, whose last bits depend on the BLAS) a strided sample of it within
:data:`INPUT_SAMPLE_ATOL`.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samexport import constants as C
from samexport import transforms
from samexport.artifacts import Manifest, verify_artifact
from samexport.errors import SamExportError
from samexport.family_transforms import preprocess_for
from samexport.image_sources import sample_images, synthetic_image
from samexport.parity.prompts import REFERENCE_PROMPTS, Prompt
from samexport.parity.runner import parity_runner
from samexport.records import REFERENCES_PREFIX, ReferenceImage, ReferencesRecord
from samexport.staging import atomic_file

FORMAT = 2
READABLE_FORMATS = (1, 2)
STORED_DTYPE = np.float16  # encoder features and low-res logits
# (name, size at the 1024 frame (H, W), scikit-image photo and crop (rows, cols) or None, prompts)
REFERENCE_SET: tuple[tuple[str, tuple[int, int], tuple[str, tuple[slice, slice]], tuple[str, ...]], ...] = (
    ("landscape", (683, 1024), ("coffee", (slice(None), slice(None))), ("point", "box", "box_point", "mask_refinement")),
    ("portrait", (1024, 640), ("astronaut", (slice(None), slice(96, 416))), ("ten_points", "batch_boxes_4")),
)
DECODER_FIELDS = ("point_coords", "point_labels", "mask_input", "has_mask_input")
INPUT_SAMPLE_STRIDE = 16  # the stored sample of an encoder input: every 16th row and column
INPUT_SAMPLE_ATOL = 1e-4  # on the normalised input (values within about +-2.7)

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
    outputs: tuple[np.ndarray, ...]  # the contract's decoder_outputs

    @property
    def low_res_masks(self) -> np.ndarray:
        return self.outputs[0]

    @property
    def iou_predictions(self) -> np.ndarray:
        return self.outputs[1]


def _rounded(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(STORED_DTYPE).astype(np.float32)


def _rel_error(full: np.ndarray, rounded: np.ndarray) -> float:
    scale = float(np.abs(full).max())
    return float(np.abs(full.astype(np.float64) - rounded).max() / scale) if scale else 0.0


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


@dataclass
class ReferenceBackend:
    """A backend that returns stored reference outputs for the stored inputs.

    It is both a SAM ``Backend`` (``encode`` / ``decode``, what ``SamPredictor`` calls) and a
    ``GraphRunner`` of ``contract`` (``run_encoder`` / ``run_decoder``, what
    ``SAM2ImagePredictor`` calls).

    Replaying (``model=None``): an input it has no output for is a :class:`SamExportError`.
    Recording (``model`` given: ``TorchBackend`` or ``Sam2TorchBackend``): a new input is run on
    ``model`` and its outputs stored, rounded to :data:`STORED_DTYPE` (the features and low-res
    logits; the scores stay float32); a repeated input is answered from the store, so
    ``parity(recorder, recorder, ...)`` runs the model once per call of the parity loop.

    Attributes:
        encoder_inputs: the 1x3x1024x1024 float32 encoder inputs, one per image.
        features: per image, the stored ``contract.encoder_outputs`` (float32 holding float16 values).
        calls: the stored decoder calls.
    """

    model: Any = None
    contract: C.GraphContract = C.SAM_GRAPHS
    encoder_inputs: list[np.ndarray] = field(default_factory=list)
    features: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    name: str = "references (PyTorch FP32, stored)"
    shares_mask_input: bool = True
    has_decoder_halves: bool = False
    storage_error: dict[str, float] = field(default_factory=lambda: {"embedding_rel_max_abs": 0.0, "logits_rel_max_abs": 0.0})
    _full: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)  # id(stored features[0]) -> model's

    @property
    def embeddings(self) -> list[np.ndarray]:
        """The stored image embeddings (the first feature of each image)."""
        return [features[0] for features in self.features]

    # -- the contract's GraphRunner -----------------------------------------------------------

    def run_encoder(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        for stored, features in zip(self.encoder_inputs, self.features):
            if _same(stored, image):
                return features
        if self.model is None:
            raise SamExportError(
                "the stored references have no encoder output for this encoder input: this samexport "
                "preprocesses the stored images differently from the one that recorded them; "
                "record them again with `samexport references ARTIFACT --checkpoint PATH`"
            )
        if hasattr(self.model, "run_encoder"):
            full = tuple(np.asarray(a, dtype=np.float32) for a in self.model.run_encoder(image))
        else:
            full = (np.asarray(self.model.encode(image), dtype=np.float32),)
        rounded = tuple(_rounded(a) for a in full)
        for f, r in zip(full, rounded):
            self._note("embedding_rel_max_abs", _rel_error(f, r))
        self.encoder_inputs.append(np.array(image, dtype=np.float32, copy=True))
        self.features.append(rounded)
        self._full[id(rounded[0])] = full
        return rounded

    def run_decoder(self, features: tuple[np.ndarray, ...], *prompts: np.ndarray) -> tuple[np.ndarray, ...]:
        index = self._image_index(features[0])
        inputs = tuple(np.asarray(a, dtype=np.float32) for a in prompts)
        for call in self.calls:
            if call.image == index and all(
                a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-5) for a, b in zip(inputs, call.inputs)
            ):
                return call.outputs
        if self.model is None:
            raise SamExportError(
                f"the stored references have no decoder output for a prompt of {inputs[0].shape[0]} x "
                f"{inputs[0].shape[1]} points on image {index}: this samexport transforms the stored "
                "prompts differently from the one that recorded them; record them again with "
                "`samexport references ARTIFACT --checkpoint PATH`"
            )
        full = self._full[id(self.features[index][0])]
        if hasattr(self.model, "run_decoder"):
            outputs = tuple(np.asarray(a, dtype=np.float32) for a in self.model.run_decoder(full, *inputs))
        else:
            outputs = tuple(np.asarray(a, dtype=np.float32) for a in self.model.decode(full[0], *inputs))
        rounded = _rounded(outputs[0])
        self._note("logits_rel_max_abs", _rel_error(outputs[0], rounded))
        call = _Call(index, tuple(a.copy() for a in inputs), (rounded, *outputs[1:]))
        self.calls.append(call)
        return call.outputs

    # -- SAM's Backend --------------------------------------------------------------------------

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self.run_encoder(image)[0]

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        outputs = self.run_decoder(self.features[self._image_index(image_embeddings)], point_coords, point_labels, mask_input, has_mask_input)
        return outputs[0], outputs[1]

    def _image_index(self, embedding: np.ndarray) -> int:
        for index, features in enumerate(self.features):
            if _same(embedding, features[0]):
                return index
        raise SamExportError("decode was given an embedding the references do not hold")  # a bug: encode first

    def _note(self, figure: str, value: float) -> None:
        self.storage_error[figure] = max(self.storage_error[figure], value)


@dataclass(frozen=True)
class References:
    """The stored set of one artifact: the replaying backend and, per image, what parity runs."""

    backend: ReferenceBackend
    images: dict[str, np.ndarray]  # name -> HxWx3 uint8 at the 1024 frame
    prompts: dict[str, tuple[Prompt, ...]]  # image name -> its prompts
    format: int = FORMAT

    @property
    def contract(self) -> C.GraphContract:
        return self.backend.contract

    def groups(self) -> Iterator[tuple[dict[str, np.ndarray], tuple[Prompt, ...]]]:
        """({name: image}, prompts) per image, for the family's parity loop."""
        for name, image in self.images.items():
            yield {name: image}, self.prompts[name]


def _input_sample(encoder_input: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(encoder_input[..., ::INPUT_SAMPLE_STRIDE, ::INPUT_SAMPLE_STRIDE], dtype=np.float32)


def record_references(model: Any, folder: Path) -> ReferencesRecord:
    """Run ``model`` (the FP32 weights: ``TorchBackend`` for SAM, ``Sam2TorchBackend`` for SAM 2.1;
    its ``contract`` chooses the parity loop) on :data:`REFERENCE_SET` and write
    ``references-<sha>.npz`` into ``folder``; returns the manifest's ``references`` section.

    The file is written under a hidden name and renamed when complete; nothing else in ``folder``
    changes (the caller writes the manifest that names it).
    """

    contract = getattr(model, "contract", None) or C.SAM_GRAPHS
    parity = parity_runner(contract)
    recorder = ReferenceBackend(model=model, contract=contract)
    images, source = reference_images()
    prompts = _prompts_by_name()
    started = time.perf_counter()
    for (name, _, _, names) in REFERENCE_SET:
        parity(recorder, recorder, {name: images[name]}, [prompts[n] for n in names], precision="fp32")
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "contract": np.array(contract.name)}
    for index, (name, _, _, names) in enumerate(REFERENCE_SET):
        arrays[f"image_{index}_png"] = _png(images[name])
        for spec, feature in zip(contract.encoder_outputs, recorder.features[index], strict=True):
            arrays[f"feature_{index}_{spec.name}"] = feature.astype(STORED_DTYPE)
        arrays[f"encoder_input_sha256_{index}"] = np.array(_sha(recorder.encoder_inputs[index]))
        arrays[f"encoder_input_sample_{index}"] = _input_sample(recorder.encoder_inputs[index])
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
        for position, (spec, value) in enumerate(zip(contract.decoder_outputs, call.outputs, strict=True)):
            arrays[f"call_{k}_{spec.name}"] = value.astype(STORED_DTYPE) if position == 0 else value
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    name = f"{REFERENCES_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.npz"
    # The temporary name (.NAME.partial-XXXXXXXX) is one samexport.artifacts knows as its own.
    with atomic_file(Path(folder) / name, prefix=f".{name}.partial-", suffix="") as stream:
        stream.write(data)
    return ReferencesRecord(
        file=name,
        format=FORMAT,
        contract=contract.name,
        features=tuple(spec.name for spec in contract.encoder_outputs),
        images={n: ReferenceImage(tuple(images[n].shape[:2]), tuple(p)) for n, _, _, p in REFERENCE_SET},
        image_source=source,
        decoder_calls=len(recorder.calls),
        stored_dtype={
            "images": "uint8 (PNG)", "features": "float16", "low_res_masks": "float16", "iou_predictions": "float32",
            **({"object_score_logits": "float32"} if C.OBJECT_SCORE_LOGITS in contract.decoder_outputs else {}),
        },
        storage_error={k: float(f"{v:.3g}") for k, v in recorder.storage_error.items()},
        reference=f"{model.name} (FP32)",
        seconds=round(time.perf_counter() - started, 1),
        bytes=len(data),
    )


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
    """Read the references ``manifest`` names (format 1 or 2), after checking the file's sha256.

    Raises:
        SamExportError: the artifact has none (built before samexport stored them), the file is
            damaged, was recorded for another model family, or this samexport preprocesses the
            stored images differently.
    """
    folder = Path(folder)
    if not manifest.references:
        raise SamExportError(no_references_message(folder))
    file = manifest.references.file
    verify_artifact(folder, manifest, names=[file])
    if file not in manifest.files:
        raise SamExportError(f"{folder / file} is not in the manifest's file records; rebuild the artifact")
    with np.load(folder / file, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    version = int(arrays.get("format", -1))
    if version not in READABLE_FORMATS:
        raise SamExportError(
            f"{folder / file} has references format {arrays.get('format')}; this samexport reads "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    contract = manifest.contract
    recorded = str(arrays["contract"]) if version >= 2 else C.SAM_GRAPHS.name
    if recorded != contract.name:
        raise SamExportError(
            f"{folder / file} holds references of a {recorded} model, and the artifact holds "
            f"{manifest.variant} ({contract.name}); record them again with `samexport references`"
        )
    preprocess = preprocess_for(contract)
    backend = ReferenceBackend(contract=contract)
    images, prompts = {}, {}
    index = 0
    while f"image_{index}_png" in arrays:
        image = _unpng(arrays[f"image_{index}_png"])
        name = list(manifest.references.images)[index]
        encoder_input = preprocess(image)
        sample = arrays.get(f"encoder_input_sample_{index}")
        if _sha(encoder_input) != str(arrays[f"encoder_input_sha256_{index}"]) and not (
            sample is not None and sample.shape == _input_sample(encoder_input).shape
            and np.allclose(_input_sample(encoder_input), sample, rtol=0, atol=INPUT_SAMPLE_ATOL)
        ):
            raise SamExportError(
                f"this samexport turns the stored reference image {name!r} into another encoder input "
                "than the one that recorded the references; record them again with `samexport references`"
            )
        backend.encoder_inputs.append(encoder_input)
        if version == 1:
            stored = (arrays[f"embedding_{index}"],)
        else:
            stored = tuple(arrays[f"feature_{index}_{spec.name}"] for spec in contract.encoder_outputs)
        backend.features.append(tuple(a.astype(np.float32) for a in stored))
        images[name] = image
        prompts[name] = tuple(_stored_prompt(arrays, str(p)) for p in arrays[f"prompts_{index}"])
        index += 1
    k = 0
    while f"call_{k}_image" in arrays:
        inputs = tuple(arrays[f"call_{k}_{key}"].astype(np.float32) for key in DECODER_FIELDS)
        outputs = tuple(arrays[f"call_{k}_{spec.name}"].astype(np.float32) for spec in contract.decoder_outputs)
        backend.calls.append(_Call(int(arrays[f"call_{k}_image"]), inputs, outputs))
        k += 1
    return References(backend, images, prompts, format=version)


def _stored_prompt(arrays: dict[str, np.ndarray], name: str) -> Prompt:
    get = arrays.get
    return Prompt(
        name, points=get(f"prompt_{name}_points"), labels=get(f"prompt_{name}_labels"),
        boxes=get(f"prompt_{name}_boxes"), refine=bool(get(f"prompt_{name}_refine", False)),
    )
