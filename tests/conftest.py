"""Shared fixtures: randomly initialised SAM models saved in the official checkpoint format, and
the tiny SAM trained on procedural scenes (``weights/``).

The weights come from ``samexport.testing`` (seeded random weights saved exactly as the official
``sam_vit_*.pth`` files are stored), which the benchmarks and users share.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The test process's threads, set here once for every test (and the subprocesses they start,
# which inherit the environment). torch runs its CPU ops on OpenMP (libgomp), whose worker threads
# busy-wait after each parallel region by default; between the many small ops of the tests'
# reference models they spun on both cores, against the ONNX Runtime threads and the next test:
# 34 % of the CPU samples of tests/runtime/test_predictor.py, and 78 % of a 2-minute sample of the
# fast lane at load ~9, sat in libgomp's wait loop (`perf record`, 2026-12-06). A passive policy
# makes the workers sleep instead; results are unchanged (same threads, same split of the work).
# libgomp reads the variable when torch loads it, which is later than this (nothing above imports
# torch). A value set in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _threads_per_test_process() -> int | None:
    """How many threads each test process's torch, OpenMP, BLAS and ONNX Runtime use:
    ``SAMEXPORT_TEST_THREADS`` if set; under pytest-xdist (``-n N``), the cores shared out among
    the N workers (``cpu_count // N``, at least 1), so two workers on two cores do not run four
    busy thread pools against each other; otherwise ``None``: the libraries' defaults (all cores)."""
    if os.environ.get("SAMEXPORT_TEST_THREADS"):
        return max(1, int(os.environ["SAMEXPORT_TEST_THREADS"]))
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        return max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    return None


TEST_THREADS = _threads_per_test_process()
if TEST_THREADS is not None:
    # Read when torch (libgomp) and NumPy's BLAS load, which is later than this; the subprocesses
    # the tests start inherit them. ONNX Runtime reads no variable: see _limit_onnxruntime_threads.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(TEST_THREADS))

from samexport.testing import official_sam, save_random_checkpoint  # noqa: E402 (NumPy loads here: after the thread variables)

TRAINED_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "sam_tiny_shapes.pth"


def _keep_freed_memory_mapped() -> None:
    """glibc only: keep blocks up to 32 MiB in the heap and freed memory mapped (1 GiB trim
    threshold, 64 MiB top pad), for this process only (subprocesses, such as the peak-memory
    measurements of tests/runtime/test_predictor_budget.py, keep glibc's defaults). The reference
    models' tensors and the ONNX Runtime arenas are allocated and freed again in every test, and
    each fresh mapping is paid in page faults: tests/runtime/test_predictor.py with
    tests/export/test_decoder_halves.py took 5.15 M minor faults and 12.7 s of system CPU with the
    defaults, 4.27 M and 11.0 s with these (same run, same load; peak RSS 3.39 GB either way)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not hasattr(ctypes.CDLL(name), "mallopt"):
        return
    mallopt = ctypes.CDLL(name).mallopt
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed value on 64-bit
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_TOP_PAD, 64 << 20)
    if TEST_THREADS is not None:
        # The fast lane (one thread per worker) also keeps blocks over 32 MiB in the heap
        # (M_MMAP_MAX 0: glibc maps no block on its own). Full lane, `-n 2`, back to back on a
        # quiet machine (2026-12-07): 35.7 M minor faults and 111 s of system CPU without it,
        # 19.3 M and 76 s with it; 207 s -> 186 s of wall time; peak RSS of a worker 5.9 GB.
        # Not in plain runs: their full-size builds hold blocks of gigabytes, which the heap
        # would keep fragmented.
        M_MMAP_MAX = -4
        mallopt(M_MMAP_MAX, 0)


if sys.platform.startswith("linux"):
    _keep_freed_memory_mapped()


def _limit_onnxruntime_threads() -> None:
    """Every ONNX Runtime session the tests open (samexport's and the tests' own) gets
    ``TEST_THREADS`` intra-op threads unless its options already name a number."""
    import onnxruntime as ort

    init = ort.InferenceSession.__init__
    if getattr(init, "_samexport_threads", False):
        return

    def limited(self, path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if sess_options.intra_op_num_threads == 0:  # 0: ONNX Runtime's default (all cores)
            sess_options.intra_op_num_threads = TEST_THREADS
        init(self, path_or_bytes, sess_options, *args, **kwargs)

    limited._samexport_threads = True
    ort.InferenceSession.__init__ = limited


if TEST_THREADS is not None:
    _limit_onnxruntime_threads()


def _once_per_run(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)`` once per test run, in a folder of its own; returns what it returns (a path
    inside the folder). Under pytest-xdist the workers share one result: the first to ask makes it
    in the run's base folder (the parent of every worker's own) under a file lock, and the others
    wait for it and read it; a session fixture would otherwise be made again in every worker, and
    the tiny artifact's build alone is ~20 CPU-seconds. The maker keeps its worker's one thread:
    the others are not waiting (``pytest_collection_modifyitems`` puts the builds first), and
    beside a busy worker the tiny build took 22-26 CPU-s on one thread against 27-29 on two
    (until 2026-12-07 it took every core). Results are read-only for the tests."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or sys.platform == "win32":
        return make(tmp_path_factory.mktemp(name))
    import fcntl

    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if folder.exists():  # a worker that failed half way
                import shutil

                shutil.rmtree(folder)
            folder.mkdir()
            made = make(folder)
            done.write_text(str(Path(made).relative_to(folder)))
    return folder / done.read_text()


# The session fixtures that ``_once_per_run`` makes for every worker, in the order they build on
# each other (the checkpoint comes with the artifact).
SHARED_BUILDS = ("tiny_checkpoint", "tiny_artifact", "tiny_attention_encoders")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(items):
    """Under pytest-xdist, so that no worker waits for another's shared build: one test for each
    build first, then the tests that need no shared build, then the rest, each group in
    collection order. pytest-xdist (``LoadScheduling``) starts each worker on a run of
    consecutive tests (an eighth of the lane for each of two workers), so the first worker makes
    the builds while the others run tests that need none. Without this the first test needing
    the tiny artifact came wherever the collection put it, and another worker sat out the ~20 s
    build at its own first such test (6.6 s and 22.8 s in two runs). Plain runs keep pytest's
    order. Every worker collects the same list and orders it the same way, as pytest-xdist
    requires."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    builders = []
    for name in SHARED_BUILDS[1:]:
        first = next((item for item in items if name in item.fixturenames), None)
        if first is not None and first not in builders:
            builders.append(first)
    rest = [item for item in items if item not in builders]
    # sorted() keeps the order within each group: the tests needing no shared build (False) first
    items[:] = builders + sorted(rest, key=lambda item: any(name in item.fixturenames for name in SHARED_BUILDS))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """The fast lane (one thread per worker) spends less on Python's cyclic garbage collector:
    the objects made before the first test (modules, the collected tests) are set aside
    (``gc.freeze``), and the youngest generation is collected after 20,000 new objects instead
    of 700. Tracing a model for ONNX export and ONNX Runtime's and torch's Python layers make
    objects by the hundred thousand, and every collection walked them again: 7.5 % of the CPU
    samples of five test files sat in the collector (``perf record``, 2026-12-07). Full lane,
    ``-n 2``, quiet machine: 337 -> 322 CPU-s (see docs/testing.md). Plain runs keep Python's
    defaults."""
    if TEST_THREADS is None:
        return
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path to a tiny-variant checkpoint saved like an official one."""
    return _once_per_run(tmp_path_factory, "ckpt", lambda folder: save_random_checkpoint("tiny", folder / "sam_tiny_random.pth"))


@pytest.fixture(scope="session")
def tiny_sam(tiny_checkpoint):
    """The tiny model loaded through ``samexport.checkpoint.load_sam``."""
    from samexport.checkpoint import load_sam

    return load_sam(tiny_checkpoint, "tiny")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_artifact) -> tuple[Path, Path]:
    """(encoder.onnx, decoder.onnx): the fp32 graphs of ``tiny_artifact``, which the build exports
    from ``tiny_checkpoint`` with ``export_encoder`` / ``export_decoders`` at the default opset and
    plain attention (checked here), so the session exports them once. Read-only: copy to change."""
    from samexport import constants as C
    from samexport.artifacts import read_manifest

    manifest = read_manifest(tiny_artifact)
    assert (manifest.precision, manifest.attention, manifest.opset) == ("fp32", "plain", C.DEFAULT_OPSET)
    return tiny_artifact / C.ENCODER_ONNX, tiny_artifact / C.DECODER_ONNX


@pytest.fixture(scope="session")
def tiny_attention_encoders(tiny_sam, tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    """attention mode -> the tiny encoder exported fp32 in that mode at ``support.ATTENTION_OPSETS[mode]``
    (plain: ``tiny_onnx``'s, the same export), shared by the attention tests. Read-only."""
    from support import ATTENTION_OPSETS

    from samexport import constants as C
    from samexport.export.to_onnx import export_encoder

    assert ATTENTION_OPSETS["plain"] == C.DEFAULT_OPSET
    def export(folder: Path) -> Path:
        for mode, opset in ATTENTION_OPSETS.items():
            if mode != "plain":
                assert export_encoder(tiny_sam, folder / f"{mode}.onnx", opset=opset, attention=mode) == folder / f"{mode}.onnx"
        return folder

    folder = _once_per_run(tmp_path_factory, "attention-encoders", export)
    return {mode: tiny_onnx[0] if mode == "plain" else folder / f"{mode}.onnx" for mode in ATTENTION_OPSETS}


@pytest.fixture(scope="session")
def tiny_official(tiny_checkpoint):
    import torch

    return official_sam("tiny", torch.load(tiny_checkpoint, weights_only=True))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """An artifact directory built by ``samexport.build`` (``samexport.pipeline``) from the tiny checkpoint."""
    from samexport.pipeline import build

    return _once_per_run(
        tmp_path_factory, "artifacts-tiny",
        lambda folder: build("tiny", checkpoint=tiny_checkpoint, output=folder / "tiny-fp32").artifact_dir,
    )


@pytest.fixture(scope="session")
def trained_checkpoint() -> Path:
    """The tiny SAM trained on procedural scenes (``tools/train_tiny_sam.py``), committed in the
    official format with fp16 storage: ``weights/sam_tiny_shapes.pth``."""
    return TRAINED_CHECKPOINT


@pytest.fixture(scope="session")
def trained_official(trained_checkpoint):
    """The official ``segment_anything`` model with the trained weights."""
    import torch

    return official_sam("tiny", torch.load(trained_checkpoint, weights_only=True))


@pytest.fixture(scope="session")
def trained_artifact(trained_checkpoint, tmp_path_factory) -> Path:
    """An fp32 artifact built by ``samexport.build`` from the trained checkpoint."""
    from samexport.pipeline import build

    return _once_per_run(
        tmp_path_factory, "artifacts-tiny-trained",
        lambda folder: build("tiny", checkpoint=trained_checkpoint, output=folder / "tiny-trained-fp32").artifact_dir,
    )


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> Path:
    """Full-size vit_b with seeded random weights, saved like ``sam_vit_b_01ec64.pth`` (~360 MB)."""
    return save_random_checkpoint("vit_b", tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth")


@pytest.fixture(scope="session")
def vit_b_artifact(vit_b_checkpoint, tmp_path_factory) -> Path:
    """fp32 artifact directory for vit_b (export takes ~30 s and ~2 GB of memory)."""
    from samexport.pipeline import build

    out = tmp_path_factory.mktemp("artifacts") / "vit_b-fp32"
    return build("vit_b", checkpoint=vit_b_checkpoint, output=out).artifact_dir


@pytest.fixture(scope="session")
def vit_b_fp16_encoder(vit_b_artifact, tmp_path_factory) -> Path:
    """``vit_b_artifact``'s encoder converted to FP16 as ``build --fp16`` converts it."""
    from samexport import constants as C
    from samexport.precision.fp16 import convert_to_fp16

    return convert_to_fp16(vit_b_artifact / C.ENCODER_ONNX, tmp_path_factory.mktemp("vit_b-fp16") / C.ENCODER_ONNX)


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(tmp_path_factory) -> Path:
    """Full-size MobileSAM with seeded random weights, saved like ``mobile_sam.pt`` (~40 MB)."""
    return save_random_checkpoint("mobile_sam", tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt")


@pytest.fixture(scope="session")
def mobile_sam_artifact(mobile_sam_checkpoint, tmp_path_factory) -> Path:
    """``samexport build --variant vit_t`` (fp32, quick parity on, no engines), through the CLI."""
    from typer.testing import CliRunner

    from samexport.cli import app

    out = tmp_path_factory.mktemp("artifacts") / "mobile_sam-fp32"
    result = CliRunner().invoke(app, ["build", "--variant", "vit_t", "--checkpoint", str(mobile_sam_checkpoint),
                                      "--output", str(out), "--no-engines"])
    assert result.exit_code == 0, result.output
    assert "parity vs PyTorch (fp32 tolerances): passed" in result.output
    return out


@pytest.fixture(scope="session")
def built_artifact(request, tmp_path_factory):
    """``get(variant, precision, int8_target="tensorrt", calibration=("chelsea", "rocket"))``: an
    artifact of ``tiny``, ``mobile_sam`` or ``vit_b`` (the session's checkpoints), built on first
    use and shared by every test that reads it, as full-size builds take minutes. The fp32 ones
    are the session's ``*_artifact`` fixtures; the others are built without the quick parity check
    and engines (the tests that read them run their own checks). Tests must not change them:
    copy one first (``shutil.copytree``)."""
    from support import write_calibration_folder

    from samexport.pipeline import build

    root = tmp_path_factory.mktemp("built")
    found: dict[tuple, Path] = {}

    def get(variant: str, precision: str, int8_target: str = "tensorrt", calibration=("chelsea", "rocket")) -> Path:
        if precision == "fp32":
            return request.getfixturevalue(f"{variant}_artifact")
        key = (variant, precision) + ((int8_target, tuple(calibration)) if precision == "int8" else ())
        if key not in found:
            name = "-".join(map(str, key[:3])) + (f"-{len(found)}" if precision == "int8" else "")
            calib = write_calibration_folder(root / f"{name}-calib", calibration) if precision == "int8" else None
            found[key] = build(
                variant, checkpoint=request.getfixturevalue(f"{variant}_checkpoint"), output=root / name,
                precision=precision, calib_dir=calib, int8_target=int8_target, parity=False, engines="skip",
            ).artifact_dir
        return found[key]

    return get


@pytest.fixture(scope="session")
def sam2_tiny_checkpoint(tmp_path_factory) -> Path:
    """sam2.1_hiera_tiny with seeded random weights (every parameter perturbed), saved as
    ``{"model": ...}`` like ``sam2.1_hiera_tiny.pt`` (video parts included)."""
    from samexport.testing import save_random_checkpoint

    return save_random_checkpoint("sam2.1_hiera_tiny", tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def sam2_tiny_artifact(sam2_tiny_checkpoint, tmp_path_factory) -> Path:
    """``samexport build --variant sam2.1_hiera_tiny`` (fp32, with its quick parity check; minutes
    on 2 loaded cores: the tests using it are slow)."""
    from samexport.pipeline import build

    return build(
        "sam2.1_hiera_tiny", checkpoint=sam2_tiny_checkpoint,
        output=tmp_path_factory.mktemp("sam2_artifact") / "sam2.1_hiera_tiny-fp32",
    ).artifact_dir


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A private samexport cache (``SAMEXPORT_CACHE``: the verified-files and calibration caches)
    in ``tmp_path / "cache"``, and an empty in-memory verified-files cache."""
    from samexport import integrity

    folder = tmp_path / "cache"
    monkeypatch.setenv("SAMEXPORT_CACHE", str(folder))
    monkeypatch.setattr(integrity, "_verified", {})
    return folder


@pytest.fixture
def artifact(tiny_artifact, tmp_path, private_cache) -> Path:
    """A private copy of ``tiny_artifact`` (``cp -p`` semantics: same mtimes) that a test may
    change, with a private cache."""
    import shutil

    return Path(shutil.copytree(tiny_artifact, tmp_path / "tiny-fp32"))


@pytest.fixture
def no_export(monkeypatch):
    """Loading the weights (the export's first step) fails loudly, to show that a refusal came
    before it. The build loads through its family's steps (``pipeline.BUILD_STEPS``), so the guard
    goes there: patching ``pipeline.load_sam`` would guard nothing."""
    import dataclasses

    import samexport.pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("the export started")

    for family, steps in list(samexport.pipeline.BUILD_STEPS.items()):
        monkeypatch.setitem(samexport.pipeline.BUILD_STEPS, family, dataclasses.replace(steps, load=must_not_run))
