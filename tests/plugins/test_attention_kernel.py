"""Fused rel-pos attention kernel: reference vs the torch model, kernel vs reference, PTX builds.

On CPU the Triton kernel runs under the Triton interpreter (numpy); ``fused_rel_pos_attention``
picks it for CPU tensors whatever ``TRITON_INTERPRET`` was when triton was imported, so these
tests are safe in a whole-suite pytest process. PTX is compiled for sm_80/87/90 without a GPU.

Tolerances (max abs error against the float32 reference on the same inputs):
- float32 inputs: 1e-4 (measured <= 5e-6);
- float16 inputs: 5e-3 (measured <= 1.95e-3, one fp16 ulp for outputs of magnitude 2-4, i.e. the
  output rounding; torch computing op for op in fp16 is off by 1.2e-2 to 3e-2 on the same inputs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from samexport.errors import SamExportError  # noqa: E402
from samexport.models.image_encoder import Attention  # noqa: E402
from samexport.plugins.attention_kernel import (  # noqa: E402
    KernelConfig,
    compile_kernel,
    default_config,
    fused_rel_pos_attention,
)
from samexport.plugins.attention_reference import (  # noqa: E402
    decomposed_rel_pos,
    expand_rel_pos_bias,
    reference_rel_pos_attention,
)


def sdpa_rel_pos_attention(q, k, v, rel_h, rel_w, *, scale: float) -> torch.Tensor:
    """The unfused baseline: torch SDPA with the materialised BHxNxN bias as ``attn_mask``."""
    bias = expand_rel_pos_bias(rel_h, rel_w).to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}
WINDOW = (14, 14)
GLOBAL = (64, 64)


def make_inputs(batch_heads, grid_hw, head_dim, dtype, *, seed=0, device="cpu"):
    """Random q, k, v (BHxNxD) and their rel-pos projections, cast to ``dtype``.

    Tables are drawn at the scale of the random test checkpoints (std 0.5), so the bias (std ~4)
    dominates the logits: a stiff test of the online softmax.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = grid_hw
    q, k, v = (torch.randn(batch_heads, h * w, head_dim, generator=gen) for _ in range(3))
    rel_pos_h = torch.randn(2 * h - 1, head_dim, generator=gen) * 0.5
    rel_pos_w = torch.randn(2 * w - 1, head_dim, generator=gen) * 0.5
    rel_h, rel_w = decomposed_rel_pos(q, rel_pos_h, rel_pos_w, grid_hw)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, rel_h, rel_w))


def max_error(q, k, v, rel_h, rel_w, *, grid_hw, config=None):
    scale = q.shape[-1] ** -0.5
    out = fused_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=grid_hw, scale=scale, config=config)
    ref = reference_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=grid_hw, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    return (out.float() - ref.float()).abs().max().item()


