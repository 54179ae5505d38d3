"""``samexport engines``, verified: new plans run on the stored references before they are kept.

:func:`build_verified_engines` builds the plans (``samexport.engines.artifact``), runs them on the
artifact's PyTorch references on this GPU (``samexport.parity.verify``, the comparison of
``samexport parity``), and commits them only when every figure is within the precision's
tolerances; otherwise the new plans folder is removed, the artifact stays byte for byte as it
was, and the error names the figure, by how much, and what to try next. The verdict (GPU,
compute capability, TensorRT version, attention mode, figures) goes into the manifest as
``engines_verification``; ``verify=False`` records ``"unverified"``, and TensorRT-RTX test builds
(which cannot run) ``"not run (test build)"``.

The runner is a seam: ``runner(folder, manifest)`` opens the backend that runs the candidate
plans (default :func:`tensorrt_runner`); tests on a machine without a GPU pass one that runs the
graphs on ONNX Runtime, or one that perturbs outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from samexport import constants as C
from samexport.artifacts import Manifest, read_manifest, verify_artifact
from samexport.engine_records import EngineRecord, EngineVerification
from samexport.engines.artifact import (
    BUILDERS,
    PlanRequest,
    build_candidate_plans,
    check_candidate_plans,
    check_engine_request,
    commit_plans,
)
from samexport.engines.builder import BuildConfig
from samexport.engines.fallback import EXPORTED_FORM, FP32_ATTENTION_FORM, fp32_attention_graphs, require_onnx
from samexport.errors import SamExportError
from samexport.parity.references import load_references, no_references_message
from samexport.parity.report import ParityReport
from samexport.parity.verify import BackendOpener, VerificationError, describe_failure, verify_with_references
from samexport.plugins.tensorrt_plugin import tensorrt_plugins_for
from samexport.runtime.tensorrt_backend import TensorRTBackend

UNVERIFIED = "unverified"
NOT_RUN = "not run (test build)"


def tensorrt_runner(folder: Path, manifest: Manifest):
    """The default runner: the candidate plans on this GPU (``TensorRTBackend``)."""

    return TensorRTBackend(folder, manifest)


def _where_built(manifest: Manifest) -> dict[str, str | None]:
    record = manifest.engine("encoder") if "encoder" in manifest.engines else None
    return {
        "gpu": record and record.gpu,
        "compute_capability": record and record.compute_capability,
        "tensorrt_module": record and record.tensorrt_module,
        "tensorrt_version": record and record.tensorrt_version,
        "attention": manifest.attention,
        "precision": manifest.precision,
    }


def verdict_record(
    manifest: Manifest, status: str, report: ParityReport | None = None, *, reason: str | None = None,
) -> EngineVerification:
    """The ``engines_verification`` section: status, where the plans were built and, when they
    ran, the figures and checks of the comparison with the stored references."""
    record = EngineVerification(status, **_where_built(manifest), reason=reason)
    if report is None:
        return record
    return record.replace(
        backend=report.candidate,
        references=manifest.references.file if manifest.references else None,
        summary=report.summary,
        checks=tuple(c.to_dict() for c in report.checks),
        verified=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def next_steps(manifest: Manifest) -> str:
    """What to try when plans fail verification, for this artifact's precision and attention."""
    tips = []
    if manifest.attention != "plain":
        tips.append(f"export with --attention plain (this artifact uses {manifest.attention})")
    if manifest.precision != "fp32":
        tips.append("--fallback (a safer attention form, where available) or an fp32 build")
    tips.append("a newer TensorRT release; `samexport verify --backend onnxruntime-cpu` tells whether the graphs themselves pass")
    return "try " + "; or ".join(tips)


def runs(flavour: str, runner: BackendOpener) -> bool:
    """Whether the check runs anything: not for a TensorRT-RTX test build on TensorRT."""
    return not (flavour == "tensorrt_rtx" and runner is tensorrt_runner)


def plan_check(
    runner: BackendOpener = tensorrt_runner, *, flavour: str = "tensorrt",
) -> Callable[[Path, Manifest], EngineVerification]:
    """The check ``build_artifact_engines`` runs on new plans: run them with ``runner`` on the
    stored references; raise :class:`VerificationError` when a figure fails, else return the
    verdict. TensorRT-RTX test builds cannot run on TensorRT: with the default runner their
    verdict is :data:`NOT_RUN` (another runner, e.g. a test's, still runs)."""

    def check(folder: Path, candidate: Manifest) -> EngineVerification:
        if not runs(flavour, runner):
            return verdict_record(candidate, NOT_RUN)
        backend = runner(folder, candidate)
        try:
            report = verify_with_references(folder, candidate, backend)
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        if not report:
            raise VerificationError(
                f"the new {candidate.precision} plans fail verification against the PyTorch references "
                f"on {_where_built(candidate)['gpu'] or 'this machine'} ({report.candidate}): "
                f"{describe_failure(report)}. They were not kept; the artifact is unchanged. "
                f"{next_steps(candidate)}; or keep them unverified with --no-verify",
                report,
            )
        return verdict_record(candidate, "passed", report)

    return check


