"""``benchmarks/attention_forms.py``: the attention forms it times compute SAM's attention.

The folded forms are new maths (the decomposed bias as extra query and key features), so they
are checked here against the model's own ``Attention.forward``, in torch and as the ONNX graphs
the benchmark times, on a small grid.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_forms.py"


@pytest.fixture(scope="module")
def forms():
    spec = importlib.util.spec_from_file_location("attention_forms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_grid_one_hots_pick_the_key_row_and_column(forms):
    one_hots = forms.key_grid_one_hots(3)  # 9 keys x (3 rows + 3 columns)
    assert one_hots.shape == (9, 6)
    assert one_hots[5].tolist() == [0, 1, 0, 0, 0, 1]  # key 5 is row 1, column 2
    assert (one_hots.sum(dim=1) == 2).all()


def test_plain_form_is_the_models_attention(forms):
    attn, _, _ = forms.random_block(grid=4, windows=2)
    x = torch.randn(2, 4, 4, forms.HEADS * forms.HEAD_DIM)
    with torch.no_grad():
        expected = attn(x)
        qkv = attn.qkv(x).reshape(2, 16, 3, forms.HEADS, forms.HEAD_DIM)
        for form in forms.TORCH_FORMS:
            got = attn.proj(forms.Core(attn, form, 4)(qkv).reshape(2, 4, 4, -1))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=form)


@pytest.mark.parametrize("form", ["folded", "folded-mha", "no-bias-mha"])
def test_onnx_forms_against_the_torch_attention(forms, form, tmp_path):
    import onnxruntime as ort

    attn, qkv, reference = forms.random_block(grid=4, windows=2)
    path = tmp_path / f"{form}.onnx"
    forms.export(forms.Core(attn, form, 4).eval(), qkv, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"qkv": qkv.numpy()})[0].reshape(reference.shape)
    error = np.abs(out - reference).max()
    if form == "no-bias-mha":  # the kernel's floor, not SAM's attention: it must differ
        assert error > 1e-2
    else:
        assert error < 1e-5, error
