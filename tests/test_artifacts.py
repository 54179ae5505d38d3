"""samexport.artifacts: the typed manifest (JSON round trip, validation, format 1 upgrade, what the
runtime reads), the manifest on disk (file records, digest, edits refused) and what a rebuild may
replace."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from samexport import constants as C
from samexport.artifacts import (
    DIGEST_KEY,
    MANIFEST_FORMAT,
    Manifest,
    RuntimeNeeds,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from samexport.engine_records import EngineRecord, EngineSettings, EngineVerification
from samexport.engines.builder import BuildConfig
from samexport.errors import SamExportError
from samexport.integrity import FileRecord
from samexport.pipeline import build
from samexport.records import (
    CheckpointRecord,
    GraphPrecisions,
    GraphRecord,
    ParityRecord,
    ReferenceImage,
    ReferencesRecord,
)
from samexport.utils import sha256_file


def manifest_data(**changes) -> dict:
    data = {
        "format": MANIFEST_FORMAT, "variant": "tiny", "precision": "fp16", "attention": "plain", "opset": 18,
        "graphs": {"encoder": "fp16", "decoder": "fp16", "fp16_encoder": True}, "checkpoint": {"file": "x.pth", "sha256": "0" * 64},
        "encoder": {"onnx": C.ENCODER_ONNX}, "decoder": {"onnx": C.DECODER_ONNX},
        "runtime": {"onnxruntime_encoder": True, "onnxruntime_memory_arena": False, "gpu_specific_kernels": False},
        "engine_config": {}, "engines": {}, "skipped_engines": {}, "engines_verification": None, "parity": None,
        "references": None, "versions": {},
        "build_seconds": 1.0, "created": "2026-12-01T00:00:00+0000", "files": {},
    }
    return {**data, **changes}


def json_records(records: dict[str, FileRecord]) -> dict[str, dict]:
    """File records in their manifest.json form (as samexport wrote them before they were typed)."""
    return {name: {"bytes": record.bytes, "sha256": record.sha256} for name, record in records.items()}


def test_decoder_halves_are_named_by_the_manifest_or_absent_in_older_ones():
    assert Manifest.from_dict(manifest_data()).decoder_halves() is None
    halves = {"scores": {"onnx": C.DECODER_SCORES_ONNX}, "masks": {"onnx": C.DECODER_MASKS_ONNX}}
    manifest = Manifest.from_dict(manifest_data(decoder={"onnx": C.DECODER_ONNX, "halves": halves}))
    assert manifest.decoder_halves() == (C.DECODER_SCORES_ONNX, C.DECODER_MASKS_ONNX)


def test_round_trip_keeps_every_key_including_unknown_ones():
    data = manifest_data(signatures={"encoder.onnx": {"bytes": 3}})  # a key a newer samexport may write
    manifest = Manifest.from_dict(data)
    assert manifest.runtime == RuntimeNeeds(onnxruntime_encoder=True, onnxruntime_memory_arena=False)
    assert manifest.extra == {"signatures": {"encoder.onnx": {"bytes": 3}}}
    assert manifest.to_dict() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a JSON object was expected, got list"),
        (None, "a JSON object was expected, got NoneType"),
        (manifest_data(format=7), "manifest format 7"),
        (manifest_data(precision="fp4"), "unknown precision 'fp4'; valid: fp32, fp16, int8"),
        (manifest_data(attention="flash"), "unknown attention mode 'flash'"),
        (manifest_data(variant="vit_z"), "unknown variant 'vit_z'"),
        (manifest_data(opset="18"), "'opset' must be a int"),
        (manifest_data(engines=[]), "'engines' must be a dict"),
        (manifest_data(runtime={"bogus": 1}), "bad 'runtime' section"),
        (manifest_data(decoder={"onnx": C.DECODER_ONNX, "halves": {"scores": {"onnx": "../x.onnx"}}}),
         "bad 'decoder.halves' section"),
        (manifest_data(decoder={"onnx": C.DECODER_ONNX, "halves": []}), "bad 'decoder.halves' section"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(data, message):
    with pytest.raises(SamExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    ("precision", "attention", "expected"),
    [
        ("fp32", "plain", RuntimeNeeds(True, True, False)),
        ("fp16", "fused-pattern", RuntimeNeeds(True, False, False)),
        ("fp16", "plugin", RuntimeNeeds(False, False, True)),
    ],
)
def test_format_1_is_upgraded_with_what_the_runtime_needs(precision, attention, expected):
    data = manifest_data(format=1, precision=precision, attention=attention)
    del data["runtime"]
    manifest = Manifest.from_dict(data)
    assert manifest.runtime == expected and manifest.format == MANIFEST_FORMAT
    assert manifest.runtime == RuntimeNeeds.for_build(precision=precision, attention=attention)


def test_written_manifest_is_read_back_and_replaced_atomically(tmp_path):
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        (tmp_path / name).write_bytes(b"")
    manifest = Manifest.from_dict(manifest_data())
    written = write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == written == manifest.replace(files=written.files)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "encoder.plan").write_bytes(b"plan")
    write_manifest(tmp_path, manifest.replace(engines={"encoder": EngineRecord("p/encoder.plan")}))
    assert read_manifest(tmp_path).engines == {"encoder": EngineRecord("p/encoder.plan")}
    assert set(read_manifest(tmp_path).files) == {C.ENCODER_ONNX, C.DECODER_ONNX, "p/encoder.plan"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([C.ENCODER_ONNX, C.DECODER_ONNX, C.MANIFEST, "p"])
    (tmp_path / C.MANIFEST).write_text("[]")
    with pytest.raises(SamExportError, match="a JSON object was expected"):
        read_manifest(tmp_path)
    (tmp_path / C.MANIFEST).write_text("{not json")
    with pytest.raises(SamExportError, match="not valid JSON"):
        read_manifest(tmp_path)


# The sections as samexport wrote them before they were typed (format 2, 2026-12-05), copied from
# a vit_b int8 build's manifest.json: they must still be read.
OLD_GRAPHS = {
    "encoder": "int8 (Q/DQ) on fp16", "decoder": "fp16", "int8_target": "tensorrt",
    "calibration_images": "calib",
}
OLD_PARITY = {
    "passed": True, "reference": "torch", "candidate": "onnxruntime-cpu", "precision": "int8",
    "tolerances": {"embedding_rel_max_abs": 0.5}, "summary": {"embedding_cosine": 0.998, "mask_iou_min": 0.93},
    "checks": [{"metric": "embedding_cosine", "value": 0.998, "limit": 0.99, "bound": "min", "passed": True}],
    "images": ["astronaut"],
}
OLD_DECODER_ENGINE = {
    "builder": "tensorrt", "test_build": False, "tensorrt_module": "tensorrt", "tensorrt_version": "10.3.0.26",
    "gpu": "Orin", "compute_capability": "8.7", "plan_bytes": 9_000_000, "plan": "plans-1/decoder.plan",
    "profiles": [{"point_coords": [[1, 1, 2], [1, 4, 2], [64, 16, 2]], "point_labels": [[1, 1], [1, 4], [64, 16]]}],
}


def test_sections_written_before_they_were_typed_are_read_as_records():
    manifest = Manifest.from_dict(manifest_data(
        precision="int8", graphs=OLD_GRAPHS, parity=OLD_PARITY,
        engines={"decoder": OLD_DECODER_ENGINE, "encoder": {**OLD_DECODER_ENGINE, "profiles": []}},
    ))
    assert manifest.graphs == GraphPrecisions("int8 (Q/DQ) on fp16", "fp16", True, "tensorrt", "calib")
    assert Manifest.from_dict(manifest_data(graphs={"encoder": "int8 (Q/DQ)", "decoder": "fp16"})).graphs.fp16_encoder is False
    assert manifest.parity.passed is True and manifest.parity.summary["mask_iou_min"] == 0.93
    assert manifest.parity.to_dict() == OLD_PARITY  # written back as it was
    decoder = manifest.engine("decoder")
    assert decoder.max_prompts == 64 and decoder.plan == "plans-1/decoder.plan" and decoder.gpu == "Orin"
    assert manifest.engine("encoder").max_prompts is None
    assert manifest.to_dict()["graphs"] == {**OLD_GRAPHS, "fp16_encoder": True}


# A decoder record as samexport wrote it before engine records were typed (build_engine's dict,
# the plan path made relative to the artifact), and a TensorRT-RTX one from before "test_build".
OLD_ENGINE_RECORDS = {
    "decoder": {
        "builder": "tensorrt", "test_build": False, "tensorrt_module": "tensorrt", "tensorrt_version": "10.3.0.26",
        "gpu": "Orin", "compute_capability": "8.7", "strongly_typed": True, "tf32": False,
        "inputs": [{"name": "point_coords", "dtype": "float", "shape": [-1, -1, 2]}],
        "outputs": [{"name": "masks", "dtype": "float", "shape": [-1, -1, 256, 256]}],
        "profiles": [{"point_coords": [[1, 1, 2], [1, 4, 2], [32, 16, 2]]}],
        "config": {"version_compatible": True, "hardware_compatibility": "ampere_plus"},
        "build_seconds": 12.5, "plan_bytes": 4, "plan": "plans-1/decoder.plan",
    },
    "encoder": {
        "builder": "tensorrt_rtx", "tensorrt_module": "tensorrt_rtx_bindings", "tensorrt_version": "1.7.1.116",
        "gpu": None, "compute_capability": None, "profiles": [], "plan_bytes": 4, "plan": "plans-1/encoder.plan",
        "graph": {"form": "fp32-attention", "sha256": "1" * 64},
    },
}


def test_a_manifest_written_before_engine_records_were_typed_still_loads(tmp_path):
    """Read from disk as an older samexport wrote it (the same JSON, digest and file records):
    every engine record is an EngineRecord, and the decoder's is written back as it was."""
    from samexport.artifacts import _digest
    from samexport.integrity import file_records

    (tmp_path / "plans-1").mkdir()
    for name in (C.ENCODER_ONNX, C.DECODER_ONNX, "plans-1/encoder.plan", "plans-1/decoder.plan"):
        (tmp_path / name).write_bytes(b"data")
    data = manifest_data(engines=OLD_ENGINE_RECORDS)
    data["files"] = json_records(file_records(tmp_path, [C.ENCODER_ONNX, C.DECODER_ONNX, "plans-1/encoder.plan", "plans-1/decoder.plan"]))
    (tmp_path / C.MANIFEST).write_text(json.dumps({**data, DIGEST_KEY: _digest(data)}))

    manifest = read_manifest(tmp_path)
    assert all(isinstance(record, EngineRecord) for record in manifest.engines.values())
    decoder, encoder = manifest.engine("decoder"), manifest.engine("encoder")
    assert decoder.max_prompts == 32 and decoder.profiles[0]["point_coords"].opt == (1, 4, 2)
    assert decoder.version_compatible and decoder.hardware_compatibility == "ampere_plus"
    assert decoder.inputs[0]["name"] == "point_coords" and decoder.build_seconds == 12.5
    assert decoder.to_dict() == OLD_ENGINE_RECORDS["decoder"]
    assert encoder.test_build and encoder.builder == "tensorrt_rtx" and encoder.max_prompts is None
    assert encoder.graph == {"form": "fp32-attention", "sha256": "1" * 64} and encoder.hardware_compatibility == "none"
    # Written back by this samexport and read again: the same records.
    assert read_manifest(tmp_path) == manifest
    assert write_manifest(tmp_path, manifest).engines == manifest.engines == read_manifest(tmp_path).engines
    assert json.loads((tmp_path / C.MANIFEST).read_text())["engines"]["decoder"] == OLD_ENGINE_RECORDS["decoder"]


