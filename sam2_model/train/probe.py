"""Prompted segmentation of single held-out frames, through the image predictor: is the decoder good, and does it
follow the prompt?

    python -m sam2_model.train.probe --checkpoint demo/sam2_micro.pt [--clips 12 --seed 2]

On frames 3 and 9 of held-out clips (`evaluate.heldout_clip`, 12 frames), every object covering at least 50 pixels
is prompted alone:
- box IoU: the single mask from its tight box, against its ground truth;
- click IoU: the best-scored of three masks from one positive click at its centre (`center_error_click`);
- prompt sensitivity: the IoU between the box masks of two different objects of the same frame, averaged over
  pairs; 1 means the decoder gives every object the same mask, whatever the box.

And where memory attention looks while the first-frame masks of a few clips are propagated
(`memory_attention_focus`, `own_object_attention`): is the memory read by content, or copied from the query's own
position? And whether the image features could tell the objects apart by content at all (`identity_accuracy`).
"""
from __future__ import annotations

import argparse
import math
from itertools import combinations

import numpy as np
import torch

from ..checkpoint import load_model
from ..image_predictor import ImagePredictor
from ..memory_attention import recorded_cross_attention
from ..sam2 import SAM2
from ..video.predictor import VideoPredictor
from ..video.frames import preprocess_frame
from .data import ClipBatch, resize_masks
from .evaluate import heldout_clip, propagate_first_masks
from .losses import LossWeights, identity_logits
from .metrics import region_similarity
from .prompts import center_error_click, mask_box
from .unroll import ClipUnroll, PromptPlan

PROBE_FRAMES = (3, 9)
MIN_PIXELS = 50


def probe_model(model: SAM2, clips: int = 12, seed: int = 2) -> dict[str, float]:
    """-> {"box_iou", "click_iou", "same_mask_iou", "objects", "pairs"} over the probe frames of `clips` clips."""
    predictor = ImagePredictor(model)
    box_iou, click_iou, same = [], [], []
    for i in range(clips):
        clip = heldout_clip(seed, i, 12)
        for t in PROBE_FRAMES:
            predictor.set_image(clip.frames[t])
            box_masks = []
            for gt in clip.masks[t]:
                if gt.sum() < MIN_PIXELS:
                    continue
                mask = predictor.predict(box=np.array(mask_box(gt)), multimask_output=False)[0][0] > 0
                box_iou.append(region_similarity(mask, gt))
                box_masks.append(mask)
                x, y, _ = center_error_click(np.zeros_like(gt), gt)
                masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
                click_iou.append(region_similarity(masks[int(np.argmax(scores))] > 0, gt))
            same += [region_similarity(a, b) for a, b in combinations(box_masks, 2)]
    return {"box_iou": float(np.mean(box_iou)), "click_iou": float(np.mean(click_iou)),
            "same_mask_iou": float(np.mean(same)) if same else float("nan"),
            "objects": len(box_iou), "pairs": len(same)}


