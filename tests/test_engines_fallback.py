"""``samexport engines --fallback``: the FP32 attention form derived on the device
(``samexport.engines.fallback``), and the fallback when the primary plans fail verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
from test_attention_fp32 import classify_matmuls, value_types

from samexport import constants as C
from samexport.errors import MissingExtraError, SamExportError
from samexport.utils import sha256_file

FLOAT = onnx.TensorProto.FLOAT


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones included) -> its sha256: "byte for byte as it was"."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_fp16_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    from samexport.pipeline import build

    out = tmp_path_factory.mktemp("artifacts") / "tiny-fp16"
    return build("tiny", checkpoint=tiny_checkpoint, output=out, precision="fp16", engines="skip").artifact_dir


def test_form_names_agree():
    from samexport.engines.fallback import FP32_ATTENTION_FORM
    from samexport.precision.attention_fp32 import FORM

    assert FORM == FP32_ATTENTION_FORM


def test_derived_graphs_live_outside_the_artifact(tiny_fp16_artifact, tiny_sam):
    from samexport.engines.fallback import fp32_attention_graphs

    before = snapshot(tiny_fp16_artifact)
    steps = []
    with fp32_attention_graphs(tiny_fp16_artifact, on_step=steps.append) as (graphs, record):
        assert tiny_fp16_artifact not in graphs.parents
        assert sorted(p.name for p in graphs.iterdir()) == [C.DECODER_ONNX, C.ENCODER_ONNX]
        assert (graphs / C.DECODER_ONNX).read_bytes() == (tiny_fp16_artifact / C.DECODER_ONNX).read_bytes()
        model = onnx.load(str(graphs / C.ENCODER_ONNX))
        types = value_types(model)
        _, products = classify_matmuls(model)
        assert len(products) == 2 * len(tiny_sam.image_encoder.blocks)
        assert all(types[n.output[0]] == FLOAT for n in products)
        assert record["form"] == "fp32-attention" and record["attention_cores"] == len(tiny_sam.image_encoder.blocks)
        assert record["derived_from_sha256"] == sha256_file(tiny_fp16_artifact / C.ENCODER_ONNX)
        assert record["sha256"] == sha256_file(graphs / C.ENCODER_ONNX)
    assert not graphs.exists()
    assert snapshot(tiny_fp16_artifact) == before
    assert steps and "FP32 attention form" in steps[0]


def test_fp32_artifact_has_no_fallback(tiny_artifact):
    from samexport.engines.fallback import fp32_attention_graphs

    before = snapshot(tiny_artifact)
    with pytest.raises(SamExportError, match="no attention core in FP16"):
        with fp32_attention_graphs(tiny_artifact):
            pass
    assert snapshot(tiny_artifact) == before


def test_missing_onnx_is_named(monkeypatch):
    import importlib.util

    from samexport.engines import fallback

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(MissingExtraError, match="pip install onnx"):
        fallback.require_onnx()