# The engine sections as samexport wrote them before they were typed (2026-12-06): the settings
# (``BuildConfig.to_dict``), the verdict of ``samexport engines --fallback`` on a Jetson, and a build
# on a machine without TensorRT, from before ``optimization_level`` existed.
OLD_VERIFIED = {
    "engine_config": {
        "workspace_bytes": 4294967296, "prompts": [1, 1, 64], "points": [1, 2, 16], "timing_cache": "/tmp/cache.bin",
        "version_compatible": False, "hardware_compatibility": "none", "optimization_level": None,
    },
    "skipped_engines": {},
    "engines_verification": {
        "status": "passed", "gpu": "Orin", "compute_capability": "8.7", "tensorrt_module": "tensorrt",
        "tensorrt_version": "10.3.0.26", "attention": "fused-pattern", "precision": "fp16", "backend": "tensorrt",
        "references": "references-0123456789abcdef.npz",
        "summary": {"embedding_cosine": 0.99991, "mask_iou_min": 0.981, "iou_score_max_abs": 0.004},
        "checks": [{"metric": "embedding_cosine", "value": 0.99991, "limit": 0.999, "bound": "min", "passed": True}],
        "verified": "2026-12-06T07:50:00+0000", "encoder_form": "fp32-attention",
        "fallback_from": {"encoder_form": "exported", "failure": "embedding error 0.4 of scale",
                          "summary": {"embedding_rel_max_abs": 0.4}},
    },
}
OLD_SKIPPED = {
    "engine_config": {"workspace_bytes": None, "prompts": [1, 4, 8], "points": [1, 2, 4], "timing_cache": None,
                      "version_compatible": True, "hardware_compatibility": "ampere_plus"},
    "skipped_engines": {"encoder": "no NVIDIA GPU visible", "decoder": "no NVIDIA GPU visible"},
    "engines_verification": {
        "status": "unverified", "gpu": None, "compute_capability": None, "tensorrt_module": None,
        "tensorrt_version": None, "attention": "plain", "precision": "fp32", "reason": "built without references",
        "references": None,  # an optional key written as null: kept as it was
    },
}


