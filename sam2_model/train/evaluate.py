"""Evaluate a checkpoint on held-out synthetic videos through the real inference path (`VideoPredictor`).

    python -m sam2_model.train.evaluate --checkpoint demo/sam2_micro.pt --clips 20 --seed 1 [--json out.json]

Held-out clip i of seed s has generator seed s·10⁶ + i (< 2**32, while every training clip's seed is ≥ 2**32),
cycles through several frame sizes and 2 or 3 objects, and always contains an occlusion and an object leaving
and re-entering the frame. Modes, each scored with DAVIS J, F, J&F (first and last frame excluded) and object
presence accuracy and wrong-object rate (frames 1..T-1; `metrics.wrong_object_rate`):
- mask: the ground-truth mask of every object on frame 0, propagated forward;
- box: the ground-truth box on frame 0, propagated forward;
- interactive: the box run, then `rounds` rounds of one click per object on its worst frame (centre of the
  largest error region), each followed by a new propagation;
- mask_true_presence: the mask run with every mask blanked on the frames where the object is truly absent (a
  diagnostic, not a mode a user has: what the mask run would score with a perfect presence head);
- static: no model, the first-frame mask copied to every frame (the trivial baseline).

`--strips N` also prints the mask run of the first N clips as one line per object, one character per frame
(`frame_strips`): where it tracks, where it has switched to another object, where it misses an absence.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ..checkpoint import load_model
from ..sam2 import SAM2
from ..video.predictor import VideoPredictor
from ..video.session import VideoSession
from .data import TRAIN_SEED_BASE
from .metrics import evaluate_masklets, on_other_objects, presence_accuracy, region_similarity, wrong_object_rate
from .prompts import center_error_click, mask_box
from .synthetic import SyntheticClip, generate_clip

EVAL_SIZES = ((256, 256), (240, 320), (288, 384), (216, 384))  # (height, width), cycled over the clips
SEED_STRIDE = 1_000_000
MODES = ("mask", "box", "interactive", "mask_true_presence", "static")


def heldout_seed(seed: int, index: int) -> int:
    """Generator seed of held-out clip `index` of set `seed`; always below the training seeds."""
    if not 0 <= index < SEED_STRIDE:
        raise ValueError(f"clip index must be in [0, {SEED_STRIDE}), got {index}")
    value = seed * SEED_STRIDE + index
    if not 0 <= value < TRAIN_SEED_BASE:
        raise ValueError(f"evaluation seed {seed} is out of range (seed · {SEED_STRIDE} must stay below 2**32)")
    return value


def heldout_clip(seed: int, index: int, num_frames: int = 32) -> SyntheticClip:
    """Held-out clip `index` of set `seed` (num_frames ≥ 12 for the leave-and-return event)."""
    return generate_clip(heldout_seed(seed, index), num_frames, EVAL_SIZES[index % len(EVAL_SIZES)], 2 + index % 2,
                         occlusion=True, leave_and_return=True)


def propagate(session: VideoSession, num_objects: int) -> np.ndarray:
    """Propagate forward from the earliest prompted frame -> T×K×H×W bool masks (False where never reached)."""
    h, w = session.frame_size
    out = np.zeros((session.frame_count, num_objects, h, w), bool)
    for result in session.propagate():
        out[result.frame_idx] = result.masks
    return out


def propagate_first_masks(session: VideoSession, masks: np.ndarray) -> np.ndarray:
    """Prompt every object with its frame-0 mask of T×K×H×W `masks`, then `propagate`. -> T×K×H×W bool."""
    for obj in range(masks.shape[1]):
        session.add_prompt(0, obj, mask=masks[0, obj])
    return propagate(session, masks.shape[1])


def correct_worst_frames(session: VideoSession, pred: np.ndarray, gt: np.ndarray) -> int:
    """Add one click per object on its worst frame (lowest J among frames 1..T-1). -> clicks added."""
    clicks = 0
    for k in range(gt.shape[1]):
        scores = [region_similarity(pred[t, k], gt[t, k]) for t in range(1, gt.shape[0])]
        t = 1 + int(np.argmin(scores))
        click = center_error_click(pred[t, k], gt[t, k])
        if click is not None:
            x, y, label = click
            session.add_prompt(t, k, points=[[x, y]], labels=[label], clear_old=False)
            clicks += 1
    return clicks


def with_true_presence(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """T×K×H×W predicted masks with every mask blanked where the ground truth is empty."""
    return pred & gt.any(axis=(2, 3), keepdims=True)


def frame_strips(pred: np.ndarray, gt: np.ndarray) -> list[str]:
    """One string per object of T×K×H×W masks, one character per frame: the IoU × 10 as a digit (9 from 0.9 on)
    where the object shows, `W` where its mask lies mostly on another object (`w`: the same while the object is
    out of view), `a` any other mask while it is out of view, `_` out of view and rightly empty."""
    wrong = on_other_objects(pred, gt)
    shown = gt.any(axis=(2, 3))
    predicted = pred.any(axis=(2, 3))
    strips = []
    for k in range(gt.shape[1]):
        chars = []
        for t in range(gt.shape[0]):
            if wrong[t, k]:
                chars.append("W" if shown[t, k] else "w")
            elif not shown[t, k]:
                chars.append("a" if predicted[t, k] else "_")
            else:
                chars.append(str(min(9, int(region_similarity(pred[t, k], gt[t, k]) * 10))))
        strips.append("".join(chars))
    return strips


def score(pred: np.ndarray, gt: np.ndarray) -> dict:
    """J, F per object; presence accuracy and wrong-object rate on frames 1..T-1 of T×K×H×W masks."""
    m = evaluate_masklets(pred, gt)
    return {"J": m["J_per_object"].tolist(), "F": m["F_per_object"].tolist(),
            "presence": presence_accuracy(pred[1:], gt[1:]), "wrong_object": wrong_object_rate(pred[1:], gt[1:])}


def evaluate_clip(model: SAM2, clip: SyntheticClip, rounds: int = 3) -> dict[str, dict]:
    """Scores of every mode on one clip."""
    gt = clip.masks
    k = gt.shape[1]
    results = {"static": score(np.repeat(gt[:1], len(gt), axis=0), gt)}
    session = VideoPredictor(model).open(clip.frames)
    try:
        pred = propagate_first_masks(session, gt)
        results["mask"] = score(pred, gt)
        results["mask"]["strips"] = frame_strips(pred, gt)
        results["mask_true_presence"] = score(with_true_presence(pred, gt), gt)
        session.reset()  # keeps the cached frame features
        for obj in range(k):
            session.add_prompt(0, obj, box=mask_box(gt[0, obj]))
        pred = propagate(session, k)
        results["box"] = score(pred, gt)
        per_round = []
        for _ in range(rounds):
            if correct_worst_frames(session, pred, gt) == 0:
                break
            pred = propagate(session, k)
            per_round.append(score(pred, gt))
        results["interactive"] = dict(per_round[-1] if per_round else results["box"])
        results["interactive"]["rounds"] = [float(np.mean(r["J"]) + np.mean(r["F"])) / 2 for r in per_round]
    finally:
        session.close()
    return results


def evaluate_model(model: SAM2, clips: int, seed: int, num_frames: int = 32, rounds: int = 3,
                   progress: bool = False) -> dict:
    """Evaluate every mode over `clips` held-out clips.
    -> {"modes": {mode: {J, F, JF, presence, wrong_object}}, "per_clip": [...], ...}.

    J, F and J&F average over all objects of all clips; presence and wrong_object average over clips."""
    per_clip = []
    for i in range(clips):
        clip = heldout_clip(seed, i, num_frames)
        per_clip.append(evaluate_clip(model, clip, rounds))
        if progress:
            jf = np.mean(per_clip[-1]["mask"]["J"] + per_clip[-1]["mask"]["F"])
            print(f"clip {i + 1}/{clips}: mask J&F {jf:.3f}", file=sys.stderr, flush=True)
    modes = {}
    for mode in MODES:
        j = np.concatenate([c[mode]["J"] for c in per_clip])
        f = np.concatenate([c[mode]["F"] for c in per_clip])
        modes[mode] = {"J": float(j.mean()), "F": float(f.mean()), "JF": float((j.mean() + f.mean()) / 2),
                       **{k: float(np.mean([c[mode][k] for c in per_clip])) for k in ("presence", "wrong_object")}}
    return {"clips": clips, "seed": seed, "frames": num_frames, "rounds": rounds, "modes": modes,
            "per_clip": per_clip}


def format_table(report: dict) -> str:
    """The modes as a fixed-width text table."""
    labels = {"mask": "first-frame mask", "box": "first-frame box",
              "interactive": f"box + {report['rounds']} click rounds", "mask_true_presence": "mask, true presence",
              "static": "static mask (baseline)"}
    lines = [f"{'mode':<26}{'J':>7}{'F':>7}{'J&F':>7}{'presence':>10}{'wrong obj':>11}"]
    for mode in MODES:
        m = report["modes"][mode]
        lines.append(f"{labels[mode]:<26}{m['J']:>7.3f}{m['F']:>7.3f}{m['JF']:>7.3f}{m['presence']:>10.3f}"
                     f"{m['wrong_object']:>11.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sam2_model.train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (official layout, config inside)")
    parser.add_argument("--clips", type=int, default=20, help="number of held-out clips")
    parser.add_argument("--seed", type=int, default=1, help="held-out set (clip seeds seed·10⁶ + i)")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (≥ 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interactive correction rounds")
    parser.add_argument("--json", help="also write the full report (per clip and object) here")
    parser.add_argument("--strips", type=int, default=0, metavar="N",
                        help="print the mask run's frame strips (evaluate.frame_strips) of the first N clips")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, device=args.device)
    started = time.monotonic()
    report = evaluate_model(model, args.clips, args.seed, args.frames, args.rounds, progress=True)
    report["checkpoint"] = args.checkpoint
    report["seconds"] = round(time.monotonic() - started, 1)
    print(format_table(report))
    for i, clip in enumerate(report["per_clip"][:args.strips]):
        for k, strip in enumerate(clip["mask"]["strips"]):
            print(f"clip {i}, object {k}   {strip}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