def build_verified_engines(
    artifact_dir: Path | str,
    config: BuildConfig = BuildConfig(),
    *,
    builder: str = "tensorrt",
    verify: bool = True,
    runner: BackendOpener = tensorrt_runner,
    fallback: bool = False,
    on_step: Callable[[str], None] = lambda message: None,
) -> Manifest:
    """Build, verify (unless ``verify=False``) and commit this device's plans; see the module doc.

    ``fallback``: when the plans fail verification, build them again from the FP32 attention
    form of the encoder (derived here, see ``samexport.engines.fallback``), verify those, and
    commit them if they pass; the verdict's ``encoder_form`` says which form the plans came from
    (``"exported"`` or ``"fp32-attention"``), ``fallback_from`` what the first plans failed on.

    Raises:
        SamExportError: as ``build_artifact_engines``; the artifact has no references (with
            ``verify``; said before anything is built); :class:`VerificationError` when the
            plans fail (nothing is changed then).
    """
    if builder not in BUILDERS:
        raise SamExportError(f"unknown builder {builder!r}; valid: {', '.join(BUILDERS)}")
    flavour = BUILDERS[builder]
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    if fallback:
        require_onnx()  # said before a long build, not after it
    if verify and runs(flavour, runner):
        if not manifest.references:
            raise SamExportError(no_references_message(folder) + ", or build the plans with --no-verify (recorded as unverified)")
        load_references(folder, manifest)  # damaged or unreadable: said before a long build
    request = check_engine_request(manifest.attention, config, flavour, manifest.contract)  # once, for both attempts
    verify_artifact(folder, manifest, names=[n for n in manifest.files if n.startswith((C.ENCODER_ONNX, C.DECODER_ONNX))])
    check = plan_check(runner, flavour=flavour) if verify else lambda _, candidate: verdict_record(candidate, UNVERIFIED)
    # First attempt: the artifact's own graphs. With ``fallback``, a second attempt from the FP32
    # attention form after a VerificationError (see _fallback).
    records = build_candidate_plans(folder, request, plugins=tensorrt_plugins_for(manifest.attention), on_step=on_step)
    if verify and runs(flavour, runner):
        on_step("running the new plans on the stored PyTorch references")
    try:
        verdict = check_candidate_plans(folder, manifest, records, check)
    except VerificationError as failure:
        if not fallback:
            raise
        records, verdict = _fallback(folder, manifest, request, check, failure, on_step)
    else:
        verdict = verdict.replace(encoder_form=EXPORTED_FORM) if verdict else verdict
    return commit_plans(folder, manifest, config, records, verdict)


def _fallback(
    folder: Path, manifest: Manifest, request: PlanRequest, check, failure: VerificationError,
    on_step: Callable[[str], None],
) -> tuple[dict[str, EngineRecord], EngineVerification]:
    """``--fallback`` after the primary plans failed (they are already removed): build the plans
    again from the FP32 attention form of the encoder (``samexport.engines.fallback``), check
    them the same way, and return (records, verdict) to commit. The verdict records the form
    and what the primary plans failed on. Raises :class:`VerificationError` naming both failures
    when the safe form fails too (its plans are removed; the artifact is unchanged)."""
    on_step(f"the plans failed verification ({describe_failure(failure.report)}); --fallback: the FP32 attention form")
    try:
        with fp32_attention_graphs(folder, on_step=on_step) as (graphs, graph_record):
            records = build_candidate_plans(
                folder, request, graphs_dir=graphs, plugins=tensorrt_plugins_for(manifest.attention), on_step=on_step,
            )
    except SamExportError as exc:
        raise VerificationError(f"{failure}\n--fallback could not build the FP32 attention form: {exc}", failure.report) from None
    records["encoder"] = records["encoder"].replace(graph=graph_record)
    on_step("running the FP32 attention form's plans on the stored PyTorch references")
    try:
        verdict = check_candidate_plans(folder, manifest, records, check)
    except VerificationError as second:
        raise VerificationError(
            f"{failure}\n--fallback: the plans built from the FP32 attention form fail too "
            f"({describe_failure(second.report)}); they were not kept either",
            second.report,
        ) from None
    return records, verdict.replace(
        encoder_form=FP32_ATTENTION_FORM,
        fallback_from={
            "encoder_form": EXPORTED_FORM,
            "failure": describe_failure(failure.report),
            "summary": failure.report.summary,
        },
    )
