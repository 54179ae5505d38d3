"""samexport.engines.artifact: the engine step checks the graphs and its dependencies before it
writes in the artifact, and records the plans it commits (``samexport engines`` end to end is in
``test_engines_command.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import needs_rtx

from samexport import constants as C
from samexport.artifacts import read_manifest, verify_artifact
from samexport.errors import SamExportError
from samexport.pipeline import build
from samexport.utils import sha256_file

pytestmark = pytest.mark.usefixtures("private_cache")


def test_engines_without_polygraphy_say_so_before_touching_the_artifact(artifact, monkeypatch):
    import errno
    import os
    import sys

    from samexport.engines.artifact import build_artifact_engines
    from samexport.errors import MissingExtraError

    before = sorted(p.name for p in artifact.iterdir())
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # the artifact on a read-only mount (root ignores chmod)
        if Path(path).resolve().is_relative_to(artifact.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    monkeypatch.setitem(sys.modules, "polygraphy", None)  # not installed
    with pytest.raises(MissingExtraError, match="polygraphy is not installed"):
        build_artifact_engines(artifact, builder="tensorrt-rtx")
    assert sorted(p.name for p in artifact.iterdir()) == before


def test_engines_step_refuses_a_damaged_graph_before_building(artifact):
    from samexport.engines.artifact import build_artifact_engines

    (artifact / C.DECODER_ONNX).write_bytes(b"\0" * (artifact / C.DECODER_ONNX).stat().st_size)
    before = (artifact / C.MANIFEST).read_bytes()
    with pytest.raises(SamExportError, match="decoder.onnx does not match"):
        build_artifact_engines(artifact, builder="tensorrt-rtx")
    assert (artifact / C.MANIFEST).read_bytes() == before


@pytest.mark.slow  # ~31 s of CPU: two TensorRT-RTX plans and a rebuild
@needs_rtx
def test_engines_step_records_the_new_plans_and_a_rebuild_replaces_them(artifact, tiny_checkpoint):
    from samexport.engines.artifact import build_artifact_engines
    from samexport.engines.builder import BuildConfig

    config = BuildConfig(workspace_bytes=1 << 30, prompts=(1, 1, 4), points=(1, 2, 4))
    manifest = build_artifact_engines(artifact, config, builder="tensorrt-rtx")
    plans = sorted(record.plan for record in manifest.engines.values())
    # the graphs, the stored PyTorch references and the new plans
    assert sorted(manifest.files) == sorted([*C.GRAPH_FILES, manifest.references.file, *plans])
    for name in plans:
        assert manifest.files[name].sha256 == sha256_file(artifact / name)
    verify_artifact(artifact, read_manifest(artifact))
    plan = artifact / plans[0]
    plan.write_bytes(plan.read_bytes()[:-1] + b"\0")
    with pytest.raises(SamExportError, match=f"{plans[0]} does not match"):
        verify_artifact(artifact, read_manifest(artifact))
    # An artifact with plans (our marker on their folder) is still ours to replace.
    build("tiny", checkpoint=tiny_checkpoint, output=artifact, parity=False, engines="skip")
    rebuilt = read_manifest(artifact)
    assert sorted(rebuilt.files) == sorted([*C.GRAPH_FILES, rebuilt.references.file])


@needs_rtx
def test_a_build_checks_its_engine_request_once_at_the_door(tiny_checkpoint, tmp_path, monkeypatch):
    """``build`` checks the engine request before the export and hands the checked request down:
    the plan builder does not check it again (it stops here at its first plan; the graphs are not
    exported, which this test does not need)."""
    import dataclasses

    import samexport.engines.artifact as engines_artifact
    from samexport import pipeline
    from samexport.records import GraphPrecisions

    def no_graphs(sam, staging, precision, **kwargs):
        return GraphPrecisions(encoder=precision, decoder=precision)

    class FirstPlan(Exception):
        pass

    def first_plan(graph, plan, config, **kwargs):
        raise FirstPlan(graph.name)

    checked = []
    real = engines_artifact.check_engine_request

    def counted(*args, **kwargs):
        checked.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "check_engine_request", counted)
    monkeypatch.setattr(engines_artifact, "check_engine_request", counted)
    monkeypatch.setattr(engines_artifact, "build_engine", first_plan)
    steps = pipeline.BUILD_STEPS["sam"]
    monkeypatch.setitem(pipeline.BUILD_STEPS, "sam", dataclasses.replace(steps, write_graphs=no_graphs))
    with pytest.raises(FirstPlan, match=C.ENCODER_ONNX):
        build("tiny", checkpoint=tiny_checkpoint, output=tmp_path / "out", parity=False, references=False,
              engine_builder="tensorrt-rtx")
    assert len(checked) == 1 and checked[0][0] == "plain"
    assert not (tmp_path / "out").exists()
