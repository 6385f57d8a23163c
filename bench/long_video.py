"""A long 720p video with 5 objects: peak RSS, results bytes per frame, seconds for a correction in the middle.

Frames come from a procedural in-memory source (5 coloured boxes gliding over a gradient, rendered on demand
at 1280×720, 30 fps): encoding 54 000 frames is too slow on 2 cores. Small custom config (--image-size, default
128 px; d_model 64, 2 memory-attention layers: about 18 tracked frames/s of 5 objects on 2 idle cores, so the
30-minute clip takes about an hour), random weights. Progress goes to stderr every minute.
Each mode runs in a fresh subprocess: "logits" keeps the engine's 256² float16 low-res logits for every
object-frame (Tracker(drop_logits=False), the former behaviour), "compact" keeps one RLE mask + score per
object-frame in the backend's store and drops the logits (drop_logits=True, what the backend serves with).
Boxes are prompted on frame 0; the whole clip is tracked forward; then a click in the middle is a correction
request: set_prompts + one time slice of tracking (--slice-s) + the answer, a VideoRectangle track of each
object (what backend/predict.py serves; `first_answer_s` is the answer before the click, the whole track's
first keyframe search). The answer reads the boxes the store kept when each frame was tracked
(`Tracker.tracks`: `read_boxes_s`); side by side, the same boxes are read by decoding every stored mask (the
former way: `read_boxes_decoding_s`), and both must be equal (`boxes_equal`).
The correction is incremental (backend/tracking.py): only the clicked object, from the middle on, is tracked
again; `correction_done_s` is the time until that re-tracking is complete, against `track_s`, what the former
restart-on-every-change cost.

    python bench/long_video.py --minutes 0.5     # 900 frames; --minutes 30 for the full 54 000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import measure_in_child  # noqa: E402

FPS, H, W, OBJECTS = 30, 720, 1280, 5


def _boxes(t: int) -> list[tuple[float, float, float, float]]:
    """x0, y0, x1, y1 of each object on frame t: 5 boxes moving on slow sine paths."""
    out = []
    for k in range(OBJECTS):
        cx = 160 + 240 * k + 60 * np.sin(t / (90 + 20 * k))
        cy = 360 + 200 * np.cos(t / (120 + 15 * k) + k)
        out.append((cx - 70, cy - 50, cx + 70, cy + 50))
    return out


def make_source(frames: int):
    from sam2_model.video.frames import FrameSource

    class Procedural(FrameSource):
        frame_count, fps, frame_size = frames, float(FPS), (H, W)

        def get(self, idx: int) -> np.ndarray:
            idx = self._check_index(idx)
            img = np.empty((H, W, 3), np.uint8)
            img[...] = np.linspace(20, 90, W, dtype=np.uint8)[None, :, None]
            for k, (x0, y0, x1, y1) in enumerate(_boxes(idx)):
                img[int(y0):int(y1), int(x0):int(x1)] = (40 + 50 * k, 220 - 40 * k, 120)
            return img

    return Procedural()


def _track_all(tracker, what: str) -> None:
    """Run the tracker to the end, a progress line on stderr every minute."""
    start = time.perf_counter()
    while not tracker.run(time.monotonic() + 60):
        done = tracker.tracked_frames()
        print(f"{what}: {done} frames with results after {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)


def _timed(work):
    start = time.perf_counter()
    out = work()
    return out, time.perf_counter() - start


def _kept_boxes(tracker) -> dict:
    """{object key: (T, 4) boxes} from the boxes kept when each frame was tracked (what the backend serves)."""
    return {key: track.boxes.astype(np.float64) for key, track in tracker.tracks().items()}


def _boxes_by_decoding(tracker, frames: int) -> dict:
    """{object key: (T, 4) boxes} by decoding every stored mask (the former way of serving a track)."""
    from backend.results import mask_to_box

    boxes = {o.key: np.full((frames, 4), np.nan) for o in tracker.objects}
    for result in tracker.results():
        for i, key in enumerate(result.obj_ids):
            box = mask_to_box(result.masks[i])
            if box is not None:
                boxes[key][result.frame_idx] = box
    return boxes


def _answer(boxes: dict, frames: int) -> int:
    """The VideoRectangle regions of a video answer; returns the keyframes they hold."""
    from backend.results import masklet_to_videorectangle

    regions = [masklet_to_videorectangle(b, region_id=k, from_name="box", to_name="video", frame_size=(W, H),
                                         fps=FPS, frames_count=frames) for k, b in boxes.items()]
    return sum(len(r["value"]["sequence"]) for r in regions if r is not None)


def measure(mode: str, frames: int, slice_s: float, image_size: int, seed: int) -> dict:
    import torch

    from backend.prompts import FramePrompt, ObjectPrompts
    from backend.tracking import Tracker
    from sam2_model import build_model, custom_config
    from sam2_model.video.predictor import VideoPredictor

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(seed)
    model = build_model(custom_config("long_video_bench", image_size=image_size, embed_dim=32, d_model=64,
                                      memory_dim=16, decoder_mlp_dim=128, memory_attention_ff_dim=128,
                                      memory_attention_layers=2))
    predictor = VideoPredictor(model, feature_cache_bytes=64 << 20)
    tracker = Tracker(predictor.open(make_source(frames)), drop_logits=(mode == "compact"))
    objects = [ObjectPrompts(f"o{k}", None, [FramePrompt(0, box=b)]) for k, b in enumerate(_boxes(0))]
    start = time.perf_counter()
    tracker.set_prompts(objects, max_frames=frames)
    _track_all(tracker, f"{mode}: tracking")
    track_s = time.perf_counter() - start
    stats = tracker.session.memory_stats()
    results = stats["results"] + tracker.results_nbytes()
    mid = frames // 2
    x0, y0, x1, y1 = _boxes(mid)[2]
    objects[2] = ObjectPrompts("o2", None, [*objects[2].frames,
                                            FramePrompt(mid, points=[((x0 + x1) / 2, (y0 + y1) / 2)], point_labels=[1])])
    retracked = []
    propagate = tracker.session.propagate

    def counting(*args, **kwargs):
        for result in propagate(*args, **kwargs):
            retracked.append(len(result.obj_ids))
            yield result

    _, first_answer_s = _timed(lambda: _answer(_kept_boxes(tracker), frames))  # the whole track, first served
    tracker.session.propagate = counting
    start = time.perf_counter()
    tracker.set_prompts(objects, max_frames=frames)
    tracker.run(time.monotonic() + slice_s)
    kept, read_boxes_s = _timed(lambda: _kept_boxes(tracker))
    served, answer_s = _timed(lambda: _answer(kept, frames))
    correction_s = time.perf_counter() - start
    decoded, read_boxes_decoding_s = _timed(lambda: _boxes_by_decoding(tracker, frames))
    same = all(np.array_equal(kept[k], decoded[k], equal_nan=True) for k in kept)
    _track_all(tracker, f"{mode}: re-tracking after the correction")
    correction_done_s = time.perf_counter() - start
    return {"frames": frames, "track_s": track_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "results_bytes_per_frame": results / frames, "session_results_mb": stats["results"] / 2**20,
            "compact_store_mb": tracker.results_nbytes() / 2**20, "correction_s": correction_s,
            "first_answer_s": first_answer_s, "correction_answer_s": answer_s, "read_boxes_s": read_boxes_s,
            "read_boxes_decoding_s": read_boxes_decoding_s, "boxes_equal": float(same), "keyframes_served": served,
            "correction_done_s": correction_done_s,
            "retracked_object_frames": sum(retracked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="clip length (30 fps)")
    parser.add_argument("--slice-s", type=float, default=2.0, help="tracking time of the correction request")
    parser.add_argument("--modes", default="logits,compact",
                        help="logits needs 128 KiB per object-frame: about 34 GB for the full 30 minutes")
    parser.add_argument("--image-size", type=int, default=128, help="model input size (custom config)")
    parser.add_argument("--seed", type=int, default=1,
                        help="random weights; seed 1 gives small masks on every frame (seed 0: empty masks)")
    parser.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        mode, frames, slice_s, image_size, seed = args._child
        print(json.dumps(measure(mode, int(frames), float(slice_s), int(image_size), int(seed))))
        return
    frames = max(2, round(args.minutes * 60 * FPS))
    rows = {}
    for mode in args.modes.split(","):
        rows[mode] = measure_in_child(__file__, mode, frames, args.slice_s, args.image_size, args.seed)
    keys = ["frames", "track_s", "peak_rss_mb", "results_bytes_per_frame", "session_results_mb", "compact_store_mb",
            "first_answer_s", "correction_s", "correction_answer_s", "read_boxes_s", "read_boxes_decoding_s",
            "boxes_equal", "keyframes_served",
            "correction_done_s", "retracked_object_frames"]
    print(f"{W}x{H}, {OBJECTS} objects, {args.minutes:g} min, model input {args.image_size} px, seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.1f}; "
          f"threads {os.environ.get('BENCH_THREADS', '2')}")
    print(f"{'':>26}" + "".join(f"{m:>14}" for m in rows))
    for k in keys:
        digits = 3 if k.endswith("_s") else 1
        print(f"{k:>26}" + "".join(f"{rows[m][k]:>14.{digits}f}" for m in rows))
    if "logits" in rows and "compact" in rows:
        ratio = rows["logits"]["results_bytes_per_frame"] / rows["compact"]["results_bytes_per_frame"]
        print(f"results bytes per frame: logits / compact = {ratio:.1f}")
    for m, row in rows.items():
        print(f"{m}: reading a track's boxes by decoding masks / from the kept boxes = "
              f"{row['read_boxes_decoding_s'] / row['read_boxes_s']:.0f} (same boxes: {bool(row['boxes_equal'])})")
        print(f"{m}: a restart (track_s) / the incremental correction (correction_done_s) = "
              f"{row['track_s'] / row['correction_done_s']:.1f}; object-frames re-tracked "
              f"{row['retracked_object_frames']:.0f} of {OBJECTS * row['frames']:.0f}")


if __name__ == "__main__":
    main()
