"""``samexport verify``: any backend against the PyTorch references stored in the artifact.

The comparison is the family's parity loop, unchanged (``run_parity`` for SAM and MobileSAM,
``run_sam2_parity`` for SAM 2.1, chosen by the artifact's graph contract:
:func:`~samexport.parity.runner.parity_runner`): the stored references are replayed by
:class:`~samexport.parity.references.ReferenceBackend` in the place of the PyTorch backend, once
per stored image with that image's prompts, and the per-image results make one
:class:`~samexport.parity.report.ParityReport` with the artifact's precision tolerances. Needs
neither torch nor the export code: this module, the references and the runners import neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from samexport.artifacts import Manifest, read_manifest
from samexport.errors import SamExportError
from samexport.parity.metrics import Check, Tolerances, tolerance_key
from samexport.parity.references import References, load_references
from samexport.parity.report import ParityReport
from samexport.parity.runner import parity_runner
from samexport.runtime.backends import Backend, open_backend

# Opens the backend to check for an artifact folder and a manifest (the committed one, or one
# naming plans not yet committed: ``samexport.parity.engines``).
BackendOpener = Callable[[Path, Manifest], Backend]


class VerificationError(SamExportError):
    """A backend's outputs are outside the precision's tolerances; ``report`` has every figure."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


def verify_with_references(
    folder: Path | str, manifest: Manifest, candidate: Backend, *, tolerances: Tolerances | None = None,
    references: References | None = None,
) -> ParityReport:
    """Run ``candidate`` on the references ``manifest`` names (``references``: already loaded)
    and compare with the parity loop of the artifact's family (``run_parity`` or ``run_sam2_parity``).

    Raises:
        SamExportError: the artifact has no references (built before samexport stored them), or
            they are damaged or were recorded by an incompatible samexport.
    """
    references = references or load_references(folder, manifest)
    parity = parity_runner(references.contract)
    images = []
    report = None
    # a backend computing in a narrower type than the graph (openvino:precision=bf16) has its own row
    precision = tolerance_key(manifest.precision, getattr(candidate, "inference_precision", None))
    for group, prompts in references.groups():
        report = parity(
            references.backend, candidate, group, prompts, precision=precision, tolerances=tolerances
        )
        images.extend(report.images)
    if report is None:
        raise SamExportError(f"{folder}'s references hold no images; record them again with `samexport references`")
    return ParityReport(
        reference=report.reference, candidate=report.candidate, precision=report.precision,
        tolerances=report.tolerances, images=tuple(images),
    )


def verify_artifact_backend(artifact_dir: Path | str, backend: str = "auto") -> ParityReport:
    """``samexport verify``: the artifact on ``backend`` (a name from the backend table, as
    ``SamPredictor`` takes) against its stored references."""

    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    references = load_references(folder, manifest)  # none: said before a backend is opened
    candidate = open_backend(folder, backend)
    try:
        return verify_with_references(folder, manifest, candidate, references=references)
    finally:
        close = getattr(candidate, "close", None)
        if callable(close):
            close()


def severity(check: Check) -> float:
    """How far a figure is past its limit, as a ratio (> 1 fails): ``value / limit`` for upper
    limits, the distance from 1 over the allowed distance for lower limits (cosine, IoU)."""
    if check.bound == "max":
        return check.value / check.limit if check.limit else float("inf")
    allowed = 1.0 - check.limit
    return (1.0 - check.value) / allowed if allowed > 0 else float("inf")


def worst_failure(report: ParityReport) -> tuple[Check, str, str | None] | None:
    """The failed figure furthest past its limit and where: (check, image, prompt or None for
    the embedding figures); None when the report passes."""
    if report.passed:
        return None
    check = max(report.failures, key=severity)
    image, prompt = report.where(check.metric)
    return check, image, prompt


def describe_failure(report: ParityReport) -> str:
    """One line: the worst figure, its value, its limit, by how much, and where."""
    worst = worst_failure(report)
    if worst is None:
        return "every figure is within its limit"
    check, image, prompt = worst
    sign = "<=" if check.bound == "max" else ">="
    where = f"image {image!r}" + (f", prompt {prompt!r}" if prompt else "")
    others = [c.metric for c in report.failures if c.metric != check.metric]
    also = f"; also failed: {', '.join(others)}" if others else ""
    return (
        f"{check.metric} {check.value:.6g} is outside its {report.precision} limit {sign} {check.limit:g} "
        f"({severity(check):.3g}x the allowed deviation) at {where}{also}"
    )
