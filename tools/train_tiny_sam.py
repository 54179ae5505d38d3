#!/usr/bin/env python
"""Train the ``tiny`` SAM on procedural scenes, on CPU, and save it as an official checkpoint.

No trained SAM weights reach this project's machines, so this script makes some: the registered
``tiny`` variant (2-block ViT, 64 wide, SAM's own prompt encoder and mask decoder; 5.1M parameters)
learns to segment the shapes of :mod:`samexport.testing_scenes` from point and box prompts.

The recipe follows the SAM paper (Kirillov et al. 2023, section 3 and appendix A), with the
departures a from-scratch CPU run needed (each one says why where it is made):

- mask loss: focal and dice (SAM 20:1; here 1:1 by default, ``--focal-weight``; focal without
  RetinaNet's class weight); the predicted IoU is trained with a mean-square error against the
  IoU of the predicted mask with the ground truth, for every output token;
- a single-point prompt is ambiguous: only the best of the three multimask outputs takes the mask
  loss (the single-mask token 0 is trained on it too, so ``multimask_output=False`` works);
  boxes and several points train token 0;
- prompts: a foreground point drawn uniformly inside the instance, or its box with noise of 10% of
  the side (at most 20 pixels of the 1024 frame); then a second round adds a point drawn
  uniformly from the error region of the first prediction (foreground where the mask missed,
  background where it spilled) and gives the first round's logits as the mask input (from
  ``--round2-from`` of the run on: the first steps learn single prompts at half the cost);
- the mask decoder's attentions start with equal query and key projections
  (:func:`init_attention_as_similarity`); bfloat16 autocast (AVX512-BF16 CPUs run it natively).

Scenes are 256x256 (SCENE_SIZE): the predictor resizes them 4x to the encoder's 1024, so the
256x256 low-resolution logits line up with the scene's pixels and the loss needs no resizing.
Scene ``i`` of step ``s`` is ``make_scene(s * batch + i)``, below ``HELD_OUT_SEED``: the tests'
held-out seeds are never seen. Same seed and arguments, same run (up to CPU float reordering).

    python tools/train_tiny_sam.py --steps 500 --lr 4e-4 --warmup 30 --out /tmp/tiny-train
    # -> /tmp/tiny-train/sam_tiny_shapes.pth (fp16, official layout), log.jsonl, train_state.pt

The run saves every ``--save-every`` steps, so a run stopped early still leaves weights, and
``--resume`` continues it (``--stop-after`` stops at a chosen step, so the rest can run with other
arguments). ``--init`` starts from earlier weights with the learning rate warming up again from
``--init-step``; with ``--resume`` the folder's saved state (weights, optimizer, step) wins over
``--init``'s weights. ``--eval`` prints the held-out figures of the saved weights.

The committed ``weights/sam_tiny_shapes.pth`` is the 500-step run above continued to step 1180
(about 66 minutes more on 2 shared cores), then to step 3300 and to step 3950 (below); a lower peak than 4e-4 was needed after step 620, and
the last segment's shorter cosine fitted the time left:

    python tools/train_tiny_sam.py --out /tmp/tiny-more --init /tmp/tiny-train/sam_tiny_shapes.pth \
        --init-step 500 --steps 1500 --lr 4e-4 --warmup 20 --round2-from 0 --save-every 10 --stop-after 620
    python tools/train_tiny_sam.py --out /tmp/tiny-more --init /tmp/tiny-train/sam_tiny_shapes.pth \
        --init-step 500 --resume --steps 1450 --lr 2.5e-4 --warmup 20 --round2-from 0 --save-every 10 --stop-after 840
    python tools/train_tiny_sam.py --out /tmp/tiny-more --init /tmp/tiny-train/sam_tiny_shapes.pth \
        --init-step 500 --resume --steps 1180 --lr 2.5e-4 --warmup 20 --round2-from 0 --save-every 10

and then (session 4, one thread on 2 shared cores, load average 2.5 to 17, about 94 minutes for
2120 steps, 2.5 to 2.9 s a step) from those step-1180 weights to step 3300, one cosine first
planned to end at 2900 and stretched to 3300 at step 2120 (the learning rate went from 1.16e-4 to
1.54e-4 there and annealed from it; the step-1180 weights are
``git show 84fdaf2:weights/sam_tiny_shapes.pth``):

    python tools/train_tiny_sam.py --out /tmp/tiny-3300 --init <step-1180 weights> --init-step 1180 \
        --steps 2900 --lr 2.5e-4 --warmup 20 --round2-from 0 --save-every 20 --stop-after 2120
    python tools/train_tiny_sam.py --out /tmp/tiny-3300 --init <step-1180 weights> --init-step 1180 \
        --resume --steps 3300 --lr 2.5e-4 --warmup 20 --round2-from 0 --save-every 20

and a last cosine from those step-3300 weights (peak 1e-4, 650 steps, 44 minutes at 2.7 to 7 s a
step beside a CI run):

    python tools/train_tiny_sam.py --out /tmp/tiny-3950 --init /tmp/tiny-3300/sam_tiny_shapes.pth \
        --init-step 3300 --steps 3950 --lr 1e-4 --warmup 20 --round2-from 0 --save-every 25

then (session 5) 600 steps of the IoU prediction head alone (every mask unchanged: at step 3950 the
best of a point's three masks had median IoU 0.868 on the tests' scenes but the best-scored one
0.771, so the ranking was what fell short; 31 minutes at 2.9 s a step, load 3 to 14):

    python tools/train_tiny_sam.py --out /tmp/tiny-head --init /tmp/tiny-3950/sam_tiny_shapes.pth \
        --init-step 3950 --steps 4550 --lr 5e-4 --warmup 20 --round2-from 0 --train iou-head --prompts 4

and last (session 8, the committed step 6000) 1450 more steps of the whole model from those
step-4550 weights (``git show 15e99ec:weights/sam_tiny_shapes.pth``), SAM's losses as in every
whole-model segment: a cosine first planned to end at 6300 and shortened at step 4800 to end at
6000, for the time left (the learning rate went from 7.6e-5 to 7.5e-5 there); 68 minutes at 2.7
to 2.8 s a step, load 1-3:

    python tools/train_tiny_sam.py --out /tmp/tiny-6000 --init <step-4550 weights> --init-step 4550 \
        --steps 6300 --lr 8e-5 --warmup 20 --round2-from 0 --stop-after 4800
    python tools/train_tiny_sam.py --out /tmp/tiny-6000 --init <step-4550 weights> --init-step 4550 \
        --resume --steps 6000 --lr 8e-5 --warmup 20 --round2-from 0

The run's last step was to be kept if it beat step 4550 on held-out scenes other than the tests'
(seeds +100 to +139): point 0.823 -> 0.856, box 0.854 -> 0.883; the tests' 12 scenes then gave
point 0.809 and box 0.857, issue 30's targets (0.8 and 0.85) both met (weights/README.md).

Tried and not kept (session 6): ``--train iou-head-fit`` on those step-4550 weights (the head alone
again, on decoder features of 400 new scenes computed once, 10,086 prompts, 30 epochs, with a
ranking loss on single points; 22 minutes, almost all of it the features):

    python tools/train_tiny_sam.py --out /tmp/tiny-fit --init weights/sam_tiny_shapes.pth \
        --init-step 4550 --train iou-head-fit --fit-scenes 400

It lifted the point (best-scored of 3) on the 40 held-out scenes used to choose the ranking loss
(seeds +200 to +239: median 0.810 -> 0.850) but not on the others (the tests' 12 scenes: 0.782 ->
0.781, mean 0.689 -> 0.681; seeds +100 to +139: 0.823 -> 0.821): the choice was fitted to the
scenes it was chosen on. On the tests' scenes even the best of the three masks reaches 0.8 for only
30 of 49 instances, so the masks themselves, not the ranking, now hold the point back.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from samexport.constants import IMAGE_SIZE
from samexport.models.transformer import Attention
from samexport.testing_scenes import (
    HELD_OUT_SEED,
    SCENE_SIZE,
    interior_point,
    make_scene,
)
from samexport.transforms import preprocess
from samexport.variants import build_sam

SCALE = IMAGE_SIZE / SCENE_SIZE  # scene pixels -> the encoder's 1024 frame
SAM_FOCAL_WEIGHT = 20.0  # SAM's focal:dice is 20:1; see --focal-weight
WEIGHTS_NAME = "sam_tiny_shapes.pth"
KEEP_FP32 = ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels: ``logits``, ``target`` ...xHxW -> ....

    No class weight (RetinaNet's alpha = 0.25 favours the background): with objects covering a few
    percent of a scene, the weighted loss sat at all-background masks for the first 70 steps of
    a trial run, the unweighted one does not."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    inter = (prob * target).sum(dim=(-2, -1))
    return 1 - (2 * inter + 1) / (prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + 1)


def mask_ious(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``target`` (...xHxW), no gradient."""
    pred = logits.detach() > 0
    gt = target > 0.5
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def random_pixel(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(region)
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def noisy_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The mask's box (XYXY, scene pixels) with each side moved by N(0, 10% of its length),
    at most 20 pixels of the 1024 frame."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
    noise = np.clip(rng.normal(0, 0.1 * side), -20 / SCALE, 20 / SCALE)
    box = np.clip(box + noise, 0, SCENE_SIZE - 1)
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def decode(model, emb, pe, index, coords, labels, mask_input=None):
    """The decoder on prompts ``coords`` (scene pixels, n x k x 2), ``labels`` (n x k) against
    image embeddings ``emb[index]``; ``mask_input`` n x 256 x 256 logits or None."""
    n = len(index)
    sparse = model.prompt_encoder.embed_points(torch.as_tensor(coords * SCALE, dtype=torch.float32),
                                               torch.as_tensor(labels, dtype=torch.float32))
    if mask_input is None:
        dense = model.prompt_encoder.embed_masks(torch.zeros(n, 1, 256, 256), torch.zeros(n))
    else:
        dense = model.prompt_encoder.embed_masks(mask_input[:, None], torch.ones(n))
    return model.mask_decoder(emb[index], pe, sparse, dense)


def prompt_losses(masks, ious, target, tokens, focal_weight, iou_weight=1.0):
    """Loss of one round: ``tokens`` is "ambiguous" (token 0 plus the best of 1..3) or "single"
    (token 0). Returns (loss, chosen logits n x 256 x 256 for the next round, metrics)."""
    masks, ious = masks.float(), ious.float()
    tgt = target[:, None].expand_as(masks)
    per_token = focal_weight * focal_loss(masks, tgt) + dice_loss(masks, tgt)  # n x 4
    actual = mask_ious(masks, tgt)
    iou_loss = F.mse_loss(ious, actual, reduction="none").sum(dim=1)
    rows = torch.arange(len(masks))
    if tokens == "ambiguous":
        mask_loss = per_token[:, 0] + per_token[:, 1:].min(dim=1).values
        chosen = 1 + ious[:, 1:].detach().argmax(dim=1)  # what a user keeps: the best-scored
    else:
        mask_loss = per_token[:, 0]
        chosen = torch.zeros(len(masks), dtype=torch.long)
    loss = (mask_loss + iou_weight * iou_loss).mean()
    return loss, masks[rows, chosen].detach(), actual[rows, chosen].mean().item(), iou_loss.mean().item()


def correction_points(rng, logits, targets):
    """For each prompt, a point drawn uniformly from the error region of ``logits > 0``:
    label 1 where the mask missed the object, 0 where it spilled; inside the object if no error."""
    points, labels = [], []
    for pred, gt in zip((logits > 0).numpy(), targets.numpy() > 0.5):
        error = pred ^ gt
        if error.any():
            x, y = random_pixel(rng, error)
            points.append((x, y))
            labels.append(1 if gt[y, x] else 0)
        else:
            points.append(random_pixel(rng, gt))
            labels.append(1)
    return np.array(points, dtype=np.float64), np.array(labels)


def train_step(model, rng, step, batch, prompts_per_kind, second_round, focal_weight, iou_weight=1.0):
    scenes = [make_scene((step * batch + i) % HELD_OUT_SEED) for i in range(batch)]
    images = torch.from_numpy(np.concatenate([preprocess(s.image) for s in scenes]))
    picks = [(i, int(rng.integers(len(s.masks)))) for i, s in enumerate(scenes) for _ in range(prompts_per_kind)]
    index = torch.tensor([i for i, _ in picks])
    targets = torch.from_numpy(np.stack([scenes[i].masks[j] for i, j in picks]).astype(np.float32))
    gt = targets.numpy() > 0.5
    emb = model.image_encoder(images)
    pe = model.prompt_encoder.image_pe()
    n = len(picks)
    point = np.array([random_pixel(rng, m) for m in gt], dtype=np.float64)
    boxes = np.stack([noisy_box(rng, m) for m in gt])
    first = {
        "point": (np.stack([point, np.zeros_like(point)], 1), np.tile([1, -1], (n, 1)), "ambiguous"),
        "box": (boxes.reshape(n, 2, 2), np.tile([2, 3], (n, 1)), "single"),
    }
    total, metrics = 0.0, {}
    for kind, (coords, labels, tokens) in first.items():
        masks, ious = decode(model, emb, pe, index, coords, labels)
        loss, chosen, iou, iou_mse = prompt_losses(masks, ious, targets, tokens, focal_weight, iou_weight)
        metrics.update({f"{kind}_iou": iou, f"{kind}_iou_mse": iou_mse})
        total = total + loss
        if not second_round:
            continue
        # Round 2: a corrective point and the previous logits as the mask input.
        extra, extra_label = correction_points(rng, chosen, targets)
        if kind == "point":  # points first, then the padding point (as the predictor sends them)
            coords2 = np.stack([coords[:, 0], extra, np.zeros_like(extra)], 1)
            labels2 = np.stack([labels[:, 0], extra_label, -np.ones(n)], 1)
        else:  # points before the box corners
            coords2 = np.concatenate([extra[:, None], coords], 1)
            labels2 = np.concatenate([extra_label[:, None], labels], 1)
        masks2, ious2 = decode(model, emb, pe, index, coords2, labels2, mask_input=chosen)
        loss2, _, iou2, iou_mse2 = prompt_losses(masks2, ious2, targets, "single", focal_weight, iou_weight)
        total = total + loss2
        metrics.update({f"{kind}2_iou": iou2, f"{kind}2_iou_mse": iou_mse2})
    return total / 2, metrics


class HeadInputs:
    """Records what the IoU prediction head is given (the IoU token's output) at each decoder call."""

    def __init__(self, model) -> None:
        self.last: torch.Tensor | None = None
        model.mask_decoder.iou_prediction_head.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        self.last = args[0].detach().clone()


@torch.no_grad()
def head_examples(model, recorder: HeadInputs, seeds, points: int, rng: np.random.Generator):
    """The IoU head's inputs and targets on scenes ``seeds``, prompted as :func:`train_step` prompts:
    for each instance ``points`` uniform foreground points and a noisy box (round 1), then each
    with a corrective point and its round-1 logits as the mask input (round 2; a point keeps its
    best-scored mask, a box token 0). Runs in fp32, as the predictor does.

    Returns (inputs n x 256, the true IoU of each of the four masks n x 4, the kind of each row:
    "point", "box", "point2" or "box2")."""
    inputs, ious, kinds = [], [], []
    pe = model.prompt_encoder.image_pe()
    for seed in seeds:
        scene = make_scene(seed)
        emb = model.image_encoder(torch.from_numpy(preprocess(scene.image)))
        gt = scene.masks
        coords, labels, kind = [], [], []
        for _ in range(points):
            pts = np.array([random_pixel(rng, m) for m in gt], dtype=np.float64)
            coords.append(np.stack([pts, np.zeros_like(pts)], 1))
            labels.append(np.tile([1, -1], (len(gt), 1)))
            kind += ["point"] * len(gt)
        coords.append(np.stack([noisy_box(rng, m) for m in gt]).reshape(len(gt), 2, 2))
        labels.append(np.tile([2, 3], (len(gt), 1)))
        kind += ["box"] * len(gt)
        coords, labels, kind = np.concatenate(coords), np.concatenate(labels), np.array(kind)
        n = len(kind)
        targets = torch.from_numpy(np.concatenate([gt] * (points + 1)).astype(np.float32))
        index = torch.zeros(n, dtype=torch.long)
        masks, predicted = decode(model, emb, pe, index, coords, labels)
        inputs.append(recorder.last)
        ious.append(mask_ious(masks, targets[:, None].expand_as(masks)))
        # Round 2: point and box rows both become three prompt tokens, so one decoder call takes them.
        is_point = kind == "point"
        rows = torch.arange(n)
        chosen = torch.where(torch.from_numpy(is_point), 1 + predicted[:, 1:].argmax(dim=1), 0)
        logits = masks[rows, chosen]
        extra, extra_label = correction_points(rng, logits, targets)
        coords2 = np.where(is_point[:, None, None], np.stack([coords[:, 0], extra, np.zeros_like(extra)], 1),
                           np.concatenate([extra[:, None], coords], 1))
        labels2 = np.where(is_point[:, None], np.stack([labels[:, 0], extra_label, -np.ones(n)], 1),
                           np.concatenate([extra_label[:, None], labels], 1))
        masks2, _ = decode(model, emb, pe, index, coords2, labels2, mask_input=logits)
        inputs.append(recorder.last)
        ious.append(mask_ious(masks2, targets[:, None].expand_as(masks2)))
        kinds += list(kind) + [k + "2" for k in kind]
    return torch.cat(inputs), torch.cat(ious), np.array(kinds)


def ranking_loss(predicted: torch.Tensor, actual: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of a softmax over the predicted IoUs of masks 1..3 (sharpened by
    ``temperature``) against the mask that is truly best: what the predictor's choice needs."""
    return F.cross_entropy(predicted[:, 1:] / temperature, actual[:, 1:].argmax(dim=1))


def fit_iou_head(model, args) -> None:
    """Train only the IoU prediction head, on decoder features computed once (``--train iou-head-fit``).

    Everything before the head is frozen, so its inputs do not change while it learns: they are
    computed once per scene (cached under ``--out``/features, so a stopped run resumes) and the
    head trains for many epochs on them in seconds, where ``--train iou-head`` ran the whole
    model for every step (2.9 s a step). The loss is SAM's mean-square error on every token plus,
    on single-point prompts, ``--rank-weight`` times :func:`ranking_loss` (a departure from SAM:
    with the error alone the head's choice among a point's three masks stayed where it was)."""
    recorder = HeadInputs(model)
    model.eval()
    features = args.out / "features"
    features.mkdir(exist_ok=True)
    first = args.init_step * args.batch  # the scenes after those the earlier steps used
    chunk = 50
    parts = []
    for start in tqdm(range(first, first + args.fit_scenes, chunk), desc="decoder features (50 scenes each)"):
        path = features / f"scenes_{start}-{start + chunk - 1}.pt"
        if not path.is_file():
            rng = np.random.default_rng([args.seed, start])
            inputs, ious, kinds = head_examples(model, recorder, range(start, start + chunk), args.fit_points, rng)
            tmp = path.with_suffix(".tmp")
            torch.save({"inputs": inputs, "ious": ious, "kinds": kinds.tolist()}, tmp)
            tmp.replace(path)
        parts.append(torch.load(path, weights_only=True))
    inputs = torch.cat([p["inputs"] for p in parts])
    ious = torch.cat([p["ious"] for p in parts])
    single_point = torch.tensor([k == "point" for p in parts for k in p["kinds"]])

    head = model.mask_decoder.iou_prediction_head
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    batch = 256
    per_epoch = len(inputs) // batch
    steps = args.fit_epochs * per_epoch
    step = 0
    with open(args.out / "log.jsonl", "a") as log:
        for epoch in tqdm(range(args.fit_epochs), desc="IoU head epochs"):
            order = torch.randperm(len(inputs), generator=generator)
            totals = np.zeros(2)
            for i in range(per_epoch):
                rows = order[i * batch:(i + 1) * batch]
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, steps, args.lr, max(1, steps // 20))
                predicted = head(inputs[rows])
                mse = F.mse_loss(predicted, ious[rows])
                points = single_point[rows]
                rank = ranking_loss(predicted[points], ious[rows][points], args.rank_temperature) if points.any() \
                    else torch.zeros(())
                loss = mse + args.rank_weight * rank
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals += (mse.item(), rank.item())
                step += 1
            log.write(json.dumps({"fit_epoch": epoch + 1, "examples": len(inputs), "iou_mse": totals[0] / per_epoch,
                                  "rank": totals[1] / per_epoch}) + "\n")
    save_weights(model, args.out / WEIGHTS_NAME)


def init_attention_as_similarity(model, scale: float = 2.0) -> None:
    """Start every attention of the mask decoder with equal query and key projections (scaled up),
    so its logits begin as a similarity of what is attended with what attends.

    The tokens and the image are compared through their positional encodings (the prompt
    encoder's Fourier features of a point and of each image cell): with the default, independent
    initialisation that comparison is noise, and a trial run learnt to segment the shapes from the
    background in 200 steps but gave every prompt the same mask. Equal projections make "the
    image tokens near the point" the first thing attention sees.
    """
    with torch.no_grad():
        for module in model.mask_decoder.modules():
            if isinstance(module, Attention):
                module.q_proj.weight.mul_(scale)
                module.k_proj.weight.copy_(module.q_proj.weight)


def learning_rate(step: int, steps: int, peak: float, warmup: int, first: int = 0) -> float:
    """Linear warmup over ``warmup`` steps from ``first`` (where this run's optimizer started),
    then a cosine from ``peak`` down to 5% of it at ``steps``."""
    if step - first < warmup:
        return peak * (step - first + 1) / warmup
    progress = (step - first - warmup) / max(1, steps - first - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_weights(model, path: Path) -> None:
    """The official layout (a plain state dict of ``image_encoder.*`` ...), floats stored as fp16
    except the prompt encoder's Fourier matrix; a loader's ``load_state_dict`` casts back."""
    state = {k: (v if k in KEEP_FP32 or not v.is_floating_point() else v.half()).clone()
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def evaluate(model, count: int = 24) -> dict:
    """Median held-out IoU: the interior point (best-scored of 3 masks, and token 0) and the box."""
    model.eval()
    res = {"point": [], "point_single": [], "box": []}
    for k in range(count):
        scene = make_scene(HELD_OUT_SEED + k)
        emb = model.image_encoder(torch.from_numpy(preprocess(scene.image)))
        pe = model.prompt_encoder.image_pe()
        n = len(scene.masks)
        targets = torch.from_numpy(scene.masks.astype(np.float32))
        index = torch.zeros(n, dtype=torch.long)
        pts = np.array([interior_point(m) for m in scene.masks], dtype=np.float64)
        masks, ious = decode(model, emb, pe, index, np.stack([pts, np.zeros_like(pts)], 1), np.tile([1, -1], (n, 1)))
        rows = torch.arange(n)
        best = 1 + ious[:, 1:].argmax(dim=1)
        res["point"] += mask_ious(masks[rows, best], targets).tolist()
        res["point_single"] += mask_ious(masks[:, 0], targets).tolist()
        masks, _ = decode(model, emb, pe, index, scene.boxes.reshape(n, 2, 2), np.tile([2, 3], (n, 1)))
        res["box"] += mask_ious(masks[:, 0], targets).tolist()
    model.train()
    return {k: float(np.median(v)) for k, v in res.items()} | {"instances": len(res["box"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for weights, log and state")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=2, help="scenes per step")
    parser.add_argument("--prompts", type=int, default=2, help="instances per scene, each prompted by a point and a box")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--focal-weight", type=float, default=1.0,
                        help=f"focal loss weight, dice 1 (SAM: {SAM_FOCAL_WEIGHT:g}); from scratch, 20:1 made "
                             "empty masks the resting point (300 steps of two trial runs)")
    parser.add_argument("--iou-weight", type=float, default=1.0,
                        help="weight of the predicted IoU's mean-square error (SAM: 1); higher makes the "
                             "IoU head rank the three masks of a point prompt better")
    parser.add_argument("--round2-from", type=float, default=0.4,
                        help="fraction of the steps after which the second (corrective) round is added; "
                             "the first steps learn single prompts at half the cost")
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bfloat16 autocast for the forward pass (fast on AVX512-BF16 CPUs)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init", type=Path, help="continue from these weights (official layout, e.g. an earlier "
                        "run's sam_tiny_shapes.pth) with a fresh optimizer, from step --init-step on")
    parser.add_argument("--init-step", type=int, default=0,
                        help="with --init: the steps those weights were trained (scenes go on from there, and "
                             "the learning rate warms up again from there)")
    parser.add_argument("--stop-after", type=int,
                        help="stop (and save) after this step, so --resume can go on with other arguments")
    parser.add_argument("--train", choices=("all", "iou-head", "iou-head-fit"), default="all",
                        help="iou-head: train only the IoU prediction head (every mask stays as it is; the "
                             "head learns to rank the three masks of a point prompt); iou-head-fit: the same "
                             "on decoder features computed once (needs --init; see fit_iou_head)")
    parser.add_argument("--fit-scenes", type=int, default=400, help="iou-head-fit: scenes to compute features on")
    parser.add_argument("--fit-points", type=int, default=2, help="iou-head-fit: point prompts per instance")
    parser.add_argument("--fit-epochs", type=int, default=30, help="iou-head-fit: passes over the features")
    parser.add_argument("--rank-weight", type=float, default=0.1,
                        help="iou-head-fit: weight of the ranking loss on single-point prompts (0: SAM's loss)")
    parser.add_argument("--rank-temperature", type=float, default=0.05, help="iou-head-fit: ranking softmax's")
    parser.add_argument("--eval", action="store_true", help="only print the held-out figures of --out's weights")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = build_sam("tiny")
    if args.eval:
        model.load_state_dict(torch.load(args.out / WEIGHTS_NAME, weights_only=True))
        print(json.dumps(evaluate(model)))
        return
    if args.train == "iou-head-fit":
        if args.init is None:
            parser.error("--train iou-head-fit needs --init (the weights whose IoU head it trains)")
        model.load_state_dict(torch.load(args.init, weights_only=True))
        fit_iou_head(model, args)
        print(json.dumps(evaluate(model)))
        return
    init_attention_as_similarity(model)
    trained = model.parameters()
    if args.train == "iou-head":
        model.requires_grad_(False)
        model.mask_decoder.iou_prediction_head.requires_grad_(True)
        trained = model.mask_decoder.iou_prediction_head.parameters()
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.05)
    state_path, log_path = args.out / "train_state.pt", args.out / "log.jsonl"
    start = first = 0
    if args.init is not None:
        model.load_state_dict(torch.load(args.init, weights_only=True))
        start = first = args.init_step
    if args.resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    model.train()
    began = time.time()
    with open(log_path, "a") as log, tqdm(range(start, args.steps), initial=start, total=args.steps) as bar:
        for step in bar:
            lr = learning_rate(step, args.steps, args.lr, args.warmup, first)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([args.seed, step])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                second = step >= args.round2_from * args.steps
                loss, metrics = train_step(model, rng, step, args.batch, args.prompts, second, args.focal_weight,
                                           args.iou_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            optimizer.step()
            record = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                      "seconds": round(time.time() - began, 1), **metrics}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{record['loss']:.3f}", pt=f"{metrics['point_iou']:.2f}",
                            box=f"{metrics['box_iou']:.2f}")
            stop = step + 1 == args.stop_after
            if (step + 1) % args.save_every == 0 or step + 1 == args.steps or stop:
                save_weights(model, args.out / WEIGHTS_NAME)
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1},
                           state_path)
            if stop:
                return
    print(json.dumps(evaluate(model)))


if __name__ == "__main__":
    main()
