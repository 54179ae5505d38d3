"""samexport.integrity: the graphs an artifact opens are the ones its manifest records (sizes,
sha256), hashed once per file and then cached in memory and on disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from samexport import constants as C
from samexport.artifacts import DIGEST_KEY
from samexport.errors import SamExportError

pytestmark = pytest.mark.usefixtures("private_cache")


def test_a_decoder_swapped_in_from_another_build_is_refused(artifact, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from samexport.runtime.predictor import SamPredictor

    # Another build of the same variant: the same graph with other weights. Made by changing every
    # weight of this build's decoder (an export of other random weights is the same file to the
    # check, at ~6 CPU-s).
    model = onnx.load(artifact / C.DECODER_ONNX)
    for weight in model.graph.initializer:
        values = numpy_helper.to_array(weight)
        if values.dtype == np.float32 and values.size > 1:
            weight.CopyFrom(numpy_helper.from_array(values * np.float32(1.5) + np.float32(0.25), weight.name))
    swapped = tmp_path / "other" / C.DECODER_ONNX
    swapped.parent.mkdir()
    onnx.save(model, swapped)
    assert swapped.stat().st_size == (artifact / C.DECODER_ONNX).stat().st_size  # the size cannot tell
    shutil.copy2(swapped, artifact / C.DECODER_ONNX)
    with pytest.raises(SamExportError, match=r"decoder.onnx does not match .*manifest.json.*another build"):
        SamPredictor(artifact)


def test_an_encoder_with_a_flipped_byte_is_refused_even_after_a_good_open(artifact):
    from samexport.runtime.backends import open_backend

    open_backend(artifact, "onnxruntime-cpu")  # verified and cached
    path = artifact / C.ENCODER_ONNX
    with open(path, "r+b") as stream:
        stream.seek(path.stat().st_size // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(SamExportError, match="encoder.onnx does not match"):
        open_backend(artifact, "onnxruntime-cpu")


def test_hashes_are_checked_once_then_cached_in_memory_and_on_disk(artifact, monkeypatch):
    from samexport import integrity
    from samexport.runtime.backends import open_backend

    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: calls.append(Path(path).name) or real(path))
    open_backend(artifact, "onnxruntime-cpu")
    assert sorted(calls) == sorted(C.GRAPH_FILES)  # a copy: new inodes, hashed again
    open_backend(artifact, "onnxruntime-cpu")
    assert len(calls) == len(C.GRAPH_FILES)
    monkeypatch.setattr(integrity, "_verified", {})  # a new process: the cache file answers
    open_backend(artifact, "onnxruntime-cpu")
    assert len(calls) == len(C.GRAPH_FILES)
    assert (Path(os.environ["SAMEXPORT_CACHE"]) / integrity.CACHE_FILE).is_file()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
@pytest.mark.parametrize("name", [C.ENCODER_ONNX, C.DECODER_ONNX])
def test_damaged_graph_is_one_clear_error(artifact, name, damage):
    from samexport.runtime.predictor import SamPredictor

    path = artifact / name
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(SamExportError, match=f"{name} is .* bytes but .* records"):
        SamPredictor(artifact)
    # Without file records (a format 1 manifest) ONNX Runtime's own error is turned into one line.
    manifest = json.loads((artifact / C.MANIFEST).read_text())
    del manifest["files"], manifest[DIGEST_KEY], manifest["runtime"]
    (artifact / C.MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(SamExportError, match=f"{name} is not a readable ONNX graph"):
        SamPredictor(artifact)
