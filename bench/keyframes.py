"""VideoRectangle keyframes: the exact dynamic programming of backend.keyframes.select_keyframes against the greedy
Douglas-Peucker split it replaced, side by side (keyframe counts and time), on synthetic tracks.

    python bench/keyframes.py [--frames 2000] [--tolerance 1.0] [--seed 0]

Prints one line per track kind: frames, keyframes (greedy, exact, ratio), seconds (greedy, exact, ratio).
`douglas_peucker` is also the tests' greedy reference (tests/test_ls_conversions.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.keyframes import select_keyframes  # noqa: E402


def douglas_peucker(boxes: np.ndarray, tolerance: float) -> list[int]:
    """The greedy split: keep the ends, add the frame farthest from the interpolation, recurse (boxes (n, 4))."""
    n = len(boxes)
    if n == 0:
        return []
    keep, stack = {0, n - 1}, [(0, n - 1)]
    while stack:
        s, e = stack.pop()
        if e - s < 2:
            continue
        t = (np.arange(s + 1, e) - s)[:, None] / (e - s)
        err = np.abs(boxes[s + 1:e] - (boxes[s] + (boxes[e] - boxes[s]) * t)).max(axis=1)
        worst = int(err.argmax())
        if err[worst] > tolerance:
            keep.add(s + 1 + worst)
            stack += [(s, s + 1 + worst), (s + 1 + worst, e)]
    return sorted(keep)


def tracks(frames: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic (frames, 4) pixel boxes x1, y1, x2, y2 of a few kinds of motion."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None]
    base = np.array([150.0, 100.0, 350.0, 300.0])
    return {
        "random walk": base + np.cumsum(rng.normal(0, 1.0, (frames, 4)), axis=0),
        "smooth walk": base + np.cumsum(rng.normal(0, 0.2, (frames, 4)), axis=0),
        "sine": base + 50 * np.sin(t / 60 * np.array([1.0, 1.3, 0.7, 1.1])),
        "stop and go": base + np.cumsum(np.repeat(rng.normal(0, 2, (frames // 20 + 1, 4)) * (np.arange(
            frames // 20 + 1) % 2)[:, None], 20, axis=0)[:frames], axis=0),  # 20 frames moving, 20 standing
        "static": np.tile(base, (frames, 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'track':<12} {'frames':>6} {'greedy':>7} {'exact':>6} {'ratio':>6} {'greedy s':>9} {'exact s':>8} "
          f"{'ratio':>6}")
    for name, boxes in tracks(args.frames, args.seed).items():
        timings, counts = [], []
        for select in (douglas_peucker, select_keyframes):
            started = time.perf_counter()
            counts.append(len(select(boxes, args.tolerance)))
            timings.append(time.perf_counter() - started)
        print(f"{name:<12} {len(boxes):>6} {counts[0]:>7} {counts[1]:>6} {counts[1] / counts[0]:>6.2f} "
              f"{timings[0]:>9.3f} {timings[1]:>8.3f} {timings[1] / max(timings[0], 1e-9):>6.1f}")


if __name__ == "__main__":
    main()
