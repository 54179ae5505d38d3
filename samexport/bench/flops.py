"""Compute counts of the image encoder, and the machine's measured peak matmul throughput."""

from __future__ import annotations

import math
import time

from samexport.variants import ModelVariant, get_model


def encoder_macs(variant: ModelVariant | str) -> int:
    """Multiply-accumulates of one image-encoder forward pass on the 1024x1024 input, counted by
    the model's encoder family (``Variant.encoder_macs``, ``Sam2Variant.encoder_macs``): every
    matmul and convolution as the exported graph runs them, padding included; norms, softmax and
    GELU not. vit_b: 486.0 GMAC (972 GFLOP), vit_l 1493, vit_h 2981; sam2.1_hiera_tiny 146.2."""
    return get_model(variant).encoder_macs()


def encoder_gflop(variant: ModelVariant | str) -> float:
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