@pytest.mark.parametrize("sections", [OLD_VERIFIED, OLD_SKIPPED], ids=["verified", "skipped"])
def test_engine_sections_written_before_they_were_typed_load_and_round_trip(tmp_path, sections):
    """An artifact's manifest.json as the code before the typed engine sections wrote it (digest
    and file records included) is read from disk into records, and written back the same."""
    from samexport.artifacts import _digest
    from samexport.integrity import file_records

    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        (tmp_path / name).write_bytes(b"graph")
    data = manifest_data(**sections)
    data["files"] = json_records(file_records(tmp_path, [C.ENCODER_ONNX, C.DECODER_ONNX]))
    (tmp_path / C.MANIFEST).write_text(json.dumps({**data, DIGEST_KEY: _digest(data)}))

    manifest = read_manifest(tmp_path)
    settings, verdict = manifest.engine_config, manifest.engines_verification
    assert isinstance(settings, EngineSettings) and isinstance(verdict, EngineVerification)
    expected = sections["engine_config"]
    assert settings.prompts == tuple(expected["prompts"]) and settings.points == tuple(expected["points"])
    assert settings.version_compatible is expected["version_compatible"]
    assert settings.hardware_compatibility == expected["hardware_compatibility"]
    assert settings.optimization_level is None and settings.timing_cache == expected["timing_cache"]
    assert manifest.skipped_engines == sections["skipped_engines"]
    assert verdict.status == sections["engines_verification"]["status"]
    assert verdict.passed is (verdict.status == "passed")
    assert verdict.precision == sections["engines_verification"]["precision"]
    if verdict.passed:
        assert verdict.gpu == "Orin" and verdict.summary["mask_iou_min"] == 0.981 and verdict.checks[0]["passed"]
        assert verdict.encoder_form == "fp32-attention" and verdict.fallback_from["encoder_form"] == "exported"
    else:
        assert verdict.reason == "built without references" and verdict.references is None and verdict.gpu is None
    for key, value in sections.items():
        assert manifest.to_dict()[key] == value
    assert manifest.to_dict() == data
    # Written back by this samexport and read again: the same JSON, the same records.
    assert write_manifest(tmp_path, manifest) == read_manifest(tmp_path) == manifest
    written = json.loads((tmp_path / C.MANIFEST).read_text())
    assert {key: written[key] for key in sections} == sections


