"""Nothing lost, nothing silently wrong: build destinations, staging folders, verified artifacts,
damaged graphs (issue 12, items 1, 2, 3, 7, 10 and 12)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import needs_rtx

from samexport import constants as C
from samexport.artifacts import (
    DIGEST_KEY, STAGING_MARKER, check_output_destination, read_manifest, staged_directory, verify_artifact,
)
from samexport.pipeline import build
from samexport.utils import sha256_file
from samexport.errors import SamExportError


@pytest.fixture
def no_export(monkeypatch):
    """Make any attempt to load the weights (the first step of the export) fail loudly, to show
    that a refusal came before it."""
    import samexport.pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(samexport.pipeline, "load_sam", must_not_run)


@pytest.fixture
def artifact(tiny_artifact, tmp_path) -> Path:
    """A private copy of the tiny artifact (copied with ``cp -p`` semantics: same mtimes)."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "tiny-fp32"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A private samexport cache (for the verified-files cache) and an empty in-memory cache."""
    import samexport.integrity as integrity

    monkeypatch.setenv("SAMEXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "_verified", {})


def listing(folder: Path) -> list[str]:
    """Names in ``folder``, hidden ones included, less the private cache."""
    return sorted(p.name for p in folder.iterdir() if p.name != "cache")


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# Items 1, 2, 3: destinations.


def test_a_folder_that_is_not_an_artifact_is_refused_before_export(tiny_checkpoint, tmp_path, no_export):
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    with pytest.raises(SamExportError, match="is not a samexport artifact"):
        build("tiny", checkpoint=tiny_checkpoint, output=documents)
    assert (documents / "thesis.tex").read_text() == "years of work"
    assert listing(tmp_path) == ["Documents"]


def test_an_existing_file_is_refused_before_export(tiny_checkpoint, tmp_path, no_export):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(SamExportError, match="exists and is a file"):
        build("tiny", checkpoint=tiny_checkpoint, output=target)
    assert target.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_current_folder_and_mount_point_are_refused_before_export(tiny_checkpoint, tmp_path, monkeypatch, no_export):
    monkeypatch.chdir(tmp_path)
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(SamExportError, match="current folder or one above it"):
            build("tiny", checkpoint=tiny_checkpoint, output=output)
    mounts = [p for p in ("/dev/shm", "/dev", "/proc", "/sys") if os.path.ismount(p)]
    if not mounts:
        pytest.skip("no mount point to try")
    with pytest.raises(SamExportError, match="is a mount point"):
        build("tiny", checkpoint=tiny_checkpoint, output=mounts[0])
    assert listing(tmp_path) == []


def test_an_artifact_holding_user_files_is_not_replaced(artifact, tiny_checkpoint, no_export):
    (artifact / "notes.txt").write_text("the user's own file")
    with pytest.raises(SamExportError, match=r"1 entry samexport did not write \(notes.txt\)"):
        build("tiny", checkpoint=tiny_checkpoint, output=artifact)
    assert (artifact / "notes.txt").read_text() == "the user's own file"


def test_a_symlink_and_a_folder_under_a_file_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SamExportError, match="symbolic link"):
        check_output_destination(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SamExportError, match="is a file, not a folder"):
        check_output_destination(tmp_path / "file" / "out")
    check_output_destination(tmp_path / "real")  # an empty folder may be filled
    check_output_destination(tmp_path / "new" / "deeper")


@pytest.mark.slow
def test_rebuild_replaces_an_artifact_and_removes_only_our_stale_staging_folders(artifact, tiny_checkpoint, monkeypatch):
    stale = artifact.parent / f".{artifact.name}.partial-killed"  # a build killed by SIGKILL
    stale.mkdir()
    (stale / STAGING_MARKER).write_text(json.dumps({"pid": dead_pid()}))
    (stale / C.ENCODER_ONNX).write_bytes(b"half")
    running = artifact.parent / f".{artifact.name}.partial-running"  # a build still running
    running.mkdir()
    (running / STAGING_MARKER).write_text(json.dumps({"pid": os.getppid()}))
    foreign = artifact.parent / f".{artifact.name}.partial-user"  # same pattern, not ours
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    before = read_manifest(artifact)
    result = build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert result.artifact_dir == artifact and read_manifest(artifact).created is not None
    assert read_manifest(artifact).files == result.manifest.files
    assert result.manifest.files[C.DECODER_ONNX] == before.files[C.DECODER_ONNX]  # same weights, same graph
    assert not stale.exists() and running.is_dir() and (foreign / "data.bin").read_bytes() == b"keep"
    assert listing(artifact.parent) == sorted([artifact.name, running.name, foreign.name])
    # The build hashed its files in the staging folder; the renamed artifact opens without hashing.
    import samexport.integrity
    from samexport.runtime.backends import open_backend

    calls = []
    monkeypatch.setattr(samexport.integrity, "sha256_file", lambda path: calls.append(path))
    open_backend(artifact, "onnxruntime-cpu")
    assert calls == []


