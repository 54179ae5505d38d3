"""``samexport.constants``: the precision and backend tables that build, parity, bench, the CLI,
the dataset jobs and doctor all read."""

from __future__ import annotations

from typing import get_args

import pytest
import typer

from samexport import constants as C
from samexport.errors import SamExportError


def test_precisions_are_one_literal():
    from samexport import parity, pipeline

    assert C.PRECISIONS == get_args(C.Precision) == ("fp32", "fp16", "int8")
    assert pipeline.Precision is C.Precision and parity.Precision is C.Precision
    for backend in C.BACKENDS.values():
        assert set(backend.precisions) <= set(C.PRECISIONS), backend.name


@pytest.mark.parametrize("name", C.ARTIFACT_BACKENDS)
def test_every_artifact_backend_opens_or_says_why(tiny_artifact, name):
    """Each name in the table reaches its backend: it opens, or fails with a clear error of its
    own (no CUDA provider, no engines) — never "unknown backend"."""
    from samexport.runtime.backends import open_backend

    try:
        backend = open_backend(tiny_artifact, name)
    except (SamExportError, ImportError) as exc:
        assert "unknown backend" not in str(exc)
        assert name in ("onnxruntime-cuda", "tensorrt") or (name == "openvino" and "samexport[openvino]" in str(exc)), f"{name}: {exc}"
        return
    if name == "openvino":
        assert backend.name == f"openvino-cpu-{C.OPENVINO_DEFAULT_PRECISION}"
        return
    if name == C.AUTO_BACKEND:  # what auto opens here: tests/runtime/test_split_backend.py
        from samexport.runtime.backends import describe_auto

        assert backend.name == describe_auto(tiny_artifact)
        return
    device = C.BACKENDS[name].onnxruntime_device
    expected = {"cpu": {"onnxruntime-cpu"}, "cuda": {"onnxruntime-cuda"}}.get(device, {"onnxruntime-cpu", "onnxruntime-cuda"})
    assert backend.name in expected


@pytest.mark.parametrize("name", C.BENCH_BACKENDS)
def test_bench_has_an_opener_for_every_bench_backend(tmp_path, name):
    from samexport.bench.run import BACKEND_OPENERS, BenchConfig

    assert name in BACKEND_OPENERS
    assert BenchConfig((tmp_path,), backends=(name,)).backends == (name,)
    assert set(BACKEND_OPENERS) == set(C.BENCH_BACKENDS)


def test_unknown_backend_lists_the_table(tiny_artifact, tmp_path):
    from samexport.bench.run import BenchConfig
    from samexport.runtime.backends import open_backend

    with pytest.raises(SamExportError) as opened:
        open_backend(tiny_artifact, "cuda")
    with pytest.raises(SamExportError) as benched:
        BenchConfig((tmp_path,), backends=("cuda",))
    assert all(name in str(opened.value) for name in C.ARTIFACT_BACKENDS)
    assert all(name in str(benched.value) for name in C.BENCH_BACKENDS)


@pytest.mark.parametrize(
    ("command", "names"),
    [("predict", C.ARTIFACT_BACKENDS), ("segment-all", C.ARTIFACT_BACKENDS), ("embed", C.ARTIFACT_BACKENDS),
     ("parity", C.ARTIFACT_BACKENDS), ("bench", C.BENCH_BACKENDS)],
)
def test_cli_backend_help_lists_the_table(command, names):
    from samexport.cli import app

    group = typer.main.get_command(app)
    option = next(p for p in group.commands[command].params if p.name == "backend")
    for name in names:
        assert f"{name} ({C.BACKENDS[name].help if name in C.BACKENDS else C.AUTO_BACKEND_HELP})" in option.help


def test_doctor_has_a_line_per_backend():
    from samexport.doctor import diagnose

    report = diagnose()
    for name, backend in C.BACKENDS.items():
        status = report[f"backend {name}"]
        assert status == "installed" or (backend.extra or "samexport") in status, (name, status)
    assert report["backend onnxruntime-cpu"] == "installed"  # a base dependency
