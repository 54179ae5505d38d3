"""Point and box prompts on the tiny SAM trained on procedural scenes (``weights/``, made by
``tools/train_tiny_sam.py``), on scenes training never saw.

Random weights decode noise, so they can only show that two implementations agree. These weights
segment the shapes of :mod:`samexport.testing_scenes`, so the masks are checked against the
scenes' ground truth, through samexport's runtime on the built artifact (ONNX Runtime) and through
the official ``segment_anything`` predictor on the same file, and against each other.
"""

from __future__ import annotations

import numpy as np
import pytest

from samexport.runtime.predictor import SamPredictor
from samexport.testing import mask_iou
from samexport.testing_scenes import HELD_OUT_SEED, interior_point, make_scene

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SCENES = 12  # held-out scenes for the prompt figures (about 50 instances)


def prompt_masks(predictor, scenes) -> dict[str, list[np.ndarray]]:
    """For every instance: the best-scored of the three masks of its interior point, and the
    single mask of its box, with the official ``SamPredictor.predict`` semantics."""
    out: dict[str, list[np.ndarray]] = {"point": [], "box": [], "truth": []}
    for scene in scenes:
        predictor.set_image(scene.image)
        for mask, box in zip(scene.masks, scene.boxes):
            point = np.array([interior_point(mask)], dtype=np.float32)
            masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
            out["point"].append(masks[int(np.argmax(scores))])
            out["box"].append(predictor.predict(box=box, multimask_output=False)[0][0])
            out["truth"].append(mask)
    return out


# The issue's targets (median IoU on held-out scenes) and what the committed weights reach: the
# 3950-step CPU run (about 4 hours of one thread on 2 shared cores), 600 steps of its IoU head and
# 1450 more steps of the whole model (step 6000, about 68 minutes) meet both on these 12 scenes;
# see weights/README.md.
TARGET = {"point": 0.8, "box": 0.85}
ACHIEVED = {"point": 0.78, "box": 0.83}  # measured 0.809 and 0.857 (49 instances), less a margin


@pytest.fixture(scope="module")
def both_sides(trained_artifact, trained_official):
    """The prompt masks of samexport (ONNX Runtime on the built artifact) and of the official
    predictor (torch), on the same held-out scenes."""
    scenes = [make_scene(HELD_OUT_SEED + k) for k in range(SCENES)]
    with torch.no_grad():
        theirs = prompt_masks(segment_anything.SamPredictor(trained_official), scenes)
    ours = prompt_masks(SamPredictor(trained_artifact, backend="onnxruntime"), scenes)
    return ours, theirs


def median_iou(side: dict, kind: str) -> float:
    return float(np.median([mask_iou(m, t) for m, t in zip(side[kind], side["truth"])]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["point", "box"])
def test_held_out_iou_as_achieved(kind, both_sides):
    """Both sides segment held-out scenes as well as the committed weights do, and agree."""
    ours, theirs = both_sides
    for side in (ours, theirs):
        assert median_iou(side, kind) >= ACHIEVED[kind], f"median {kind}-prompt IoU {median_iou(side, kind):.3f}"
    agreement = [mask_iou(a, b) for a, b in zip(ours[kind], theirs[kind])]
    assert min(agreement) >= 0.98, f"ONNX Runtime vs official, worst {kind} mask IoU {min(agreement):.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["point", "box"])
def test_held_out_iou_meets_issue_target(kind, both_sides):
    """Median IoU >= 0.8 (point) and >= 0.85 (box), issue 30's targets: 0.809 and 0.857 with
    the committed weights (step 6000; 0.782 and 0.853 at step 4550, when the point's was not met)."""
    ours, _ = both_sides
    assert median_iou(ours, kind) >= TARGET[kind]