def qkv_from_attention(attn: Attention, x: torch.Tensor):
    """The per-head q, k, v views ``Attention.forward`` computes (non-contiguous)."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    return qkv.reshape(3, b * heads, h * w, c // heads).unbind(0)


def attention_output(attn: Attention, x: torch.Tensor, q, k, v, core) -> torch.Tensor:
    """What ``attn(x)`` computes, with ``core`` (the reference or the kernel) as its attention on
    the per-head q, k, v (B*heads x N x D): rel-pos projections, core, heads merged, projection."""
    b, h, w, c = x.shape
    rel_h, rel_w = decomposed_rel_pos(q, attn.rel_pos_h, attn.rel_pos_w, (h, w))
    out = core(q, k, v, rel_h, rel_w, grid_hw=(h, w), scale=attn.scale)
    out = out.view(b, attn.num_heads, h, w, c // attn.num_heads).permute(0, 2, 3, 1, 4).reshape(x.shape)
    return attn.proj(out)


def random_attention(dim, heads, grid_size, seed=0):
    torch.manual_seed(seed)
    attn = Attention(dim, num_heads=heads, grid_size=grid_size)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0.0, 0.5)
        attn.rel_pos_w.normal_(0.0, 0.5)
    return attn.eval()


# --- reference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [64, 80])
def test_reference_matches_attention_module(head_dim):
    heads, grid = 2, 14
    attn = random_attention(heads * head_dim, heads, grid)
    x = torch.randn(3, grid, grid, heads * head_dim)
    with torch.no_grad():
        expected = attn(x)
        got = attention_output(attn, x, *qkv_from_attention(attn, x), reference_rel_pos_attention)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sdpa_baseline_matches_reference():
    q, k, v, rel_h, rel_w = make_inputs(2, WINDOW, 64, torch.float32)
    ref = reference_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=WINDOW, scale=0.125)
    got = sdpa_rel_pos_attention(q, k, v, rel_h, rel_w, scale=0.125)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# --- kernel under the Triton interpreter -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_window(batch, head_dim, dtype):
    """14x14 windows: ``batch`` images x 2 windows x 2 heads."""
    inputs = make_inputs(batch * 2 * 2, WINDOW, head_dim, dtype, seed=batch)
    assert max_error(*inputs, grid_hw=WINDOW) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_global_reduced_grid(batch, head_dim, dtype):
    """A 32x32 global grid (1024 tokens), one head per image: the global code path, quickly."""
    inputs = make_inputs(batch, (32, 32), head_dim, dtype, seed=batch)
    assert max_error(*inputs, grid_hw=(32, 32)) <= TOLERANCE[dtype]


@pytest.mark.parametrize(
    ("head_dim", "dtype"),
    [
        pytest.param(64, torch.float32, id="d64-fp32"),
        pytest.param(80, torch.float16, id="d80-fp16", marks=pytest.mark.slow),  # ~16 s of CPU
    ],
)
def test_kernel_global_full_grid(head_dim, dtype):
    """The real 64x64 global grid (4096 tokens), one head: ~5-30 s in the interpreter."""
    inputs = make_inputs(1, GLOBAL, head_dim, dtype)
    assert max_error(*inputs, grid_hw=GLOBAL) <= TOLERANCE[dtype]


TILINGS = [
    (WINDOW, KernelConfig(block_m=16, block_n=16)),
    (WINDOW, KernelConfig(block_m=64, block_n=32)),
    (WINDOW, KernelConfig(block_m=32, block_n=64)),
    (WINDOW, default_config(WINDOW, "fp16")),
    (WINDOW, default_config(WINDOW, "fp32")),
    ((20, 24), KernelConfig(block_m=128, block_n=128)),
    ((20, 24), KernelConfig(block_m=64, block_n=64)),
    ((20, 24), default_config((20, 24), "fp16")),
]


@pytest.mark.parametrize(
    ("grid_hw", "config"), TILINGS, ids=[f"{h}x{w}-m{c.block_m}-n{c.block_n}" for (h, w), c in TILINGS]
)
def test_kernel_tilings(grid_hw, config):
    """The GPU tile shapes, run in the interpreter: partial key rows, several rows per tile,
    ragged last query tile, a non-square grid whose width (24) is padded to 32."""
    inputs = make_inputs(2, grid_hw, 80, torch.float32)
    assert max_error(*inputs, grid_hw=grid_hw, config=config) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("head_dim", [64, 80])
def test_kernel_matches_attention_module(head_dim):
    """End to end on strided q/k/v views of the qkv projection, as the encoder produces them."""
    heads, grid = 3, 14
    attn = random_attention(heads * head_dim, heads, grid, seed=1)
    x = torch.randn(1, grid, grid, heads * head_dim)
    with torch.no_grad():
        expected = attn(x)
        # heads x N x D views straight into the 1 x N x (3 x heads x D) projection, no copies.
        qkv = attn.qkv(x).view(grid * grid, 3, heads, head_dim).permute(1, 2, 0, 3)
        q, k, v = qkv.unbind(0)
        assert q.stride() == (head_dim, 3 * heads * head_dim, 1)
        got = attention_output(attn, x, q, k, v, fused_rel_pos_attention)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_launcher_rejects_bad_shapes():
    q, k, v, rel_h, rel_w = make_inputs(1, WINDOW, 64, torch.float32)
    with pytest.raises(ValueError, match="grid"):
        fused_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=(14, 15), scale=0.125)
    with pytest.raises(ValueError, match="rel_h"):
        fused_rel_pos_attention(q, k, v, rel_w, rel_h[:, :, :13], grid_hw=WINDOW, scale=0.125)
    with pytest.raises(ValueError, match="dtype"):
        fused_rel_pos_attention(q.half(), k, v, rel_h, rel_w, grid_hw=WINDOW, scale=0.125)
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig(block_m=48)


def test_interpreter_and_ptx_in_one_process_with_env_set():
    """With TRITON_INTERPRET=1 set before triton is imported, both paths still work."""
    script = textwrap.dedent(
        """
        import torch
        import triton  # imported in interpreter mode
        from samexport.plugins.attention_kernel import compile_kernel, fused_rel_pos_attention
        from samexport.plugins.attention_reference import reference_rel_pos_attention
        q, k, v = (torch.randn(2, 16, 16) for _ in range(3))
        rel_h, rel_w = torch.randn(2, 16, 4), torch.randn(2, 16, 4)
        out = fused_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=(4, 4), scale=0.25)
        ref = reference_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=(4, 4), scale=0.25)
        assert (out - ref).abs().max() < 1e-4
        assert ".target sm_87" in compile_kernel("sm_87", grid_hw=(4, 4), head_dim=16).ptx
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# --- PTX ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["sm_80", "sm_87", "sm_90"])
@pytest.mark.parametrize(
    ("grid_hw", "head_dim", "dtype"),
    [(WINDOW, 64, "fp16"), (GLOBAL, 80, "fp16"), (WINDOW, 80, "fp32")],
    ids=["window-d64-fp16", "global-d80-fp16", "window-d80-fp32"],
)
def test_compile_kernel(target, grid_hw, head_dim, dtype):
    ptx = compile_kernel(target, grid_hw=grid_hw, head_dim=head_dim, dtype=dtype).ptx
    arch = target + ("a" if target == "sm_90" else "")  # Triton targets sm_90a on Hopper
    assert re.search(rf"^\.target {arch}\s*$", ptx, re.MULTILINE), ptx[:500]
    assert re.search(r"^\.visible \.entry _rel_pos_attention_fwd\(", ptx, re.MULTILINE)
    assert "mma.sync" in ptx or "wgmma" in ptx or dtype == "fp32"  # tensor cores for fp16


