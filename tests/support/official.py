"""Stand-ins and comparisons for tests against the official ``segment_anything``: a synthetic SAM
that segments by colour (masks follow the shapes in a test image, so the mask generator's filters,
NMS and crops have real work to do), mask-list and prediction comparisons, the official ONNX model
run eagerly, and the one OpenCV call the official mask generator makes."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from samexport.testing import mask_iou

F = torch.nn.functional

# -- a synthetic SAM: masks are the pixels near the prompt whose colour is near the prompt's -----

_TOLERANCES = (0.45, 0.2, 0.45, 0.9)  # per mask token, in normalised colour units


_REACH = (1.0, 4.0, 1.5, 0.5)  # per mask token: how fast logits fall with distance to the point


def synthetic_embedding(image: torch.Tensor) -> torch.Tensor:
    """1x3x1024x1024 normalised image -> 1x256x64x64: the 16x16 mean colour, zeros elsewhere."""
    colour = F.avg_pool2d(image.float(), 16)
    return torch.cat([colour, torch.zeros(1, 253, 64, 64)], dim=1)


def synthetic_decode(embedding: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits Bx4x256x256, iou Bx4) for B points (Bx2, 1024 frame)."""
    points = points.float()
    colour = embedding[0, :3]
    cell = (points / 16).floor().long().clamp(0, 63)
    at_point = colour[:, cell[:, 1], cell[:, 0]].T  # B x 3
    distance = ((colour[None] - at_point[:, :, None, None]) ** 2).sum(1, keepdim=True).sqrt()
    distance = F.interpolate(distance, size=(256, 256), mode="bilinear", align_corners=False)
    centres = torch.arange(256, dtype=torch.float32) * 4 + 2
    dy = (centres[None, :, None] - points[:, 1, None, None]) / 1024
    dx = (centres[None, None, :] - points[:, 0, None, None]) / 1024
    spread = (dx**2 + dy**2).sqrt()[:, None]  # B x 1 x 256 x 256
    tolerance = torch.tensor(_TOLERANCES)[None, :, None, None]
    reach = torch.tensor(_REACH)[None, :, None, None]
    logits = 20.0 * (tolerance - distance - reach * spread)
    phase = 0.011 * points[:, :1] + 0.017 * points[:, 1:] + torch.arange(4.0)[None]
    iou = 0.55 + 0.45 * torch.sin(phase) ** 2
    return logits, iou


class _Encoder(torch.nn.Module):
    img_size = 1024

    def forward(self, image):
        return synthetic_embedding(image)


class _PromptEncoder(torch.nn.Module):
    """Hands the raw points (1024 frame) to the decoder as the "sparse embeddings"."""

    def forward(self, points, boxes, masks):
        return points[0], torch.zeros(1)

    def get_dense_pe(self):
        return torch.zeros(1)


class _Decoder(torch.nn.Module):
    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output):
        logits, iou = synthetic_decode(image_embeddings, sparse_prompt_embeddings[:, 0])
        tokens = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, tokens], iou[:, tokens]


class SyntheticBackend:
    """The synthetic SAM behind our ``SamPredictor``."""

    name = "synthetic"

    def encode(self, image):
        return synthetic_embedding(torch.from_numpy(image)).numpy()

    def decode(self, embedding, point_coords, point_labels, mask_input, has_mask_input):
        logits, iou = synthetic_decode(torch.from_numpy(embedding), torch.from_numpy(point_coords[:, 0]))
        return logits.numpy(), iou.numpy()


def synthetic_official():
    from segment_anything.modeling import Sam

    return Sam(image_encoder=_Encoder(), prompt_encoder=_PromptEncoder(), mask_decoder=_Decoder()).eval()


def assert_same_masks(ours: list[dict], official: list[dict], min_iou: float = 0.99) -> None:
    """Same count; each official mask matched to a distinct one of ours with IoU >= ``min_iou``
    and the same scores, box, point and crop."""
    assert len(ours) == len(official)
    unmatched = list(range(len(ours)))
    for theirs in official:
        ious = [mask_iou(ours[j]["segmentation"], theirs["segmentation"]) for j in unmatched]
        best = int(np.argmax(ious)) if ious else -1
        assert ious and ious[best] >= min_iou, f"no match for official mask {theirs['bbox']}"
        mine = ours[unmatched.pop(best)]
        assert mine["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-4)
        assert mine["stability_score"] == pytest.approx(theirs["stability_score"], abs=1e-2)
        np.testing.assert_allclose(mine["bbox"], theirs["bbox"], atol=2)
        np.testing.assert_allclose(mine["point_coords"], theirs["point_coords"], atol=1e-6)
        assert mine["crop_box"] == theirs["crop_box"]
        assert abs(mine["area"] - theirs["area"]) <= (1 - min_iou) * theirs["area"] + 1


def cv2_stand_in() -> types.ModuleType:
    """The one OpenCV call the official ``remove_small_regions`` makes, on scikit-image (OpenCV
    is not installed here): 8-connected labels, background 0, areas in the last stats column."""
    from skimage.measure import label

    def connected_components_with_stats(image, connectivity):
        assert connectivity == 8
        labels, count = label(image > 0, connectivity=2, background=0, return_num=True)
        stats = np.zeros((count + 1, 5), np.int32)
        stats[:, -1] = np.bincount(labels.ravel(), minlength=count + 1)
        return count + 1, labels.astype(np.int32), stats, None

    return types.SimpleNamespace(connectedComponentsWithStats=connected_components_with_stats)


def assert_outputs_match(ours, theirs, logits: bool = False):
    """(masks, scores, low_res) of ours against the official, NumPy or torch."""
    ours = [o.numpy() if isinstance(o, torch.Tensor) else o for o in ours]
    theirs = [t.numpy() if isinstance(t, torch.Tensor) else t for t in theirs]
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=0, atol=5e-5)
    if logits:
        np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=5e-5)
    else:
        assert min(mask_iou(a, b) for a, b in zip(ours[0].reshape(-1, *ours[0].shape[-2:]),
                                                 theirs[0].reshape(-1, *theirs[0].shape[-2:]))) >= 0.999


class EagerSession:
    """The official ``SamOnnxModel`` run eagerly behind ``InferenceSession.run`` (its exported
    graph bakes in the crop size of the example it was traced with, so eager is the reference)."""

    def __init__(self, sam, **options) -> None:
        from segment_anything.utils.onnx import SamOnnxModel

        self.model = SamOnnxModel(sam, **options)

    def run(self, _names, feed):
        order = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
        with torch.no_grad():
            return [t.numpy() for t in self.model(*(torch.from_numpy(feed[k]) for k in order))]


def predictor_pair(model, official_model):
    """(ours, official) ``SamPredictor`` on the same weights with the same 300x450 image set:
    ``model`` is what ``samexport.SamPredictor`` takes (an artifact directory or a ``SamModel``)."""
    from segment_anything import SamPredictor as OfficialPredictor

    import samexport
    from samexport.testing import make_image

    ours, theirs = samexport.SamPredictor(model), OfficialPredictor(official_model)
    image = make_image(300, 450, seed=7)
    ours.set_image(image)
    theirs.set_image(image)
    return ours, theirs