# ``manifest.references`` as samexport wrote it before it was typed (2026-12-06): format 1 (SAM's
# embedding only, before ``contract`` and ``features`` existed) and format 2 of a SAM 2.1 build.
OLD_REFERENCES_FORMAT_1 = {
    "file": "references-00112233445566aa.npz", "format": 1,
    "images": {"landscape": {"size": [683, 1024], "prompts": ["point", "box", "box_point", "mask_refinement"]},
               "portrait": {"size": [1024, 640], "prompts": ["ten_points", "batch_boxes_4"]}},
    "image_source": "scikit-image sample photos", "decoder_calls": 6,
    "stored_dtype": {"images": "uint8 (PNG)", "embeddings": "float16", "low_res_masks": "float16", "iou_predictions": "float32"},
    "storage_error": {"embedding_rel_max_abs": 0.000244, "low_res_masks_rel_max_abs": 0.000488},
    "reference": "tiny (FP32)", "seconds": 3.2, "bytes": 4,
}
OLD_REFERENCES_SAM2 = {
    "file": "references-ffeeddccbbaa9988.npz", "format": 2, "contract": "sam2",
    "features": ["image_embeddings", "high_res_feats_0", "high_res_feats_1"],
    "images": {"landscape": {"size": [683, 1024], "prompts": ["point"]}},
    "image_source": "synthetic", "decoder_calls": 1,
    "stored_dtype": {"images": "uint8 (PNG)", "features": "float16", "low_res_masks": "float16",
                     "iou_predictions": "float32", "object_score_logits": "float32"},
    "storage_error": {"embedding_rel_max_abs": 0.00012}, "reference": "sam2.1_hiera_tiny (FP32)", "seconds": 40.0,
    "bytes": 4,
}


