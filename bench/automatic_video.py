"""Automatic masklets through a video (sam2_model.video.discovery.track_everything): seconds per discovery frame
and per tracked frame, as the number of objects grows; small custom config, random weights, synthetic clips with
as many objects as the row asks for.

    python bench/automatic_video.py [--objects 1,4,16] [--frames 12] [--every 6] [--image-size 128]
                                    [--points-per-side 8] [--threads N] [--json out.json]

Each row: a fresh session on a clip of `frames` frames; discovery on frame 0 and every `every` frames, capped at
`objects` (max_overlap 1.0 and loosened generator thresholds, so random weights find enough masks; "objects"
is what the cap reached). Frame kinds: "first" (frame 0: the generator on the frame + prompting every object),
"rediscovery" (every `every`-th frame after it: tracking, then the generator unless the cap is already full,
as here once frame 0 filled it), "tracked" (the others: one tracking step of every object); medians over the
row's frames of each kind. "x 1st row" divides by the first row's time (same run, same machine): the cost of
more objects.
"""
from __future__ import annotations

import argparse
import os
import time

from common import environment, loadavg, median, print_table, ratio, set_threads, write_json

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, mask_threshold=0.0)


def bench_row(model, objects: int, args) -> dict:
    import torch

    from sam2_model.automatic import MaskGenerator
    from sam2_model.train.synthetic import generate_clip
    from sam2_model.video.discovery import track_everything
    from sam2_model.video.predictor import VideoPredictor

    clip = generate_clip(seed=5, num_frames=args.frames, size=(args.image_size, args.image_size),
                         num_objects=objects)
    generator = MaskGenerator(model, points_per_side=args.points_per_side, **LOOSE)
    session = VideoPredictor(model).open(list(clip.frames))
    times = {"first": [], "rediscovery": [], "tracked": []}
    reached = 0
    try:
        with torch.inference_mode():
            steps = track_everything(session, generator, every=args.every, max_overlap=1.0, max_objects=objects)
            while True:
                t0 = time.perf_counter()
                try:
                    result, _ = next(steps)
                except StopIteration:
                    break
                kind = "first" if result.frame_idx == 0 else (
                    "rediscovery" if result.frame_idx % args.every == 0 else "tracked")
                times[kind].append(time.perf_counter() - t0)
                reached = max(reached, len(result.obj_ids))
    finally:
        session.close()
    return dict(objects=objects, reached=reached, **{f"{k}_s": median(v) for k, v in times.items()},
                **{f"{k}_frames": len(v) for k, v in times.items()}, samples=times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", default="1,4,16", help="comma list of object caps, one row each")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--every", type=int, default=6, help="discover every N frames")
    parser.add_argument("--image-size", type=int, default=128, help="model input size and clip side (pixels)")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    from oracle import randomize_

    from sam2_model import build_model, custom_config

    threads = set_threads(args.threads)
    env = environment(threads)
    torch.manual_seed(0)
    config = custom_config("bench_auto_video", image_size=args.image_size, d_model=32, memory_dim=16)
    model = randomize_(build_model(config), seed=1).eval()  # masks of varied sizes (default init: near-empty)
    print(f"automatic masklets: {args.frames} frames of {args.image_size}², discovery every {args.every}, "
          f"{args.points_per_side}² points, torch threads {threads}, {loadavg()}")
    t0 = time.perf_counter()
    bench_row(model, 1, argparse.Namespace(**{**vars(args), "frames": 2}))  # warm-up
    rows = [bench_row(model, int(n), args) for n in args.objects.split(",")]
    wall = time.perf_counter() - t0
    base = rows[0]
    print_table(
        "track_everything per frame (median seconds; x 1st row = this row / the first row, same run)",
        ["objects", "reached", "first s", "rediscovery s/frame", "tracked s/frame", "first x 1st row",
         "tracked x 1st row", "n redisc", "n tracked"],
        [[r["objects"], r["reached"], r["first_s"], r["rediscovery_s"], r["tracked_s"],
          ratio(r["first_s"], base["first_s"]), ratio(r["tracked_s"], base["tracked_s"]), r["rediscovery_frames"],
          r["tracked_frames"]] for r in rows])
    print(f"\nwall time {wall:.1f} s; {loadavg()}")
    env["loadavg_end"] = list(os.getloadavg())
    write_json(args.json, {"benchmark": "automatic_video", "environment": env, "wall_s": wall, "results": rows})


if __name__ == "__main__":
    main()
