"""MobileSAM (TinyViT encoder) end to end, against the official ``mobile_sam`` package.

The oracle is ``mobile_sam.sam_model_registry["vit_t"]`` with seeded random weights (every
parameter perturbed, BatchNorm running mean and variance too: ``samexport.testing.random_state_dict``),
saved with ``torch.save(state_dict)`` as ``mobile_sam.pt`` is and loaded through samexport's
checkpoint code. Full size: TinyViT-5M is small enough for CPU.

- the torch model: same state dict, same embedding and masks as the official model;
- the fp32 artifact (``samexport build --variant vit_t``, BatchNorm folded) against the official
  ``SamPredictor`` at ``tests/runtime/test_predictor.py``'s tolerances, over the prompt kinds and several aspect
  ratios, and against the official ``SamAutomaticMaskGenerator`` as ``tests/amg/test_generator.py`` does;
- fp16 and int8 (both recipes) graphs against the official model at ``samexport.parity``'s
  tolerances (the ones ``build`` checks vit_b against) on the whole prompt suite;
- every graph builds in TensorRT-RTX; ``predict``, ``segment-all``, ``parity`` and ``bench`` run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from support import needs_rtx, prompt_suite
from typer.testing import CliRunner

from samexport import constants as C
from samexport.artifacts import onnxruntime_memory_arena
from samexport.errors import SamExportError
from samexport.testing import make_image, mask_iou
from samexport.variants import VARIANTS

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # timm re-registers TinyViT model names on import
    mobile_sam = pytest.importorskip("mobile_sam")

pytestmark = [
    pytest.mark.slow,  # the full-size MobileSAM checkpoint, exported (~30 s) and run
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore:__array__ implementation:DeprecationWarning"),
]

VARIANT = VARIANTS["mobile_sam"]
# (height, width): landscape, portrait, and an extreme strip.
SIZES = [(480, 713), (640, 480), (37, 1000)]
runner = CliRunner()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(mobile_sam_checkpoint) -> Path:
    return mobile_sam_checkpoint  # conftest: random_state_dict("mobile_sam") saved as mobile_sam.pt


@pytest.fixture(scope="module")
def official(checkpoint):
    """The official model from its own registry, weights loaded as its ``build_sam_vit_t`` does."""
    model = mobile_sam.sam_model_registry["vit_t"]()
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()  # after loading: the official attention caches its bias table in eval()


@pytest.fixture(scope="module")
def ours(checkpoint):
    from samexport.checkpoint import load_sam

    return load_sam(checkpoint, "vit_t")


@pytest.fixture(scope="module")
def artifact(mobile_sam_artifact) -> Path:
    """``samexport build --variant vit_t`` (fp32, quick parity on, no engines): conftest's, shared."""
    return mobile_sam_artifact


