"""The graphs ``samexport engines --fallback`` builds from: the FP32 attention form, derived here.

When the plans built from the artifact's FP16 (or INT8-on-FP16) ``encoder.onnx`` fail
verification, ``--fallback`` builds them again from the safe form of that graph
(:mod:`samexport.precision.attention_fp32`: every attention core in FP32 between the FP16
projections), derived on the device from the artifact's own encoder with the ``onnx`` package
alone (no torch). Why derive rather than carry: for vit_b the safe graph is as large as the FP16
encoder (about 185 MB, a second copy in every artifact), while deriving it took 9.7 s on a
loaded 2-core VM, small beside the TensorRT build that follows (figures in docs/jetson.md and the note on issue 24).

The derived graph lives in a temporary folder outside the artifact, with the decoder graph beside
it (a symbolic link, or a copy where links are not allowed), and is removed when the build is
done: the artifact gains the plans and the manifest's record of the form, nothing else. The
engine record keeps what the plans came from: the form, the sha256 of the artifact's
``encoder.onnx`` it was derived from, and the sha256 of the derived graph (the derivation is
deterministic, so anyone can derive it again and compare).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from samexport import constants as C
from samexport.errors import MissingExtraError
from samexport.utils import sha256_file

EXPORTED_FORM = "exported"  # the artifact's encoder.onnx as built
FP32_ATTENTION_FORM = "fp32-attention"  # == samexport.precision.attention_fp32.FORM (not imported: onnx)


def require_onnx() -> None:
    """Raise :class:`MissingExtraError` when ``onnx`` (needed to derive the form) is missing;
    called before any build so the user does not wait for a primary build to learn it."""
    if importlib.util.find_spec("onnx") is None:
        raise MissingExtraError(
            "--fallback derives the FP32 attention form with the onnx package, which is not installed: "
            "pip install onnx (the jetson and tensorrt extras include it)"
        )


@contextlib.contextmanager
def fp32_attention_graphs(
    artifact_dir: Path | str, *, on_step: Callable[[str], None] = lambda message: None
) -> Iterator[tuple[Path, dict]]:
    """Yield ``(graphs_dir, record)``: a temporary folder with the FP32 attention form of the
    artifact's ``encoder.onnx`` (and its ``decoder.onnx``), and the record for the encoder's
    engine entry. The folder is removed on exit.

    Raises:
        MissingExtraError: ``onnx`` is not installed.
        SamExportError: the encoder has no FP16 attention core (an fp32 artifact), or holds plugin
            nodes (see :func:`samexport.precision.attention_fp32.upcast_attention`).
    """
    require_onnx()
    from samexport.precision.attention_fp32 import FORM, upcast_attention

    folder = Path(artifact_dir)
    with tempfile.TemporaryDirectory(prefix="samexport-fp32-attention-") as tmp:
        graphs = Path(tmp)
        on_step("deriving the FP32 attention form of encoder.onnx (--fallback)")
        report = upcast_attention(folder / C.ENCODER_ONNX, graphs / C.ENCODER_ONNX)
        try:
            os.symlink((folder / C.DECODER_ONNX).resolve(), graphs / C.DECODER_ONNX)
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(folder / C.DECODER_ONNX, graphs / C.DECODER_ONNX)
        record = {
            "form": FORM,
            "derived_from": C.ENCODER_ONNX,
            "derived_from_sha256": sha256_file(folder / C.ENCODER_ONNX),
            "sha256": sha256_file(graphs / C.ENCODER_ONNX),
            "attention_cores": report.cores,
            "derive_seconds": report.seconds,
        }
        yield graphs, record