def memory_attention_focus(model: SAM2, clips: int = 4, seed: int = 2, num_frames: int = 16) -> dict[str, float]:
    """Memory cross-attention while the first-frame masks of `clips` held-out clips are propagated, averaged over
    layers, heads, queries and tracked frames: {"same_position": attention on the spatial memories at the query's
    own position (summed over memory frames), "pointers": on the object-pointer tokens, "entropy": row entropy
    over log(keys), 1 for uniform attention}."""
    means: dict[str, list[float]] = {"same_position": [], "pointers": [], "entropy": []}  # one per call
    with recorded_cross_attention(model.memory_attention) as records, torch.no_grad():
        for i in range(clips):
            clip = heldout_clip(seed, i, num_frames)
            session = VideoPredictor(model).open(clip.frames)
            try:
                propagate_first_masks(session, clip.masks)
            finally:
                session.close()
            for weights, num_pointers in records:  # B×h×Nq×Nk
                cells = torch.arange(weights.shape[2])
                spatial = weights.shape[3] - num_pointers
                same = sum(weights[..., cells, f * len(cells) + cells] for f in range(spatial // len(cells)))
                entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(weights.shape[-1])
                for name, value in (("same_position", same), ("pointers", weights[..., spatial:].sum(-1)),
                                    ("entropy", entropy)):
                    means[name].append(float(value.mean()))
            records.clear()
    return {name: float(np.mean(values)) for name, values in means.items()}


def own_object_attention(model: SAM2, clips: int = 4, seed: int = 2, num_frames: int = 16) -> float:
    """Memory cross-attention on memory cells of the query cell's own object (the background's, for a background
    cell) while the training unroll tracks the first-frame masks of `clips` held-out clips: the mass
    `losses.memory_attention_loss` asks for, averaged over tracked frames (object and background cells weigh
    equally). 1: memory is read by content; the share of cells whose object sits at the same place in memory,
    for attention that copies positions."""
    size = model.config.image_size
    masses = []
    for i in range(clips):
        clip = heldout_clip(seed, i, num_frames)
        images = torch.stack([preprocess_frame(f, size) for f in clip.frames])[:, None]
        masks = resize_masks(clip.masks, size)
        batch = ClipBatch(images, masks, torch.zeros(masks.shape[1], dtype=torch.long))
        with torch.no_grad():
            unroll = ClipUnroll(model, batch, PromptPlan("mask"), np.random.default_rng(0),
                                LossWeights(memory_attention=1.0))
            masses.append(unroll.run().terms["attention_mass"])
    return float(np.mean(masses))


def identity_accuracy(model: SAM2 | None, clips: int = 12, seed: int = 1, num_frames: int = 32) -> float:
    """Share of the object cells of frames 1..T-1 (stride-16 cells more than half covered by one object) of
    `clips` held-out clips whose image features lie closest to their own object's first-frame prototype, among
    the clip's objects and the background (`losses.identity_logits`): can content alone tell which object a cell
    belongs to, wherever it has moved? model None: the frame's mean colour per 16-pixel cell of the 192-pixel
    model input stands in for the features."""
    size = 192 if model is None else model.config.image_size
    hits = total = 0
    for i in range(clips):
        clip = heldout_clip(seed, i, num_frames)
        images = torch.stack([preprocess_frame(f, size) for f in clip.frames])
        with torch.no_grad():
            if model is None:
                features = torch.nn.functional.avg_pool2d(images, 16)
            else:
                features = torch.cat([model.encode_image(images[j:j + 8]).embedding for j in range(0, len(images), 8)])
            logits, label, keep = identity_logits(features, resize_masks(clip.masks, size))
        cells = keep & (label < clip.masks.shape[1])
        hits += int((logits.argmax(1) == label)[cells].sum())
        total += int(cells.sum())
    return hits / max(total, 1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m sam2_model.train.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2, help="held-out set (not the evaluation's default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint).eval()
    report = probe_model(model, args.clips, args.seed)
    print(f"{args.checkpoint}: box IoU {report['box_iou']:.3f}, click IoU {report['click_iou']:.3f} "
          f"({report['objects']} objects); masks of two objects of one frame: IoU {report['same_mask_iou']:.3f} "
          f"({report['pairs']} pairs)")
    focus = memory_attention_focus(model)
    print(f"memory attention: {focus['same_position']:.0%} on the query's own position, {focus['pointers']:.1%} on "
          f"object pointers, entropy {focus['entropy']:.2f} of uniform")
    own = own_object_attention(model)
    print(f"memory attention on memory cells of the query cell's own object: {own:.0%}")
    identity = identity_accuracy(model)
    print(f"object cells nearest their own object's first-frame features: {identity:.1%} (the frames' mean colours: "
          f"{identity_accuracy(None):.1%})")
    return {**report, **{f"memory_{name}": value for name, value in focus.items()}, "own_object_attention": own,
            "identity": identity}


if __name__ == "__main__":
    main()
