"""Names, shapes and dtypes shared by the exporter, the engine builder and the runtime.

Every graph input/output name appears here once; other modules import these constants instead of
repeating strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from samexport.errors import SamExportError

IMAGE_SIZE = 1024  # encoder input side, pixels
EMBED_SIZE = 64  # image embedding side (IMAGE_SIZE / patch 16)
EMBED_DIM = 256  # image embedding channels
LOW_RES_MASK_SIZE = 256  # decoder mask logits side (EMBED_SIZE * 4)
NUM_MASK_TOKENS = 4  # token 0: single-mask output, tokens 1..3: multimask output
MASK_THRESHOLD = 0.0  # logits above this are foreground
VIT_WINDOW_SIZE = 14  # SAM ViT's windowed blocks attend within 14x14 tokens (the 64x64 grid padded to 70x70)

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
PIXEL_STD = (58.395, 57.12, 57.375)

# Point labels understood by the prompt encoder.
LABEL_PADDING = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
LABEL_VALUES = (LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)
"""Every label the decoder gives meaning to (segment_anything's ONNX decoder adds the learned
embedding of label i for i in 0..3 and the "not a point" one for -1; any other value would get
no label embedding at all, a silently different prompt)."""

MAX_CROP_N_LAYERS = 3
"""Most crop layers the mask generator takes. Layer ``i`` adds ``(2**i)**2`` crops, each encoded
and decoded with the whole point grid: 3 layers are 1 + 4 + 16 + 64 = 85 crops (85 encoder runs,
1360 decoder batches at 32x32 points, 64 a batch); 5 layers would be 1365 crops and 21,840 batches,
with crops a few pixels wide on small images. The official examples use 1."""

# Numeric formats of an artifact's graphs, and how the encoder's attention can be exported
# (``samexport.export.attention``): defined once, read by build, the manifest, the CLI and the runtime.
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
ATTENTION_MODES: tuple[str, ...] = ("plain", "fused-pattern", "onnx-attention", "plugin")
# ONNX opsets: the export's default, and the lowest per attention mode (``Attention`` is new in
# opset 23); a build without ``--opset`` takes :func:`default_opset`.
DEFAULT_OPSET = 18
MIN_OPSET: dict[str, int] = {"plain": 17, "fused-pattern": 17, "onnx-attention": 23, "plugin": 17}


def default_opset(attention: str) -> int:
    """The opset a build exports with for ``attention`` when none is asked for."""
    return max(DEFAULT_OPSET, MIN_OPSET.get(attention, DEFAULT_OPSET))

# The fused attention plugin node (``--attention plugin``): op type, TensorRT plugin name/namespace.
PLUGIN_NAME = "SamRelPosAttention"
PLUGIN_NAMESPACE = "samexport"
PLUGIN_VERSION = "1"
PLUGIN_DOMAIN = PLUGIN_NAMESPACE
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"  # tensorrt.plugin's "{namespace}::{name}"

ENCODER_ONNX = "encoder.onnx"
DECODER_ONNX = "decoder.onnx"
# The decoder again, cut after the two-way transformer (``samexport.export.wrappers``): the scores
# half gives the IoU predictions and the tokens the masks half turns into mask logits, so the mask
# generator computes masks only for prompts whose predicted IoU can pass its threshold.
DECODER_SCORES_ONNX = "decoder_scores.onnx"
DECODER_MASKS_ONNX = "decoder_masks.onnx"
GRAPH_FILES = (ENCODER_ONNX, DECODER_ONNX, DECODER_SCORES_ONNX, DECODER_MASKS_ONNX)
# A graph's weights, when they go to ONNX external data, are written to "<graph>.data" (the name the
# torch exporter and samexport.precision give it). A build writes these names and no others.
GRAPH_DATA_FILES = tuple(f"{name}.data" for name in GRAPH_FILES)
MANIFEST = "manifest.json"

MAX_IMAGE_PIXELS = 1 << 28
"""Largest image samexport reads or predicts for: 268 MP (16384 x 16384). Pillow refuses images over
179 MP as possible decompression bombs; real photos reach that (stitched panoramas, scans), so
samexport allows up to 2**28 pixels, where the RGB array alone is 768 MiB and each full-size mask
the predictor returns another 256 MiB, and refuses larger ones with a clear message (image files in
``samexport.imageio``, sizes given with an embedding in ``samexport.validate.image_size``)."""

# Dynamic axis names.
PROMPT_BATCH = "num_prompts"  # B: prompts decoded in one call
NUM_POINTS = "num_points"  # N: points per prompt (box corners count as two points)
# M: mask inputs, B (one per prompt) or 1 (shared by all B prompts: the runtime passes one zero mask
# for a batch without mask prompts, so the image-side work is done once, not B times).
NUM_MASKS = "num_masks"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


# Encoder: normalised, zero-padded RGB image in, embedding out.
IMAGE = TensorSpec("image", "float32", (1, 3, IMAGE_SIZE, IMAGE_SIZE))
IMAGE_EMBEDDINGS = TensorSpec("image_embeddings", "float32", (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE))

# Decoder.
POINT_COORDS = TensorSpec("point_coords", "float32", (PROMPT_BATCH, NUM_POINTS, 2))  # 1024 frame
POINT_LABELS = TensorSpec("point_labels", "float32", (PROMPT_BATCH, NUM_POINTS))
MASK_INPUT = TensorSpec("mask_input", "float32", (NUM_MASKS, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE))
HAS_MASK_INPUT = TensorSpec("has_mask_input", "float32", (NUM_MASKS,))
IOU_PREDICTIONS = TensorSpec("iou_predictions", "float32", (PROMPT_BATCH, NUM_MASK_TOKENS))
LOW_RES_MASKS = TensorSpec(
    "low_res_masks", "float32", (PROMPT_BATCH, NUM_MASK_TOKENS, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
)
# Between the two halves of the split decoder.
MASK_TOKENS = TensorSpec("mask_tokens", "float32", (PROMPT_BATCH, NUM_MASK_TOKENS, EMBED_DIM))
IMAGE_TOKENS = TensorSpec("image_tokens", "float32", (PROMPT_BATCH, EMBED_SIZE * EMBED_SIZE, EMBED_DIM))

ENCODER_INPUTS = (IMAGE,)
ENCODER_OUTPUTS = (IMAGE_EMBEDDINGS,)
DECODER_INPUTS = (IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS, MASK_INPUT, HAS_MASK_INPUT)
DECODER_OUTPUTS = (LOW_RES_MASKS, IOU_PREDICTIONS)  # (masks, iou), as the official mask decoder
SCORES_INPUTS = DECODER_INPUTS
SCORES_OUTPUTS = (IOU_PREDICTIONS, MASK_TOKENS, IMAGE_TOKENS)
MASKS_INPUTS = (MASK_TOKENS, IMAGE_TOKENS)
MASKS_OUTPUTS = (LOW_RES_MASKS,)

# SAM 2.1's graphs (``samexport.export.sam2_onnx``): the encoder also gives the two
# high-resolution maps after the decoder's conv_s0 / conv_s1 (once per image), the decoder takes
# them and also scores the object. Image embedding: ``no_mem_embed`` added.
HIGH_RES_FEATS_0 = TensorSpec("high_res_feats_0", "float32", (1, EMBED_DIM // 8, 4 * EMBED_SIZE, 4 * EMBED_SIZE))
HIGH_RES_FEATS_1 = TensorSpec("high_res_feats_1", "float32", (1, EMBED_DIM // 4, 2 * EMBED_SIZE, 2 * EMBED_SIZE))
OBJECT_SCORE_LOGITS = TensorSpec("object_score_logits", "float32", (PROMPT_BATCH, 1))
SAM2_ENCODER_INPUTS = (IMAGE,)
SAM2_ENCODER_OUTPUTS = (IMAGE_EMBEDDINGS, HIGH_RES_FEATS_0, HIGH_RES_FEATS_1)
SAM2_DECODER_INPUTS = (
    IMAGE_EMBEDDINGS, HIGH_RES_FEATS_0, HIGH_RES_FEATS_1, POINT_COORDS, POINT_LABELS, MASK_INPUT, HAS_MASK_INPUT,
)
SAM2_DECODER_OUTPUTS = (LOW_RES_MASKS, IOU_PREDICTIONS, OBJECT_SCORE_LOGITS)


@dataclass(frozen=True)
class GraphContract:
    """What a model family's two graphs take and give: the one record that build, manifest and
    runtime read instead of asking which model they hold.

    The encoder turns ``image`` into ``image_features`` (its outputs, in order), which the runtime
    keeps per image and feeds, in the same order, to the decoder before the prompt inputs.

    Attributes:
        name: ``"sam"`` (SAM, MobileSAM) or ``"sam2"`` (SAM 2.1's image path).
        encoder_outputs: the per-image features, e.g. ``(image_embeddings,)``.
        prompt_inputs: the decoder's per-prompt inputs, after the features.
        decoder_outputs: low-res mask logits and IoU first, then any further outputs.
        decoder_halves: whether the build also writes :data:`DECODER_SCORES_ONNX` /
            :data:`DECODER_MASKS_ONNX`.
    """

    name: str
    encoder_outputs: tuple[TensorSpec, ...]
    prompt_inputs: tuple[TensorSpec, ...]
    decoder_outputs: tuple[TensorSpec, ...]
    decoder_halves: bool

    encoder_inputs = (IMAGE,)

    @property
    def decoder_inputs(self) -> tuple[TensorSpec, ...]:
        return (*self.encoder_outputs, *self.prompt_inputs)


PROMPT_INPUTS = (POINT_COORDS, POINT_LABELS, MASK_INPUT, HAS_MASK_INPUT)
SAM_GRAPHS = GraphContract("sam", ENCODER_OUTPUTS, PROMPT_INPUTS, DECODER_OUTPUTS, decoder_halves=True)
SAM2_GRAPHS = GraphContract("sam2", SAM2_ENCODER_OUTPUTS, PROMPT_INPUTS, SAM2_DECODER_OUTPUTS, decoder_halves=False)
GRAPH_CONTRACTS = {c.name: c for c in (SAM_GRAPHS, SAM2_GRAPHS)}


# -- inference backends ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendInfo:
    """One inference backend: the single place its name, needs and help text are written.

    Attributes:
        name: what ``--backend``, ``open_backend`` and ``BenchConfig.backends`` take.
        help: a few words for ``--help``.
        extra: the pip extra that installs what it needs (``samexport[extra]``); None: the base
            install has it.
        modules: the Python modules it imports (``samexport doctor`` checks them).
        precisions: artifact precisions it runs.
        opens_artifact: it runs an artifact directory (False: the torch reference, which runs the
            checkpoint itself and serves parity and bench as the reference).
        onnxruntime_device: for ONNX Runtime backends, the device asked for ("auto": CUDA when
            present, else CPU); None for the others.
        needs_gpu: it runs only on an NVIDIA GPU (the dataset jobs give each Ray worker one).
        options: the ``key=value`` options its spec takes after a colon
            (``openvino:device=GPU,precision=f32``): key -> the valid values (empty: any text,
            checked by the backend when it opens).
    """

    name: str
    help: str
    extra: str | None
    modules: tuple[str, ...]
    precisions: tuple[Precision, ...] = PRECISIONS
    opens_artifact: bool = True
    onnxruntime_device: Literal["auto", "cpu", "cuda"] | None = None
    needs_gpu: bool = False
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()


# OpenVINO's inference precision (its INFERENCE_PRECISION_HINT): f32; bf16 (CPUs with AVX512_BF16
# or AMX); f16 (GPUs, NPUs); auto: the fastest the device reports (bf16, then f16, else f32).
InferencePrecision = Literal["f32", "bf16", "f16", "auto"]
INFERENCE_PRECISIONS: tuple[str, ...] = get_args(InferencePrecision)
OPENVINO_DEFAULT_DEVICE = "CPU"
# f32 by default: precision lives in the graph, so an fp32 artifact gives fp32 figures (held to the
# artifact's tolerances) unless the user asks for bf16 knowingly (docs/openvino.md).
OPENVINO_DEFAULT_PRECISION = "f32"

BACKENDS: dict[str, BackendInfo] = {
    b.name: b
    for b in (
        BackendInfo("torch", "the PyTorch reference, from the checkpoint", "torch", ("torch",),
                    precisions=("fp32",), opens_artifact=False),
        BackendInfo("onnxruntime", "ONNX Runtime, its CUDA provider when present", None, ("onnxruntime",),
                    onnxruntime_device="auto"),
        BackendInfo("onnxruntime-cpu", "ONNX Runtime on the CPU", None, ("onnxruntime",), onnxruntime_device="cpu"),
        BackendInfo("onnxruntime-cuda", "ONNX Runtime's CUDA provider", "onnxruntime-gpu", ("onnxruntime",),
                    onnxruntime_device="cuda", needs_gpu=True),
        BackendInfo("tensorrt", "the artifact's TensorRT engines, on an NVIDIA GPU", "tensorrt",
                    ("tensorrt", "polygraphy"), needs_gpu=True),
        BackendInfo("openvino", "OpenVINO, on the CPU unless openvino:device=GPU|NPU|AUTO; "
                    "precision=f32|bf16|f16|auto, default f32", "openvino", ("openvino",),
                    options=(("device", ()), ("precision", INFERENCE_PRECISIONS))),
    )
}
# Not a backend: the TensorRT engines when usable here, else ONNX Runtime (CUDA), else on a CPU
# with OpenVINO installed the encoder on OpenVINO f32 and the decoder on ONNX Runtime.
AUTO_BACKEND = "auto"
AUTO_BACKEND_HELP = "TensorRT engines if usable, else ONNX Runtime; on a CPU with OpenVINO, its encoder"
# What SamPredictor, open_backend, the dataset jobs and --backend of predict / segment-all take.
ARTIFACT_BACKENDS: tuple[str, ...] = (AUTO_BACKEND, *(b.name for b in BACKENDS.values() if b.opens_artifact))
# What bench times: every backend that names its device ("onnxruntime" would time one of the two).
BENCH_BACKENDS: tuple[str, ...] = tuple(b.name for b in BACKENDS.values() if b.onnxruntime_device != "auto")


def backends_help(names: tuple[str, ...]) -> str:
    """``--help`` text listing ``names`` with what each is, e.g. ``auto (...), tensorrt (...)``."""
    helps = {AUTO_BACKEND: AUTO_BACKEND_HELP, **{b.name: b.help for b in BACKENDS.values()}}
    return ", ".join(f"{name} ({helps[name]})" for name in names) + "."


def split_backend(spec: str) -> tuple[str, dict[str, str]]:
    """``"openvino:device=GPU,precision=f32"`` -> ``("openvino", {"device": "GPU", "precision":
    "f32"})``; a plain name has no options. Keys and values are checked by :func:`check_backend`."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip() or key.strip() in options:
            raise SamExportError(
                f"backend {spec!r}: options are key=value pairs separated by commas, each key once "
                "(e.g. openvino:device=CPU,precision=bf16)"
            )
        options[key.strip()] = value.strip()
    return name, options


def check_backend(spec: str, valid: tuple[str, ...]) -> str:
    """``spec`` if its name is in ``valid`` and its options are ones that backend takes, else a
    ``SamExportError`` listing the valid names (or the backend's options)."""
    name, options = split_backend(spec)
    if name not in valid:
        raise SamExportError(f"unknown backend {name!r}; valid: {', '.join(valid)}")
    accepted = dict(BACKENDS[name].options) if name in BACKENDS else {}
    for key, value in options.items():
        if key not in accepted:
            takes = ", ".join(accepted) if accepted else "none"
            raise SamExportError(f"backend {name!r} has no option {key!r} (its options: {takes})")
        if accepted[key] and value not in accepted[key]:
            raise SamExportError(f"backend {name!r}: {key}={value!r} is not one of {', '.join(accepted[key])}")
    return spec
