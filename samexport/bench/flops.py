"""Compute counts of the image encoder, and the machine's measured peak matmul throughput."""

from __future__ import annotations

import math
import time

from samexport.constants import EMBED_DIM, EMBED_SIZE, IMAGE_SIZE
from samexport.variants import Variant

PATCH = IMAGE_SIZE // EMBED_SIZE  # 16
WINDOW = 14  # windowed-attention side, as in the official image encoder


def encoder_macs(variant: Variant) -> int:
    """Multiply-accumulates of one image-encoder forward pass (1x3x1024x1024 -> 1x256x64x64).

    Counts every matmul and convolution, as the official graph runs them: windowed blocks pad
    the 64x64 grid to 70x70 (25 windows of 14x14) before the qkv and output projections;
    attention products and the decomposed relative-position terms (q·R_h, q·R_w) are included;
    norms, softmax and GELU are not. vit_b: 486.0 GMAC (972 GFLOP), vit_l 1493, vit_h 2981.
    """
    dim, tokens = variant.embed_dim, EMBED_SIZE * EMBED_SIZE
    macs = tokens * 3 * PATCH * PATCH * dim  # patch embedding (16x16 conv, stride 16)
    padded_side = math.ceil(EMBED_SIZE / WINDOW) * WINDOW
    for index in range(variant.depth):
        if index in variant.global_attn_indexes:
            side, windows = EMBED_SIZE, 1
        else:
            side, windows = WINDOW, (padded_side // WINDOW) ** 2
        attended = windows * side * side  # tokens the attention sees, padding included
        macs += attended * dim * 4 * dim  # qkv (3 D^2) and output projection (D^2)
        macs += windows * 2 * (side * side) ** 2 * dim  # q @ k^T and attn @ v, all heads
        macs += attended * dim * 2 * side  # decomposed relative position: q·R_h and q·R_w
        macs += tokens * dim * 8 * dim  # MLP, D -> 4D -> D
    macs += tokens * dim * EMBED_DIM + tokens * EMBED_DIM * EMBED_DIM * 9  # neck: 1x1 and 3x3 convs
    return macs


def encoder_gflop(variant: Variant) -> float:
    """Floating-point operations (2 per MAC) of one encoder pass, in GFLOP."""
    return 2 * encoder_macs(variant) / 1e9


def measure_peak_matmul(size: int = 4096, repeats: int = 3) -> dict[str, float]:
    """Best float32 GFLOP/s of a ``size`` x ``size`` matmul in NumPy and in torch (if installed).

    Each library's best of ``repeats`` (after one warm-up) stands for the machine's peak, the
    figure the encoder's throughput is compared with.

    Returns:
        ``{"numpy_gflops": ..., "torch_gflops": ..., "gflops": max of both, "size": size}``.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flop = 2.0 * size**3
    result = {"size": size, "numpy_gflops": flop / _best_seconds(lambda: a @ b, repeats) / 1e9}
    try:
        import torch
    except ImportError:
        pass
    else:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        with torch.no_grad():
            result["torch_gflops"] = flop / _best_seconds(lambda: ta @ tb, repeats) / 1e9
    result["gflops"] = max(v for k, v in result.items() if k.endswith("_gflops"))
    return result


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