def test_compile_kernel_for_older_drivers():
    """JetPack 6.0 (CUDA 12.2) JIT-compiles PTX up to ISA 8.2."""
    ptx = compile_kernel("sm_87", ptx_version=82).ptx
    assert re.search(r"^\.version 8\.2\s*$", ptx, re.MULTILINE)
    with pytest.raises(SamExportError, match="ptx_version"):
        compile_kernel("sm_90", ptx_version=78)
    with pytest.raises(SamExportError, match="sm_87"):
        compile_kernel("orin")


def _ptxas() -> str | None:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.access(path, os.X_OK) else None


@pytest.mark.skipif(_ptxas() is None, reason="Triton's bundled ptxas is not available")
@pytest.mark.parametrize("target", ["sm_80", "sm_87", "sm_90"])
@pytest.mark.parametrize(("grid_hw", "head_dim"), [(WINDOW, 64), (WINDOW, 80), (GLOBAL, 64), (GLOBAL, 80)])
def test_default_fp16_configs_do_not_spill(tmp_path, target, grid_hw, head_dim):
    """Assemble the PTX with ptxas: the production (fp16) tilings keep everything in registers."""
    path = tmp_path / "kernel.ptx"
    path.write_text(compile_kernel(target, grid_hw=grid_hw, head_dim=head_dim, dtype="fp16").ptx)
    arch = target + ("a" if target == "sm_90" else "")
    result = subprocess.run(
        [_ptxas(), "-v", "--gpu-name", arch, str(path), "-o", str(tmp_path / "kernel.cubin")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    info = result.stdout + result.stderr
    assert re.search(r"\b0 bytes spill stores, 0 bytes spill loads", info), info


# --- GPU ------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda unavailable)")

# (name, batch x heads, grid, head_dim): full vit_b / vit_h block shapes for one image.
GPU_CASES = [
    ("vit_b-window", 25 * 12, WINDOW, 64),
    ("vit_b-global", 12, GLOBAL, 64),
    ("vit_h-window", 25 * 16, WINDOW, 80),
    ("vit_h-global", 16, GLOBAL, 80),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize(("name", "batch_heads", "grid_hw", "head_dim"), GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_kernel_matches_reference(name, batch_heads, grid_hw, head_dim, dtype):
    inputs = make_inputs(batch_heads, grid_hw, head_dim, dtype, device="cuda")
    assert max_error(*inputs, grid_hw=grid_hw) <= TOLERANCE[dtype]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("name", "batch_heads", "grid_hw", "head_dim"), GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_latency_vs_sdpa_with_materialised_bias(name, batch_heads, grid_hw, head_dim, record_property):
    """FP16 latency and peak memory: fused kernel vs torch SDPA fed the full BHxNxN bias."""
    from triton.testing import do_bench

    q, k, v, rel_h, rel_w = make_inputs(batch_heads, grid_hw, head_dim, torch.float16, device="cuda")
    scale = head_dim**-0.5

    def fused():
        return fused_rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw=grid_hw, scale=scale)

    def sdpa():
        return sdpa_rel_pos_attention(q, k, v, rel_h, rel_w, scale=scale)

    results = {}
    for label, fn in (("fused", fused), ("sdpa", sdpa)):
        fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        results[f"{label}_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        results[f"{label}_ms"] = do_bench(fn, warmup=25, rep=100)
    for key, value in results.items():
        record_property(key, value)
    print(f"{name}: {results}")
    # The fused kernel never holds the (HW)x(HW) bias: its working memory is the output alone.
    assert results["fused_peak_mb"] < results["sdpa_peak_mb"]
