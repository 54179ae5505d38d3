"""TensorRT engines against ONNX Runtime on the same artifact: embedding error and mask IoU.

Usage: python benchmarks/gpu_compare.py ARTIFACT_DIR [ARTIFACT_DIR ...] --json OUT.json
Each artifact needs engines built on this machine (`samexport engines`). Prints one line per
artifact; exits 1 when an artifact cannot be compared (the reason is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from samexport.errors import SamExportError
from samexport.image_sources import synthetic_image
from samexport.runtime.predictor import SamPredictor

BOXES = np.array([[50, 40, 300, 400], [200, 100, 600, 470], [10, 10, 630, 470]], np.float32)


def compare(artifact: Path) -> dict:
    image = synthetic_image(480, 640, 1)
    results = {}
    for backend in ("tensorrt", "onnxruntime-cpu"):
        predictor = SamPredictor(artifact, backend=backend)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict_batch(boxes=BOXES, multimask_output=True)
        results[backend] = (predictor.embedding, masks, scores)
    (e_trt, m_trt, s_trt), (e_ort, m_ort, s_ort) = results["tensorrt"], results["onnxruntime-cpu"]
    ious = []
    for a, b in zip(m_trt.reshape(-1, *m_trt.shape[-2:]), m_ort.reshape(-1, *m_ort.shape[-2:])):
        union = np.logical_or(a, b).sum()
        ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    e_trt, e_ort = np.asarray(e_trt, np.float64).ravel(), np.asarray(e_ort, np.float64).ravel()
    return {
        "embedding_rel_max_abs": float(np.abs(e_trt - e_ort).max() / np.abs(e_ort).max()),
        "embedding_cosine": float(e_trt @ e_ort / (np.linalg.norm(e_trt) * np.linalg.norm(e_ort))),
        "mask_iou_min": min(ious),
        "mask_iou_mean": float(np.mean(ious)),
        "iou_score_max_abs": float(np.abs(s_trt - s_ort).max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    report, status = {}, 0
    for artifact in args.artifacts:
        try:
            report[str(artifact)] = compare(artifact)
        except SamExportError as exc:
            report[str(artifact)] = {"error": str(exc)}
            status = 1
        print(artifact, report[str(artifact)])
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