@pytest.mark.parametrize("old", [OLD_REFERENCES_FORMAT_1, OLD_REFERENCES_SAM2], ids=["format1", "sam2-format2"])
def test_references_section_written_before_it_was_typed_loads_and_round_trips(tmp_path, old):
    """manifest.json with the references section as the code before ReferencesRecord wrote it
    (digest and file records included) is read from disk into a ReferencesRecord and written back
    the same, key for key and in the same order."""
    from samexport.artifacts import _digest
    from samexport.integrity import file_records

    for name in (C.ENCODER_ONNX, C.DECODER_ONNX, old["file"]):
        (tmp_path / name).write_bytes(b"data")
    data = manifest_data(references=old)
    data["files"] = json_records(file_records(tmp_path, [C.ENCODER_ONNX, C.DECODER_ONNX, old["file"]]))
    (tmp_path / C.MANIFEST).write_text(json.dumps({**data, DIGEST_KEY: _digest(data)}, indent=2) + "\n")

    manifest = read_manifest(tmp_path)
    record = manifest.references
    assert isinstance(record, ReferencesRecord) and record.file == old["file"] and record.format == old["format"]
    assert record.images["landscape"] == ReferenceImage((683, 1024), tuple(old["images"]["landscape"]["prompts"]))
    assert list(record.images) == list(old["images"]) and record.decoder_calls == old["decoder_calls"]
    assert record.storage_error["embedding_rel_max_abs"] == old["storage_error"]["embedding_rel_max_abs"]
    assert record.bytes == 4 and record.stored_dtype == old["stored_dtype"]
    if old["format"] == 1:
        assert record.contract is None and record.features is None
    else:
        assert record.contract == "sam2" and record.features == tuple(old["features"])
    assert manifest.to_dict() == data
    # Written back by this samexport and read again: the same records, the same JSON text.
    assert write_manifest(tmp_path, manifest) == read_manifest(tmp_path) == manifest
    written = json.loads((tmp_path / C.MANIFEST).read_text())
    assert json.dumps(written["references"], indent=2) == json.dumps(old, indent=2)
    assert written["files"] == data["files"]


def test_references_record_keeps_unknown_keys_and_refuses_bad_ones():
    newer = {**OLD_REFERENCES_SAM2, "seed": 7}  # a key a newer samexport may write
    assert ReferencesRecord.from_dict(newer).extra == {"seed": 7}
    assert ReferencesRecord.from_dict(newer).to_dict() == newer
    assert Manifest.from_dict(manifest_data(references=newer)).to_dict()["references"] == newer
    for key, bad in (("bytes", "4"), ("features", "image_embeddings"), ("images", {"x": {"size": [1], "prompts": []}}),
                     ("storage_error", {"embedding_rel_max_abs": "small"}), ("format", True)):
        with pytest.raises(SamExportError, match="bad 'references"):
            Manifest.from_dict(manifest_data(references={**OLD_REFERENCES_SAM2, key: bad}))


# ``manifest.checkpoint`` / ``encoder`` / ``decoder`` as samexport wrote them before they were typed
# (2026-12-06): a SAM build's (the decoder with its two halves; dynamic axes are names) and the
# partial sections of a hand-made manifest (no sha256, graphs without their tensors).
def _tensors(*specs: tuple) -> list[dict]:
    return [{"name": name, "dtype": "float32", "shape": list(shape)} for name, shape in specs]


