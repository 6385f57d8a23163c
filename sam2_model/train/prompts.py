"""Simulated user prompts from ground-truth masks: clicks (random or centred in an error region) and noisy boxes.

Masks are H×W boolean numpy arrays; clicks are (x, y, label) with integer pixel coordinates and label 1 (positive)
or 0 (negative); boxes are (x1, y1, x2, y2) inclusive pixel coordinates.
"""
from __future__ import annotations

import cv2
import numpy as np


def random_error_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A click drawn uniformly from the error region, as in SAM 2's training: positive on a missed object pixel,
    negative on a false-positive pixel. Without errors: a positive click inside the object, or, for an absent
    object, a negative click anywhere."""
    missed, extra = gt & ~pred, pred & ~gt
    error = missed | extra
    if not error.any():
        error = gt if gt.any() else np.ones_like(gt)
    ys, xs = np.nonzero(error)
    i = int(rng.integers(len(ys)))
    y, x = int(ys[i]), int(xs[i])
    return x, y, int(gt[y, x])


def center_error_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int] | None:
    """The deterministic click of interactive benchmarks: the pixel deepest inside the error region (largest
    distance to its border), positive for missed pixels, negative for false positives. None without errors."""
    best = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        padded = np.pad(region, 1).astype(np.uint8)  # the frame border counts as the region's border
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        if best is None or dist[y, x] > best[0]:
            best = (float(dist[y, x]), int(x), int(y), label)
    return None if best is None else best[1:]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x1, y1, x2, y2) box of a non-empty mask (inclusive pixels)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def noisy_box(mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, bound: float = 20.0):
    """The mask's box with each corner moved by Gaussian noise (std `noise` × box side, at most `bound` px),
    kept inside the image and non-degenerate, as SAM 2 samples training boxes. -> (x1, y1, x2, y2) floats."""
    h, w = mask.shape
    x1, y1, x2, y2 = mask_box(mask)
    scale = np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1], dtype=np.float64)
    jitter = np.clip(rng.normal(0, 1, 4) * noise * scale, -bound, bound)
    box = np.array([x1, y1, x2, y2], dtype=np.float64) + jitter
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
    box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
    return tuple(float(v) for v in box)
