"""What the tiny model's ONNX exports cost, in CPU seconds of this process (all threads, from
``getrusage``, so the figure holds on a loaded machine better than wall time does), next to the
wall time. The test session's fixtures share these exports (``tests/conftest.py``:
``tiny_onnx``, ``tiny_attention_encoders``); see docs/testing.md.

    python tools/export_costs.py
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from samexport import constants as C
from samexport.checkpoint import load_sam
from samexport.export.to_onnx import export_decoder, export_decoders, export_encoder
from samexport.testing import save_random_checkpoint

# The attention tests' opset per form (tests/support: ATTENTION_OPSETS).
ATTENTION_OPSETS = {"plain": 18, "fused-pattern": 18, "onnx-attention": 23, "plugin": 18}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, export: Callable[[], object]) -> float:
    cpu, wall = cpu_seconds(), time.perf_counter()
    export()
    spent = cpu_seconds() - cpu
    print(f"{label:48s} cpu {spent:6.2f} s   wall {time.perf_counter() - wall:6.2f} s", flush=True)
    return spent


def main() -> None:
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="samexport-export-costs-") as tmp:
        folder = Path(tmp)
        sam = load_sam(save_random_checkpoint("tiny", folder / "tiny.pth"), "tiny")
        export_decoder(sam, folder / "warm-up.onnx")  # imports and the first trace out of the way
        timed("encoder (plain, default opset)", lambda: export_encoder(sam, folder / "encoder.onnx"))
        timed("decoder", lambda: export_decoder(sam, folder / "decoder.onnx"))
        timed("decoder and its halves, one trace (a build's)", lambda: export_decoders(
            sam, folder / "decoder-cut.onnx", folder / C.DECODER_SCORES_ONNX, folder / C.DECODER_MASKS_ONNX))
        for mode, opset in ATTENTION_OPSETS.items():
            timed(f"encoder, attention {mode} (opset {opset})",
                  lambda mode=mode, opset=opset: export_encoder(
                      sam, folder / f"{mode}.onnx", opset=opset, attention=mode))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