OLD_GRAPH_SECTIONS = {
    "checkpoint": {"file": "sam_vit_b_01ec64.pth", "sha256": "ab" * 32},
    "encoder": {"onnx": "encoder.onnx", "inputs": _tensors(("image", (1, 3, 1024, 1024))),
                "outputs": _tensors(("image_embeddings", (1, 256, 64, 64)))},
    "decoder": {
        "onnx": "decoder.onnx",
        "inputs": _tensors(("image_embeddings", (1, 256, 64, 64)), ("point_coords", ("num_prompts", "num_points", 2)),
                           ("point_labels", ("num_prompts", "num_points")), ("mask_input", ("num_masks", 1, 256, 256)),
                           ("has_mask_input", ("num_masks",))),
        "outputs": _tensors(("iou_predictions", ("num_prompts", 4)), ("low_res_masks", ("num_prompts", 4, 256, 256))),
        "halves": {
            "scores": {"onnx": "decoder_scores.onnx", "inputs": _tensors(("point_coords", ("num_prompts", "num_points", 2))),
                       "outputs": _tensors(("mask_tokens", ("num_prompts", 4, 256)))},
            "masks": {"onnx": "decoder_masks.onnx", "inputs": _tensors(("mask_tokens", ("num_prompts", 4, 256))),
                      "outputs": _tensors(("low_res_masks", ("num_prompts", 4, 256, 256)))},
        },
    },
}
OLD_PARTIAL_SECTIONS = {"checkpoint": {"file": "x.pth"}, "encoder": {"onnx": "encoder.onnx"}, "decoder": {"onnx": "decoder.onnx"}}


@pytest.mark.parametrize("sections", [OLD_GRAPH_SECTIONS, OLD_PARTIAL_SECTIONS], ids=["build", "partial"])
def test_graph_and_checkpoint_sections_written_before_they_were_typed_load_and_round_trip(tmp_path, sections):
    """manifest.json with the checkpoint and graph sections as the code before CheckpointRecord and
    GraphRecord wrote them is read from disk into records and written back the same, key for key
    and in the same order."""
    from samexport.artifacts import _digest
    from samexport.integrity import file_records

    for name in (C.ENCODER_ONNX, C.DECODER_ONNX):
        (tmp_path / name).write_bytes(b"graph")
    data = manifest_data(**sections)
    data["files"] = json_records(file_records(tmp_path, [C.ENCODER_ONNX, C.DECODER_ONNX]))
    (tmp_path / C.MANIFEST).write_text(json.dumps({**data, DIGEST_KEY: _digest(data)}, indent=2) + "\n")

    manifest = read_manifest(tmp_path)
    assert isinstance(manifest.checkpoint, CheckpointRecord) and manifest.checkpoint.file == sections["checkpoint"]["file"]
    assert manifest.checkpoint.sha256 == sections["checkpoint"].get("sha256")
    assert isinstance(manifest.encoder, GraphRecord) and manifest.decoder.onnx == C.DECODER_ONNX
    if "inputs" in sections["decoder"]:
        assert manifest.encoder.outputs == (C.TensorSpec("image_embeddings", "float32", (1, 256, 64, 64)),)
        assert manifest.decoder.input("point_coords").shape == ("num_prompts", "num_points", 2)
        assert manifest.decoder.input("mask_input").shape[0] == "num_masks"
        assert manifest.decoder_halves() == (C.DECODER_SCORES_ONNX, C.DECODER_MASKS_ONNX)
        assert manifest.decoder.halves["masks"].inputs[0].name == "mask_tokens"
    else:
        assert manifest.decoder.inputs == () and manifest.decoder.input("mask_input") is None
        assert manifest.decoder_halves() is None
    assert manifest.to_dict() == data
    assert write_manifest(tmp_path, manifest) == read_manifest(tmp_path) == manifest
    written = json.loads((tmp_path / C.MANIFEST).read_text())
    for key, value in sections.items():
        assert json.dumps(written[key], indent=2) == json.dumps(value, indent=2)


