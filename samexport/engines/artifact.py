"""Engine plans for an artifact directory: the step that runs on the device itself.

A plan is tied to its GPU and its TensorRT release, so Jetson and robotics users export on a
workstation and build the plans on the device: ``samexport engines ARTIFACT_DIR``. That step needs
the base install plus the ``tensorrt`` extra (TensorRT and Polygraphy) and nothing else: this module
and everything it imports work without torch or onnxscript (``tests/engines/test_engines_command.py`` runs
it in a virtual environment that has neither). ``samexport build`` calls the same
:func:`build_plans`.

Layout and atomicity: each run writes both plans into a new folder ``plans-<id>/`` (files
``encoder.plan`` and ``decoder.plan``, plain TensorRT plans), and the manifest names that folder.
:func:`build_artifact_engines` commits by replacing ``manifest.json`` atomically (``os.replace``),
and only then removes the plans the previous manifest named. An interrupted run therefore leaves
the artifact exactly as it was (the old manifest still names the old plans); its half-written
folder carries our marker and is removed by the next run once its process is gone.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from samexport import constants as C
from samexport.artifacts import (
    PLAN_FILES,
    PLANS_MARKER,
    PLANS_PARTIAL_PREFIX,
    PLANS_PREFIX,
    Manifest,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from samexport.engine_records import EngineRecord, EngineVerification
from samexport.engines import TensorRTFlavour, load_tensorrt, tensorrt_availability
from samexport.engines.builder import BuildConfig, build_engine, check_engine_io
from samexport.errors import SamExportError, require
from samexport.staging import remove_stale_folders, write_marker

PLAN_NAMES = dict(zip(("encoder", "decoder"), PLAN_FILES))
GRAPH_NAMES = {"encoder": C.ENCODER_ONNX, "decoder": C.DECODER_ONNX}
PARTIAL_PREFIX = PLANS_PARTIAL_PREFIX
MARKER = PLANS_MARKER  # JSON {"pid": ...}: this folder is ours, written by that process
BUILDERS: dict[str, TensorRTFlavour] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


@dataclass(frozen=True)
class PlanRequest:
    """What to build plans with, checked once at the door (:func:`check_engine_request` makes it):
    the engine settings, the encoder's attention form, the TensorRT flavour and the graph contract
    of the artifact's family (which inputs get profiles, what the plans' tensors must be). The
    builders below take it as it is and check nothing of it again."""

    config: BuildConfig
    attention: str
    flavour: TensorRTFlavour
    contract: C.GraphContract = C.SAM_GRAPHS


def check_engine_request(
    attention: str, config: BuildConfig, flavour: TensorRTFlavour, contract: C.GraphContract = C.SAM_GRAPHS,
) -> PlanRequest:
    """Refuse, before any work, a combination that cannot give a usable plan; the checked request.

    Raises:
        SamExportError: hardware compatibility with the attention plugin (its PTX is compiled for
            the building GPU only), or the plugin with TensorRT-RTX (which has no
            ``tensorrt.plugin`` API).
    """
    if attention == "plugin" and config.hardware_compatibility != "none":
        raise SamExportError(
            "--hardware-compatible cannot apply to an --attention plugin encoder: the plugin kernel "
            "is compiled for the building GPU only; build without --hardware-compatible, or export "
            "with --attention fused-pattern"
        )
    if attention == "plugin" and flavour == "tensorrt_rtx":
        raise SamExportError(
            "TensorRT-RTX cannot build --attention plugin encoders (no tensorrt.plugin API); "
            "test-build a fused-pattern export instead, or build with TensorRT >= 10.9 on a GPU"
        )
    return PlanRequest(config=config, attention=attention, flavour=flavour, contract=contract)


def build_plans(
    graphs_dir: Path,
    target_dir: Path,
    request: PlanRequest,
    *,
    plugins: Sequence[Callable[[], object]] = (),
    on_step: Callable[[str], None] = lambda message: None,
) -> dict[str, EngineRecord]:
    """Build ``encoder.plan`` and ``decoder.plan`` from the graphs in ``graphs_dir`` as ``request``
    (checked at the door by :func:`check_engine_request`) asks: each graph with the profiles its
    family's contract gives (``BuildConfig.profiles``), each plan's tensors checked against that
    contract (``check_engine_io``), for SAM, MobileSAM and SAM 2.1 alike.

    ``plugins`` are called before the graphs are parsed, to register the TensorRT plugins their
    nodes need (as Polygraphy's ``LoadPlugins`` loads them): for ``--attention plugin`` graphs,
    :func:`samexport.plugins.tensorrt_plugin.tensorrt_plugins_for` gives them.

    Writes a new folder ``plans-<id>/`` inside ``target_dir`` (assembled under a hidden name with
    our marker, renamed when both plans are built) and returns the engine records for the
    manifest, whose ``plan`` entries are paths relative to ``target_dir``.

    Raises:
        SamExportError: Polygraphy or the TensorRT flavour is missing, or a GPU for a real build
            (checked before anything is written); see also ``build_engine``.
    """
    config, attention, flavour = request.config, request.attention, request.flavour
    # Every dependency before the first write: a missing Polygraphy must not cost a staging folder
    # made and removed in the artifact (nor fail on a read-only one with another message).
    require("polygraphy", "tensorrt")
    if flavour == "tensorrt":
        availability = tensorrt_availability("tensorrt")
        if not availability:
            raise SamExportError(f"TensorRT engines cannot be built here: {availability.reason}")
    else:
        load_tensorrt(flavour)
    if attention == "plugin" and not plugins:
        raise SamExportError(
            "--attention plugin graphs need the samexport::SamRelPosAttention TensorRT plugin: pass "
            "plugins=samexport.plugins.tensorrt_plugin.tensorrt_plugins_for('plugin')"
        )
    for load_plugin in plugins:
        load_plugin()  # the parser turns the plugin nodes into plugin layers
    remove_stale_partial_folders(target_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    partial = target_dir / f"{PARTIAL_PREFIX}{stamp}-{os.getpid()}"
    partial.mkdir()
    try:
        write_marker(partial, MARKER)
        records = {}
        for name, plan_name in PLAN_NAMES.items():
            on_step(f"building the {name} engine with {flavour}")
            records[name] = build_engine(
                graphs_dir / GRAPH_NAMES[name], partial / plan_name, config,
                profiles=config.profiles(name, request.contract), flavour=flavour,
            )
            check_engine_io(records[name], name, request.contract)
        final = target_dir / f"{PLANS_PREFIX}{stamp}-{os.getpid()}"
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {name: record.replace(plan=f"{final.name}/{record.plan}") for name, record in records.items()}


# Checks plans before they are committed: called with the artifact folder and a manifest naming
# the new plans (not yet written); returns the verdict to record in ``engines_verification``, or
# raises (a SamExportError saying why) to refuse them. The jobs layer supplies it
# (``samexport.parity.engines``): this layer does not know the references or the comparison.
PlanCheck = Callable[[Path, Manifest], EngineVerification]


def build_candidate_plans(
    folder: Path, request: PlanRequest, *, graphs_dir: Path | None = None,
    plugins: Sequence[Callable[[], object]] = (), on_step: Callable[[str], None] = lambda message: None,
) -> dict[str, EngineRecord]:
    """Build plans into a new ``plans-<id>/`` folder of the artifact ``folder`` without committing
    them: the manifest is not touched, so the artifact still names its old plans. Returns the
    engine records (plan paths relative to ``folder``); :func:`commit_plans` or
    :func:`discard_plans` follows.

    Args:
        request: the settings, checked at the door (``check_engine_request`` with the manifest's
            attention form).
        graphs_dir: where ``encoder.onnx`` / ``decoder.onnx`` come from; default ``folder``
            itself (another folder: e.g. a derived encoder graph, built with the same settings).
        plugins: TensorRT plugin loaders for the graphs' nodes (see :func:`build_plans`).
    """
    return build_plans(graphs_dir or folder, folder, request, plugins=plugins, on_step=on_step)


def discard_plans(folder: Path, records: dict[str, EngineRecord]) -> None:
    """Remove the plans folder :func:`build_candidate_plans` wrote (ours only: marker present)."""
    _remove_previous_plans(Path(folder), [record.plan for record in records.values()])


def commit_plans(
    folder: Path, manifest: Manifest, config: BuildConfig, records: dict[str, EngineRecord],
    verification: EngineVerification | None,
) -> Manifest:
    """Make ``records`` the artifact's plans: replace ``manifest.json`` atomically (file records
    recomputed, ``engines_verification`` set), then remove the plans the old manifest named."""
    previous = [record.plan for record in manifest.engines.values()]
    write_manifest(folder, manifest.replace(
        engine_config=config.record(), engines=records, skipped_engines={}, engines_verification=verification,
    ))
    _remove_previous_plans(folder, [p for p in previous if p not in {record.plan for record in records.values()}])
    return read_manifest(folder)


def check_candidate_plans(
    folder: Path, manifest: Manifest, records: dict[str, EngineRecord], check: PlanCheck | None,
) -> EngineVerification | None:
    """Run ``check`` on plans :func:`build_candidate_plans` wrote; on any failure (the check
    refuses them, or is interrupted) remove them and re-raise, leaving the artifact as it was.
    Returns the verdict (None without a check)."""
    if check is None:
        return None
    try:
        return check(folder, manifest.replace(engines=records, skipped_engines={}))
    except BaseException:
        discard_plans(folder, records)
        raise


def build_artifact_engines(
    artifact_dir: Path | str,
    config: BuildConfig = BuildConfig(),
    *,
    builder: str = "tensorrt",
    check: PlanCheck | None = None,
    plugins: Sequence[Callable[[], object]] = (),
    on_step: Callable[[str], None] = lambda message: None,
) -> Manifest:
    """Build this machine's engine plans for an artifact made anywhere, check them, and record them.

    Args:
        artifact_dir: a directory written by ``samexport build`` (ONNX graphs + manifest).
        config: engine settings (profiles, workspace, timing cache, compatibility).
        builder: ``"tensorrt"`` (needs a GPU), or ``"tensorrt-rtx"``: TensorRT-RTX builds without a
            GPU; its plans are recorded as test builds, which the runtime refuses.
        check: verifies the new plans before they are committed (:data:`PlanCheck`); its verdict
            is recorded as ``engines_verification``. None: no check, nothing recorded.
        plugins: TensorRT plugin loaders for the graphs' nodes (see :func:`build_plans`).
        on_step: called with a one-line description before each stage.

    Returns:
        The updated manifest. ``manifest.json`` is replaced atomically only after both plans are
        built and checked, with the file records (sizes, sha256) recomputed for the graphs and the
        new plans; the plans the previous manifest named are removed after that. The graphs are
        checked against the old records before any plan is built.

    Raises:
        SamExportError: not an artifact, an unknown builder, a setting this TensorRT / device / graph
            cannot build, or plans the check refuses (nothing is changed then: the new plans
            folder is removed).
    """
    if builder not in BUILDERS:
        raise SamExportError(f"unknown builder {builder!r}; valid: {', '.join(BUILDERS)}")
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    # The plans are built from these graphs and the new manifest hashes them again: check first.
    request = check_engine_request(manifest.attention, config, BUILDERS[builder], manifest.contract)
    verify_artifact(folder, manifest, names=[n for n in manifest.files if n.startswith((C.ENCODER_ONNX, C.DECODER_ONNX))])
    records = build_candidate_plans(folder, request, plugins=plugins, on_step=on_step)
    verdict = check_candidate_plans(folder, manifest, records, check)
    return commit_plans(folder, manifest, config, records, verdict)


def _remove_previous_plans(folder: Path, plans: list[str]) -> None:
    """Delete the plans an older manifest named: only files samexport wrote (a ``plans-*``
    folder with our marker, or ``encoder.plan`` / ``decoder.plan`` at the top of the artifact)."""
    for relative in plans:
        path = folder / relative
        parent = path.parent
        if parent != folder and parent.parent == folder and parent.name.startswith(PLANS_PREFIX) and (parent / MARKER).is_file():
            shutil.rmtree(parent, ignore_errors=True)
        elif parent == folder and path.name in PLAN_NAMES.values():
            path.unlink(missing_ok=True)


def remove_stale_partial_folders(folder: Path) -> list[Path]:
    """Remove half-built plan folders left by killed runs: only ours (marker present) whose
    process is gone. Returns what was removed."""
    return remove_stale_folders(folder, f"{PARTIAL_PREFIX}*", MARKER)
