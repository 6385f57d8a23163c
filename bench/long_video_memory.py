"""Peak memory of propagating through long videos: does it grow with the length beyond the compact results?

For each length, a fresh subprocess opens a synthetic H.264 video (small custom config, random weights), prompts
two objects on frame 0, propagates forward through every frame and reports its peak RSS next to the session's
own accounting (cached features, spatial memories, stored results). The growth of peak RSS between lengths
should match the growth of the stored results (half-precision low-res logits, about 128 KiB per object-frame
at 1024 px, 8 KiB at the 256 px used here).

    python bench/long_video_memory.py --lengths 200,1000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import measure_in_child  # noqa: E402


def measure(video: str, checkpoint: str) -> dict:
    import torch

    from sam2_model import load_model
    from sam2_model.video.predictor import VideoPredictor

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = load_model(checkpoint)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    session = VideoPredictor(model, feature_cache_bytes=64 << 20).open(video)
    session.add_prompt(0, 1, box=[20, 20, 60, 70])
    session.add_prompt(0, 2, points=[[90, 40]], labels=[1])
    frames = sum(1 for _ in session.propagate("forward"))
    stats = session.memory_stats()
    return {
        "frames": frames,
        "seconds": time.perf_counter() - start,
        "rss_after_model_mb": baseline,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"{k}_mb": v / 2**20 for k, v in stats.items()},
    }


def prepare(cache: Path, lengths: list[int]) -> tuple[str, dict[int, str]]:
    from sam2_model import build_model, custom_config, save_checkpoint
    from sam2_model.train.synthetic import iter_frames
    from sam2_model.video.frames import write_h264

    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = cache / "long_video_small.pt"
    if not checkpoint.exists():
        import torch

        torch.manual_seed(0)
        save_checkpoint(build_model(custom_config("long_video_small", image_size=256, embed_dim=32)), checkpoint)
    videos = {}
    for n in lengths:
        path = cache / f"long_{n}.mp4"
        if not path.exists():
            write_h264(path, (f for f, _ in iter_frames(0, num_frames=n, size=(96, 128))), fps=25, preset="ultrafast")
        videos[n] = str(path)
    return str(checkpoint), videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="200,1000", help="comma-separated frame counts")
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(*args._child)))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    checkpoint, videos = prepare(Path(args.cache_dir), lengths)
    rows = {}
    for n in lengths:
        rows[n] = measure_in_child(__file__, videos[n], checkpoint)
    keys = ["frames", "seconds", "rss_after_model_mb", "peak_rss_mb", "features_mb", "memories_mb", "results_mb"]
    print(f"load average {os.getloadavg()[0]:.1f}; threads {os.environ.get('BENCH_THREADS', '2')}")
    print("".join(f"{k:>20}" for k in ["length", *keys]))
    for n, row in rows.items():
        print(f"{n:>20}" + "".join(f"{row[k]:>20.1f}" for k in keys))
    first, last = rows[lengths[0]], rows[lengths[-1]]
    rss_growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    results_growth = last["results_mb"] - first["results_mb"]
    print(f"peak RSS growth {rss_growth:.1f} MB for {last['frames'] - first['frames']} more frames; "
          f"stored results grew {results_growth:.1f} MB; spatial memories {first['memories_mb']:.2f} -> "
          f"{last['memories_mb']:.2f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