def test_bad_graph_and_checkpoint_sections_are_refused():
    tensor = {"name": "image", "dtype": "float32", "shape": [1, 3, 1024, 1024]}
    for changes, message in (
        ({"checkpoint": {"file": "x.pth", "sha256": 7}}, "bad 'checkpoint' section"),
        ({"encoder": {"onnx": "encoder.onnx", "inputs": [{**tensor, "shape": "1x3"}]}}, "bad 'encoder' section"),
        ({"encoder": {"onnx": "encoder.onnx", "outputs": {"image": tensor}}}, "bad 'encoder' section"),
        ({"decoder": {"onnx": 3}}, "bad 'decoder' section"),
        ({"decoder": {"onnx": C.DECODER_ONNX, "halves": {"scores": {"onnx": C.DECODER_SCORES_ONNX, "inputs": [{}]},
                                                        "masks": {"onnx": C.DECODER_MASKS_ONNX}}}},
         "bad 'decoder.halves.scores' section"),
    ):
        with pytest.raises(SamExportError, match=message):
            Manifest.from_dict(manifest_data(**changes))
    # A key a newer samexport may write is kept.
    newer = {"onnx": "encoder.onnx", "inputs": [tensor], "opset": 18}
    assert Manifest.from_dict(manifest_data(encoder=newer)).to_dict()["encoder"] == newer


def test_file_records_are_typed_and_written_back_as_they_were():
    """manifest.files: FileRecords by name; a key a newer samexport may write is kept."""
    old = {C.ENCODER_ONNX: {"bytes": 5, "sha256": "a" * 64}, C.DECODER_ONNX: {"bytes": 0, "sha256": "b" * 64, "mtime": 3}}
    manifest = Manifest.from_dict(manifest_data(files=old))
    assert manifest.files[C.ENCODER_ONNX] == FileRecord(5, "a" * 64)
    assert manifest.files[C.DECODER_ONNX].bytes == 0 and manifest.files[C.DECODER_ONNX].extra == {"mtime": 3}
    assert json.dumps(manifest.to_dict()["files"]) == json.dumps(old)
    for bad in ({"bytes": -1, "sha256": "a" * 64}, {"bytes": 1, "sha256": "a"}, {"bytes": True, "sha256": "a" * 64}):
        with pytest.raises(SamExportError, match="bad file record"):
            Manifest.from_dict(manifest_data(files={C.ENCODER_ONNX: bad}))


def test_build_settings_are_recorded_as_the_json_form_wrote_them():
    """BuildConfig.record() is the typed form of BuildConfig.to_dict(), the JSON older builds wrote."""
    config = BuildConfig(prompts=(1, 2, 8), timing_cache=Path("cache.bin"), optimization_level=4)
    assert config.record().to_dict() == json.loads(json.dumps(config.to_dict()))
    assert EngineSettings.from_dict(json.loads(json.dumps(config.to_dict()))) == config.record()
    assert Manifest.from_dict(manifest_data(engine_config={})).engine_config is None
    assert Manifest.from_dict(manifest_data()).to_dict()["engine_config"] == {}


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("engines_verification", {"gpu": "Orin"}, "bad 'engines_verification' section"),
        ("engines_verification", {"status": "passed", "summary": [1]}, r"bad 'engines_verification.summary'"),
        ("engine_config", {"prompts": [1, 2]}, r"engine setting 'prompts' must be \[min, opt, max\]"),
        ("engine_config", {"hardware_compatibility": "any"}, "bad engine setting 'hardware_compatibility'"),
        ("skipped_engines", {"encoder": None}, "'skipped_engines' must give a reason"),
    ],
)
def test_bad_engine_sections_are_refused(section, value, message):
    with pytest.raises(SamExportError, match=f"{C.MANIFEST}: .*{message}"):
        Manifest.from_dict(manifest_data(**{section: value}))


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("graphs", {"encoder": "fp16"}, "bad 'graphs' section"),
        ("graphs", {"encoder": "fp16", "decoder": "fp16", "fp16_encoder": "yes"}, "'graphs.fp16_encoder' must be true or false"),
        ("parity", {"passed": "yes", "summary": {}}, "bad 'parity' section"),
    ],
)
def test_bad_sections_are_refused(section, value, message):
    with pytest.raises(SamExportError, match=message):
        Manifest.from_dict(manifest_data(**{section: value}))
    with pytest.raises(SamExportError, match="names no plan"):
        EngineRecord.from_dict({"gpu": "x"}, name="decoder")
    with pytest.raises(SamExportError, match=f"{C.MANIFEST}: the decoder engine's record names no plan"):
        Manifest.from_dict(manifest_data(engines={"decoder": {"gpu": "x"}}))
    with pytest.raises(SamExportError, match="the decoder engine's record has bad profiles"):
        EngineRecord.from_dict({"plan": "d.plan", "profiles": [{"point_coords": [[1, 1, 2]]}]}, name="decoder")
    assert ParityRecord.from_dict(OLD_PARITY).precision == "int8"


