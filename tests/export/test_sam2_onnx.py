"""SAM 2.1's exported graphs (samexport.export.sam2_onnx) on ONNX Runtime against the torch model,
which tests/models/test_sam2.py holds to the official package."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from samexport import constants as C
from samexport.sam2_checkpoint import load_sam2
from samexport.sam2_transforms import preprocess_sam2, sam2_prompt_points
from samexport.testing import make_image, save_random_checkpoint

# Hiera-T's encoder exports in tens of seconds on a quiet 2-core CPU (minutes under load).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, encoder session, decoder session, graph folder) for sam2.1_hiera_tiny."""
    from samexport.export.sam2_onnx import export_sam2_decoder, export_sam2_encoder

    folder = tmp_path_factory.mktemp("sam2_onnx")
    model = load_sam2(save_random_checkpoint("sam2.1_hiera_tiny", folder / "tiny.pt"))
    encoder = export_sam2_encoder(model, folder / C.ENCODER_ONNX)
    decoder = export_sam2_decoder(model, folder / C.DECODER_ONNX)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (encoder, decoder)]
    return model, *sessions, folder


def _scaled_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / max(1.0, np.abs(reference).max()))


def test_graph_contracts(exported):
    """Input and output names, in order, and the dynamic prompt axes."""
    _, _, _, folder = exported
    for name, inputs, outputs in (
        (C.ENCODER_ONNX, C.SAM2_ENCODER_INPUTS, C.SAM2_ENCODER_OUTPUTS),
        (C.DECODER_ONNX, C.SAM2_DECODER_INPUTS, C.SAM2_DECODER_OUTPUTS),
    ):
        graph = onnx.load(str(folder / name), load_external_data=False).graph
        assert [i.name for i in graph.input] == [s.name for s in inputs]
        assert [o.name for o in graph.output] == [s.name for s in outputs]
    coords = onnx.load(str(folder / C.DECODER_ONNX)).graph.input[3].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in coords] == [C.PROMPT_BATCH, C.NUM_POINTS, 2]


def test_onnxruntime_equals_torch(exported):
    """Encoder outputs, and the decoder's four-token logits, IoU and object scores for prompt
    batches of several sizes (points, boxes + points, a mask input), against the torch model."""
    model, encoder, decoder, _ = exported
    image = make_image(700, 1100, seed=5)
    pixels = preprocess_sam2(image)
    features = encoder.run(None, {C.IMAGE.name: pixels})
    with torch.no_grad():
        reference = model.encode(torch.from_numpy(pixels))
    for ours, theirs, spec in zip(features, reference, C.SAM2_ENCODER_OUTPUTS):
        assert ours.shape == spec.shape
        assert _scaled_error(ours, theirs.numpy()) <= 1e-5, spec.name

    rng = np.random.default_rng(0)
    cases = [
        sam2_prompt_points((700, 1100), point_coords=np.float32([[550, 300]]), point_labels=[1]),
        sam2_prompt_points((700, 1100), box=np.float32([[100, 80, 700, 600], [300, 200, 1000, 650], [0, 0, 1100, 700]]),
                           point_coords=np.float32([[400, 300]]), point_labels=[0]),
        sam2_prompt_points((700, 1100), point_coords=rng.uniform(0, 700, (2, 4, 2)).astype(np.float32),
                           point_labels=np.int64([[1, 0, 1, 1], [0, 1, 1, 0]])),
    ]
    for coords, labels in cases:
        batch = coords.shape[0]
        mask = rng.normal(0, 3, (batch, 1, 256, 256)).astype(np.float32)
        has_mask = (np.arange(batch) % 2).astype(np.float32)  # every other prompt has a mask
        feed = dict(zip((s.name for s in C.SAM2_DECODER_INPUTS),
                        (*(f for f in features), coords, labels, mask, has_mask)))
        outputs = decoder.run(None, feed)
        with torch.no_grad():
            expected = model.decode(*(torch.from_numpy(f) for f in features), torch.from_numpy(coords),
                                    torch.from_numpy(labels), torch.from_numpy(mask), torch.from_numpy(has_mask))
        for ours, theirs, spec in zip(outputs, expected, C.SAM2_DECODER_OUTPUTS):
            assert ours.shape == (batch, *spec.shape[1:]), spec.name
            assert _scaled_error(ours, theirs.numpy()) <= 1e-4, (spec.name, coords.shape)