def test_a_failed_swap_leaves_no_staging_folder(tmp_path, monkeypatch):
    destination = tmp_path / "out"
    real_replace = os.replace

    def refuse_folders(src, dst):
        if Path(src).is_dir():
            raise OSError(18, "Invalid cross-device link")
        return real_replace(src, dst)

    with pytest.raises(OSError, match="cross-device"):
        with staged_directory(destination) as staging:
            assert (staging / STAGING_MARKER).is_file()
            (staging / "graph.onnx").write_bytes(b"x")
            monkeypatch.setattr(os, "replace", refuse_folders)
    monkeypatch.setattr(os, "replace", real_replace)
    assert listing(tmp_path) == []


def test_staging_marker_is_not_left_in_the_artifact(tmp_path):
    with staged_directory(tmp_path / "out") as staging:
        (staging / "graph.onnx").write_bytes(b"x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["graph.onnx"]


# Item 7: verified artifacts.


def test_manifest_records_size_and_sha256_of_every_graph_and_the_references(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    assert set(manifest.files) == {*C.GRAPH_FILES, manifest.references["file"]}  # the stored references too
    for name, record in manifest.files.items():
        assert record == {"bytes": (tiny_artifact / name).stat().st_size, "sha256": sha256_file(tiny_artifact / name)}
    assert DIGEST_KEY in json.loads((tiny_artifact / C.MANIFEST).read_text())


def test_a_decoder_swapped_in_from_another_build_is_refused(artifact, tmp_path):
    from samexport.testing import random_state_dict
    from samexport.export.to_onnx import export_decoder
    from samexport.runtime.predictor import SamPredictor
    from samexport.variants import get_variant

    other = get_variant("tiny").build()
    other.load_state_dict(random_state_dict("tiny", seed=1))
    (tmp_path / "other").mkdir()
    swapped = export_decoder(other.eval(), tmp_path / "other" / C.DECODER_ONNX)
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


def test_an_edited_manifest_is_refused(artifact):
    path = artifact / C.MANIFEST
    data = json.loads(path.read_text())
    for key, value in (("variant", "vit_b"), ("precision", "fp16")):
        path.write_text(json.dumps({**data, key: value}))  # valid values, so only the digest tells
        with pytest.raises(SamExportError, match="was changed after samexport wrote it"):
            read_manifest(artifact)
    path.write_text(json.dumps({**data, "precision": "fp4"}))
    with pytest.raises(SamExportError, match="was changed after samexport wrote it"):
        read_manifest(artifact)
    edited = {k: v for k, v in data.items() if k != DIGEST_KEY}
    path.write_text(json.dumps({**edited, "precision": "fp4"}))  # digest removed too: format 2 demands one
    with pytest.raises(SamExportError, match="no 'manifest_sha256'.*the manifest was edited"):
        read_manifest(artifact)
    del edited["files"]
    path.write_text(json.dumps({**edited, "precision": "fp4"}))  # records removed too (issue 25 item 9)
    with pytest.raises(SamExportError, match="has manifest format 2 but no 'files'"):
        read_manifest(artifact)
    del edited["runtime"]
    path.write_text(json.dumps({**edited, "format": 1, "precision": "fp4"}))  # an old manifest: the schema refuses
    with pytest.raises(SamExportError, match="unknown precision 'fp4'"):
        read_manifest(artifact)


def test_hashes_are_checked_once_then_cached_in_memory_and_on_disk(artifact, monkeypatch):
    import samexport.integrity as integrity
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


def test_old_manifest_without_records_still_opens_with_a_warning(artifact, caplog):
    from samexport.runtime.predictor import SamPredictor

    path = artifact / C.MANIFEST
    data = json.loads(path.read_text())
    del data["files"], data[DIGEST_KEY], data["runtime"]
    path.write_text(json.dumps({**data, "format": 1}))  # format 1 was written before file records
    with caplog.at_level(logging.WARNING, logger="samexport.artifacts"):
        predictor = SamPredictor(artifact)
    assert "onnxruntime" in predictor.backend.name  # alone, or the decoder of openvino+onnxruntime
    assert "records no file sizes or hashes" in caplog.text


def test_engines_step_refuses_a_damaged_graph_before_building(artifact):
    from samexport.engines.artifact import build_artifact_engines

    (artifact / C.DECODER_ONNX).write_bytes(b"\0" * (artifact / C.DECODER_ONNX).stat().st_size)
    before = (artifact / C.MANIFEST).read_bytes()
    with pytest.raises(SamExportError, match="decoder.onnx does not match"):
        build_artifact_engines(artifact, builder="tensorrt-rtx")
    assert (artifact / C.MANIFEST).read_bytes() == before


# Item 10: damaged graphs give one clear line.


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


def test_verify_artifact_names_a_missing_plan(artifact):
    manifest = read_manifest(artifact)
    records = {**manifest.files, "plans-x/encoder.plan": {"bytes": 1, "sha256": "0" * 64}}
    with pytest.raises(SamExportError, match="incomplete: plans-x/encoder.plan is missing"):
        verify_artifact(artifact, manifest.replace(files=records))


# Item 12: calibration images are checked before the export.


def test_a_truncated_calibration_image_is_named_before_export(tiny_checkpoint, tmp_path, no_export):
    from PIL import Image

    from samexport.testing import make_image

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(make_image(64, 96)).save(calib / "a_good.png")
    Image.fromarray(make_image(64, 96, seed=1)).save(calib / "b_photo.jpg", quality=95)
    data = (calib / "b_photo.jpg").read_bytes()
    (calib / "b_photo.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SamExportError, match=r"calibration image .*b_photo.jpg cannot be read"):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", precision="int8", calib_dir=calib)
    assert not (tmp_path / "out").exists()


@needs_rtx
def test_engines_step_records_the_new_plans_and_a_rebuild_replaces_them(artifact, tiny_checkpoint):
    from samexport.engines.artifact import build_artifact_engines
    from samexport.engines.builder import BuildConfig

    config = BuildConfig(workspace_bytes=1 << 30, prompts=(1, 1, 4), points=(1, 2, 4))
    manifest = build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    plans = sorted(record["plan"] for record in manifest.engines.values())
    # the graphs, the stored PyTorch references and the new plans
    assert sorted(manifest.files) == sorted([*C.GRAPH_FILES, manifest.references["file"], *plans])
    for name in plans:
        assert manifest.files[name]["sha256"] == sha256_file(artifact / name)
    verify_artifact(artifact, read_manifest(artifact))
    plan = artifact / plans[0]
    plan.write_bytes(plan.read_bytes()[:-1] + b"\0")
    with pytest.raises(SamExportError, match=f"{plans[0]} does not match"):
        verify_artifact(artifact, read_manifest(artifact))
    # An artifact with plans (our marker on their folder) is still ours to replace.
    build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False, engines="skip")
    rebuilt = read_manifest(artifact)
    assert sorted(rebuilt.files) == sorted([*C.GRAPH_FILES, rebuilt.references["file"]])


def test_official_decoder_export_replaces_only_its_own_file(tiny_artifact, tmp_path):
    from samexport.export.official_onnx import export_official_decoder

    target = tmp_path / "decoder.onnx"
    target.write_bytes(b"the user's own model")
    with pytest.raises(SamExportError, match="is not an official-interface decoder samexport wrote"):
        export_official_decoder(tiny_artifact, target)
    assert target.read_bytes() == b"the user's own model"
    ours = export_official_decoder(tiny_artifact, tmp_path / "ours.onnx")
    first = ours.read_bytes()
    export_official_decoder(tiny_artifact, ours, return_single_mask=False)  # ours: replaced
    assert ours.read_bytes() != first
    assert listing(tmp_path) == ["decoder.onnx", "ours.onnx"]