def test_enumerations_are_defined_once():
    pytest.importorskip("torch")
    from samexport.export.attention import ATTENTION_MODES
    from samexport.pipeline import PRECISIONS

    assert ATTENTION_MODES == C.ATTENTION_MODES and PRECISIONS == C.PRECISIONS


# Manifests on disk: file records, digests, edits; what a rebuild may replace.


def _rewrite(artifact: Path, change) -> None:
    path = artifact / C.MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_manifest_records_size_and_sha256_of_every_graph_and_the_references(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    assert set(manifest.files) == {*C.GRAPH_FILES, manifest.references.file}  # the stored references too
    for name, record in manifest.files.items():
        assert record == FileRecord((tiny_artifact / name).stat().st_size, sha256_file(tiny_artifact / name))
    assert DIGEST_KEY in json.loads((tiny_artifact / C.MANIFEST).read_text())


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


def test_a_format_2_manifest_without_records_is_refused(artifact):
    from samexport.artifacts import DIGEST_KEY, read_manifest
    from samexport.runtime.backends import open_backend

    _rewrite(artifact, lambda data: (data.pop("files"), data.pop(DIGEST_KEY)))
    with pytest.raises(SamExportError, match="has manifest format 2 but no 'files' or 'manifest_sha256'"):
        read_manifest(artifact)
    with pytest.raises(SamExportError, match="the manifest was edited"):
        open_backend(artifact, "onnxruntime-cpu")


def test_a_manifest_dressed_as_format_1_is_refused(artifact):
    from samexport.artifacts import DIGEST_KEY, read_manifest

    _rewrite(artifact, lambda data: (data.pop("files"), data.pop(DIGEST_KEY), data.update(format=1)))
    with pytest.raises(SamExportError, match="claims manifest format 1 but has the 'runtime' section"):
        read_manifest(artifact)


def test_a_graph_without_a_record_is_refused(artifact):
    """A record deleted and the digest recomputed: the graph would go unchecked."""
    from samexport.artifacts import DIGEST_KEY, _digest, read_manifest

    def drop_decoder(data):
        del data["files"][C.DECODER_ONNX], data[DIGEST_KEY]
        data[DIGEST_KEY] = _digest(data)

    _rewrite(artifact, drop_decoder)
    with pytest.raises(SamExportError, match="records no size or hash for decoder.onnx"):
        read_manifest(artifact)


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


def test_verify_artifact_names_a_missing_plan(artifact):
    manifest = read_manifest(artifact)
    records = {**manifest.files, "plans-x/encoder.plan": FileRecord(1, "0" * 64)}
    with pytest.raises(SamExportError, match="incomplete: plans-x/encoder.plan is missing"):
        verify_artifact(artifact, manifest.replace(files=records))


def test_an_artifact_holding_user_files_is_not_replaced(artifact, tiny_checkpoint, no_export):
    (artifact / "notes.txt").write_text("the user's own file")
    with pytest.raises(SamExportError, match=r"1 entry samexport did not write \(notes.txt\)"):
        build("tiny", checkpoint=tiny_checkpoint, output=artifact)
    assert (artifact / "notes.txt").read_text() == "the user's own file"


@pytest.mark.parametrize("name", ["encoder.onnx.bak", "decoder.onnx~", "encoder.onnx.data.old", ".manifest.json.partial-mine"])
def test_a_rebuild_keeps_user_files_named_like_graphs(artifact, tiny_checkpoint, name):
    (artifact / name).write_text("mine")
    with pytest.raises(SamExportError, match=rf"1 entry samexport did not write \({name}\)"):
        build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert (artifact / name).read_text() == "mine"


@pytest.mark.slow
def test_a_rebuild_replaces_its_own_external_data(artifact, tiny_checkpoint):
    (artifact / f"{C.ENCODER_ONNX}.data").write_bytes(b"weights of an earlier vit_h build")
    build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False)
    assert not (artifact / f"{C.ENCODER_ONNX}.data").exists()
