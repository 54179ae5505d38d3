"""Engine plans for an artifact directory: the step that runs on the device itself.

A plan is tied to its GPU and its TensorRT release, so Jetson and robotics users export on a
workstation and build the plans on the device: ``samexport engines ARTIFACT_DIR``. That step needs
the base install plus the ``tensorrt`` extra (TensorRT and Polygraphy) and nothing else: this module
and everything it imports work without torch or onnxscript (``tests/test_engines_command.py`` runs
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
from pathlib import Path

from samexport import constants as C
from samexport.artifacts import (
    PLAN_FILES, PLANS_MARKER, PLANS_PARTIAL_PREFIX, PLANS_PREFIX, Manifest, read_manifest, verify_artifact,
    write_manifest,
)
from samexport.engines import TensorRTFlavour, load_tensorrt, tensorrt_availability
from samexport.engines.builder import BuildConfig, build_engine
from samexport.errors import SamExportError, require
from samexport.staging import remove_stale_folders, write_marker

PLAN_NAMES = dict(zip(("encoder", "decoder"), PLAN_FILES))
GRAPH_NAMES = {"encoder": C.ENCODER_ONNX, "decoder": C.DECODER_ONNX}
PARTIAL_PREFIX = PLANS_PARTIAL_PREFIX
MARKER = PLANS_MARKER  # JSON {"pid": ...}: this folder is ours, written by that process
BUILDERS: dict[str, TensorRTFlavour] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def check_engine_request(attention: str, config: BuildConfig, flavour: TensorRTFlavour) -> None:
    """Refuse, before any work, a combination that cannot give a usable plan.

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


def build_plans(
    graphs_dir: Path,
    target_dir: Path,
    config: BuildConfig,
    *,
    attention: str = "plain",
    flavour: TensorRTFlavour = "tensorrt",
    plugins: Sequence[Callable[[], object]] = (),
    on_step: Callable[[str], None] = lambda message: None,
) -> dict[str, dict]:
    """Build ``encoder.plan`` and ``decoder.plan`` from the graphs in ``graphs_dir``.

    ``plugins`` are called before the graphs are parsed, to register the TensorRT plugins their
    nodes need (as Polygraphy's ``LoadPlugins`` loads them): for ``--attention plugin`` graphs,
    :func:`samexport.plugins.tensorrt_plugin.tensorrt_plugins_for` gives them.

    Writes a new folder ``plans-<id>/`` inside ``target_dir`` (assembled under a hidden name with
    our marker, renamed when both plans are built) and returns the engine records for the
    manifest, whose ``plan`` entries are paths relative to ``target_dir``.

    Raises:
        SamExportError: Polygraphy or the TensorRT flavour is missing, or a GPU for a real build
            (checked before anything is written); see also :func:`check_engine_request` and
            ``build_engine``.
    """
    check_engine_request(attention, config, flavour)
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
            profiles = [config.decoder_profile()] if name == "decoder" else None
            records[name] = build_engine(
                graphs_dir / GRAPH_NAMES[name], partial / plan_name, config, profiles=profiles, flavour=flavour
            )
        final = target_dir / f"{PLANS_PREFIX}{stamp}-{os.getpid()}"
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for record in records.values():
        record["plan"] = f"{final.name}/{record['plan']}"
    return records


def build_artifact_engines(
    artifact_dir: Path | str,
    config: BuildConfig = BuildConfig(),
    *,
    builder: str = "tensorrt",
    plugins: Sequence[Callable[[], object]] = (),
    on_step: Callable[[str], None] = lambda message: None,
) -> Manifest:
    """Build this machine's engine plans for an artifact made anywhere, and record them.

    Args:
        artifact_dir: a directory written by ``samexport build`` (ONNX graphs + manifest).
        config: engine settings (profiles, workspace, timing cache, compatibility).
        builder: ``"tensorrt"`` (needs a GPU), or ``"tensorrt-rtx"``: TensorRT-RTX builds without a
            GPU; its plans are recorded as test builds, which the runtime refuses.
        plugins: TensorRT plugin loaders for the graphs' nodes (see :func:`build_plans`).
        on_step: called with a one-line description before each stage.

    Returns:
        The updated manifest. ``manifest.json`` is replaced atomically only after both plans are
        built, with the file records (sizes, sha256) recomputed for the graphs and the new plans;
        the plans the previous manifest named are removed after that. The graphs are checked
        against the old records before any plan is built.

    Raises:
        SamExportError: not an artifact, an unknown builder, a setting this TensorRT / device / graph
            cannot build (nothing is changed then).
    """
    if builder not in BUILDERS:
        raise SamExportError(f"unknown builder {builder!r}; valid: {', '.join(BUILDERS)}")
    flavour = BUILDERS[builder]
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    # The plans are built from these graphs and the new manifest hashes them again: check first.
    verify_artifact(folder, manifest, names=[n for n in manifest.files if n.startswith((C.ENCODER_ONNX, C.DECODER_ONNX))])
    records = build_plans(
        folder, folder, config, attention=manifest.attention, flavour=flavour, plugins=plugins, on_step=on_step
    )
    previous = [record.get("plan") for record in manifest.engines.values()]
    write_manifest(folder, manifest.replace(engine_config=config.to_dict(), engines=records, skipped_engines={}))
    _remove_previous_plans(folder, [p for p in previous if p])
    return read_manifest(folder)


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