@pytest.fixture(scope="module")
def graphs(artifact, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """precision -> (encoder.onnx, decoder.onnx) made from the fp32 artifact as ``build`` does."""
    from support import write_calibration_folder

    from samexport.precision.fp16 import convert_to_fp16
    from samexport.precision.int8 import quantize_encoder_int8
    from samexport.precision.recipes import recipe_for

    folder = tmp_path_factory.mktemp("mobile_sam-graphs")
    encoder, decoder = artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX
    decoder16 = convert_to_fp16(decoder, folder / "decoder_fp16.onnx")
    calib = write_calibration_folder(folder / "calib", ("coffee", "chelsea"))
    result = {
        "fp32": (encoder, decoder),
        "fp16": (convert_to_fp16(encoder, folder / "encoder_fp16.onnx", fp32_ops=VARIANT.fp32_ops), decoder16),
    }
    for target in ("tensorrt", "onnxruntime"):
        int8 = quantize_encoder_int8(
            encoder, folder / f"encoder_int8_{target}.onnx", calib, recipe=recipe_for(target, VARIANT.family), fp32_ops=VARIANT.fp32_ops
        )
        result[f"int8-{target}"] = (int8, decoder16)
    return result


class OfficialBackend:
    """The official model behind samexport's ``Backend`` interface, for ``run_parity``: the
    official image encoder, prompt encoder (``_embed_points`` for points, ``_embed_boxes`` for
    the box corners that ``SamPredictor`` puts last, ``_embed_masks``) and all four masks of
    ``MaskDecoder.predict_masks``. Results are cached per input, so the parametrized tests that
    compare several artifacts with it compute each reference once."""

    name = "official mobile_sam"

    def __init__(self, model) -> None:
        self.model = model
        self._cache: dict[str, tuple] = {}

    @staticmethod
    def _key(*arrays: np.ndarray) -> str:
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(str(a.shape).encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()

    def encode(self, image: np.ndarray) -> np.ndarray:
        key = self._key(image)
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = self.model.image_encoder(torch.from_numpy(image)).numpy()
        return self._cache[key]

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        key = self._key(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        if key not in self._cache:
            self._cache[key] = self._decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        return self._cache[key]

    def _decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.model.prompt_encoder
        batch = len(point_coords)
        coords, labels = torch.from_numpy(point_coords), torch.from_numpy(point_labels)
        with torch.no_grad():
            parts = []
            has_box = bool((labels[:, -1] == C.LABEL_BOX_BOTTOM_RIGHT).all()) if labels.shape[1] >= 2 else False
            points = coords.shape[1] - 2 if has_box else coords.shape[1]
            if points:
                parts.append(pe._embed_points(coords[:, :points], labels[:, :points], pad=False))
            if has_box:
                parts.append(pe._embed_boxes(coords[:, points:].reshape(batch, 4)))
            sparse = torch.cat(parts, dim=1)
            no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *pe.image_embedding_size)
            has_mask = torch.from_numpy(has_mask_input).reshape(-1, 1, 1, 1) > 0
            dense = torch.where(has_mask, pe._embed_masks(torch.from_numpy(mask_input)), no_mask)
            masks, iou = self.model.mask_decoder.predict_masks(
                image_embeddings=torch.from_numpy(image_embeddings), image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            )
        return masks.numpy(), iou.numpy()


@pytest.fixture(scope="module")
def official_backend(official) -> OfficialBackend:
    return OfficialBackend(official)


# -- the torch model ---------------------------------------------------------------------------


def test_checkpoint_loads_unchanged_and_torch_equals_official(checkpoint, official, ours):
    state, theirs = ours.state_dict(), official.state_dict()
    assert set(state) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(state[key], value), key
    assert any(k.endswith("running_var") for k in state) and any(k.endswith("attention_biases") for k in state)

    from samexport.export.wrappers import DecoderGraph
    from samexport.transforms import preprocess

    image = torch.from_numpy(preprocess(make_image(480, 640, seed=2)))
    coords = torch.rand(3, 2, 2) * 1024
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # (box corners: tests/models/test_models.py)
    with torch.no_grad():
        emb_official = official.image_encoder(image)
        emb = ours.image_encoder(image)
        assert (emb - emb_official).abs().max() <= 1e-5 * emb_official.abs().max()
        masks, iou = DecoderGraph(ours)(emb, coords, labels, torch.zeros(3, 1, 256, 256), torch.zeros(3))
        # the official ``prompt_encoder(...)`` would append a padding point: no padding here
        sparse = official.prompt_encoder._embed_points(coords, labels, pad=False)
        _, dense = official.prompt_encoder(points=None, boxes=None, masks=None)
        masks_o, iou_o = official.mask_decoder.predict_masks(emb_official, official.prompt_encoder.get_dense_pe(), sparse, dense)
    torch.testing.assert_close(masks, masks_o, rtol=0, atol=5e-5)
    torch.testing.assert_close(iou, iou_o, rtol=0, atol=1e-5)
    foreground = (masks > 0).float().mean(dim=(2, 3))
    assert ((foreground > 0.02) & (foreground < 0.98)).all(), foreground  # masks are not trivial


def test_attention_modes_agree(ours):
    """The modes TinyViT has compute the same encoder; the others are errors, not no-ops."""
    from samexport.export.attention import attention_mode

    image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = ours.image_encoder(image)
        for mode in VARIANT.family.attention_modes:
            with attention_mode(ours.image_encoder, mode):
                out = ours.image_encoder(image)
            assert (out - plain).abs().max() <= 1e-5 * plain.abs().max(), mode
    assert ours.image_encoder.layers[1].blocks[0].attn.mode == "plain"  # restored
    with (
        pytest.raises(SamExportError, match="--attention plugin does not apply to tiny_vit encoders"),
        attention_mode(ours.image_encoder, "plugin"),
    ):
        pass


@pytest.mark.parametrize("mode", [m for m in VARIANT.family.attention_modes if m != "plain"])
def test_attention_mode_graphs_match_torch(mode, ours, tmp_path):
    """The other modes' exported graphs on ONNX Runtime (~40 s each)."""
    from support import session

    from samexport.export.to_onnx import export_encoder

    path = export_encoder(ours, tmp_path / "encoder.onnx", opset=C.default_opset(mode), attention=mode)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("Attention" in ops) == (mode == "onnx-attention") and "BatchNormalization" not in ops
    image = np.random.default_rng(5).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    with torch.no_grad():
        expected = ours.image_encoder(torch.from_numpy(image)).numpy()
    got = session(path).run(None, {C.IMAGE.name: image})[0]
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()


def test_build_refuses_an_attention_mode_that_does_not_apply(checkpoint, tmp_path):
    from samexport.pipeline import build

    with pytest.raises(SamExportError, match="plugin does not apply to tiny_vit.*plain, fused-pattern, onnx-attention"):
        build("mobile_sam", checkpoint=checkpoint, output=tmp_path / "x", attention="plugin", engines="skip")
    assert not (tmp_path / "x").exists()


# -- the exported graphs -----------------------------------------------------------------------


def test_export_folds_batchnorm_and_matches_torch(artifact, ours):
    from samexport.runtime.backends import OnnxRuntimeBackend
    from samexport.transforms import preprocess

    model = onnx.load(str(artifact / C.ENCODER_ONNX))
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["variant"] == "mobile_sam" and manifest["parity"]["passed"]

    image = preprocess(make_image(300, 500, seed=7))
    backend = OnnxRuntimeBackend(artifact / C.ENCODER_ONNX, artifact / C.DECODER_ONNX, device="cpu")
    with torch.no_grad():
        expected = ours.image_encoder(torch.from_numpy(image)).numpy()
    assert np.abs(backend.encode(image) - expected).max() <= 2e-5 * np.abs(expected).max()


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_fp32_matches_official_predictor(artifact, official, size):
    """``tests/runtime/test_predictor.py``'s checks and tolerances, against ``mobile_sam.SamPredictor``."""
    from samexport.runtime.predictor import SamPredictor

    image = make_image(*size, seed=size[0])
    reference = mobile_sam.SamPredictor(official)
    reference.set_image(image)
    predictor = SamPredictor(artifact)
    predictor.set_image(image)

    emb, emb_ref = predictor.embedding, reference.get_image_embedding().numpy()
    assert np.abs(emb - emb_ref).max() <= 2e-5 * np.abs(emb_ref).max()
    for prompt in prompt_suite(*size, np.random.default_rng(size[1]), ten_points=False):
        masks, scores, low_res = predictor.predict(**prompt)
        masks_ref, scores_ref, low_res_ref = reference.predict(**prompt)
        assert masks.shape == masks_ref.shape and masks.dtype == masks_ref.dtype
        assert np.abs(scores - scores_ref).max() <= 1e-5
        assert np.abs(low_res - low_res_ref).max() <= 5e-5
        if prompt.get("return_logits"):
            assert np.abs(masks - masks_ref).max() <= 5e-5
        else:
            assert min(mask_iou(a, b) for a, b in zip(masks, masks_ref)) >= 0.999

    if size == SIZES[0]:  # predict_batch against the official predict_torch, once
        rng = np.random.default_rng(4)
        boxes = np.sort(rng.uniform(0, 480, (8, 2, 2)), axis=1).reshape(8, 4).astype(np.float32)
        masks, scores, low_res = predictor.predict_batch(boxes=boxes, multimask_output=True)
        with torch.no_grad():
            masks_ref, scores_ref, low_res_ref = reference.predict_torch(
                None, None, torch.from_numpy(reference.transform.apply_boxes(boxes, reference.original_size)),
                multimask_output=True,
            )
        assert np.abs(scores - scores_ref.numpy()).max() <= 1e-5
        assert np.abs(low_res - low_res_ref.numpy()).max() <= 5e-5
        ious = [mask_iou(a, b) for a, b in zip(masks.reshape(-1, *size), masks_ref.numpy().reshape(-1, *size))]
        assert min(ious) >= 0.999


@pytest.fixture(scope="module")
def parity_images() -> dict[str, np.ndarray]:
    from support import HELD_OUT_PHOTO, sample_photo

    return {HELD_OUT_PHOTO: sample_photo(HELD_OUT_PHOTO), "portrait": make_image(700, 450, seed=11)}


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8-tensorrt", "int8-onnxruntime"])
def test_artifacts_match_official_at_parity_tolerances(name, graphs, official_backend, parity_images):
    """``samexport.parity`` (the whole prompt suite) with the official model as the reference,
    at the tolerances of the graphs' precision."""
    from samexport.parity import run_parity
    from samexport.runtime.backends import OnnxRuntimeBackend

    encoder, decoder = graphs[name]
    precision = name.split("-")[0]
    candidate = OnnxRuntimeBackend(encoder, decoder, device="cpu", memory_arena=onnxruntime_memory_arena(precision))
    report = run_parity(official_backend, candidate, parity_images, precision=precision)
    assert report.passed, [c.to_dict() for c in report.failures]
    if precision == "int8":
        assert report.summary["embedding_cosine"] >= 0.995


def test_amg_matches_official(artifact, official):
    """As ``tests/amg/test_generator.py`` shows it for random weights: NMS off, every mask passing the filters
    is compared with one of the official ``SamAutomaticMaskGenerator``'s."""
    from support.official import assert_same_masks

    from samexport.amg import AutomaticMaskGenerator
    from samexport.runtime.predictor import SamPredictor

    scene = make_image(240, 360, seed=3)
    params = dict(points_per_side=4, pred_iou_thresh=0.02, stability_score_offset=0.05,
                  stability_score_thresh=0.09, box_nms_thresh=1.0)
    ours = AutomaticMaskGenerator(SamPredictor(artifact), **params).generate(scene)
    with torch.no_grad():
        theirs = mobile_sam.SamAutomaticMaskGenerator(official, **params).generate(scene)
    assert len(theirs) >= 5
    assert_same_masks(ours, theirs)


@needs_rtx
@pytest.mark.parametrize("name", ["fp32", "fp16", "int8-tensorrt", "int8-onnxruntime"])
def test_rtx_builds(name, graphs, tmp_path):
    from samexport.engines.builder import BuildConfig, build_engine

    config = BuildConfig()
    encoder, decoder = graphs[name]
    info = build_engine(encoder, tmp_path / "encoder.plan", config, flavour="tensorrt_rtx")
    assert info.plan_bytes > 0 and info.strongly_typed
    assert [o["name"] for o in info.outputs] == [C.IMAGE_EMBEDDINGS.name]
    if name in ("fp32", "fp16"):  # the int8 builds share the fp16 decoder
        info = build_engine(decoder, tmp_path / "decoder.plan", config, profiles=[config.decoder_profile()],
                            flavour="tensorrt_rtx")
        assert {i["name"]: i["shape"] for i in info.inputs}[C.POINT_LABELS.name] == [-1, -1]


# -- the commands --------------------------------------------------------------------------------


def test_cli_segment_all_parity_and_bench(artifact, checkpoint, tmp_path):
    from samexport.cli import app

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_image(120, 160, seed=5)).save(images / "scene.png")

    masks_json = tmp_path / "masks.json"
    result = runner.invoke(app, ["segment-all", str(artifact), str(images / "scene.png"), "--output", str(masks_json),
                                 "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(masks_json.read_text())["annotations"]

    result = runner.invoke(app, ["parity", str(artifact), "--checkpoint", str(checkpoint), "--images", str(images), "--quick"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output

    bench_json = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(artifact), "--backend", "onnxruntime-cpu", "--images", str(images),
                                 "--runs", "1", "--warmup", "0", "--batch-sizes", "1", "--no-peer", "--json", str(bench_json)])
    assert result.exit_code == 0, result.output
    data = json.loads(bench_json.read_text())
    assert data["model"]["variant"] == "mobile_sam"
    encoder = next(b for b in data["backends"] if "stages" in b)["encoder"]
    assert encoder["gflop"] == pytest.approx(2 * VARIANT.family.encoder_macs(VARIANT.encoder) / 1e9, abs=0.1)
