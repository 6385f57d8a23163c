"""Validation of user prompts given in pixels of an H×W frame, shared by the image and video predictors.

Each check raises `error` (a ValueError subclass chosen by the caller) with a message that says what is wrong.
"""
from __future__ import annotations

import numpy as np


def check_points(points, labels, frame_hw: tuple[int, int], error: type[ValueError] = ValueError
                 ) -> tuple[np.ndarray, np.ndarray]:
    """points N×2 (x, y) inside the frame and labels N in {1 positive, 0 negative} -> (N×2 float64, N int32)."""
    p = np.asarray(points, dtype=np.float64)
    p = p[None] if p.ndim == 1 else p
    lbl = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise error(f"points must be N×2 (x, y) with N ≥ 1, got shape {np.asarray(points).shape}")
    if lbl.shape != (len(p),):
        raise error(f"{len(p)} points need {len(p)} labels, got {lbl.shape[0]}")
    if not np.isin(lbl, (0, 1)).all():
        raise error(f"labels must be 1 (positive) or 0 (negative), got {np.unique(lbl).tolist()}")
    check_inside(p, frame_hw, "point", error)
    return p, lbl.astype(np.int32)


def check_boxes(box, frame_hw: tuple[int, int], error: type[ValueError] = ValueError, *,
                allow_degenerate: bool = False) -> np.ndarray:
    """(x1, y1, x2, y2) or B×4 boxes inside the frame -> B×4 float64. x2 < x1 or y2 < y1 is always an error;
    a zero width or height too unless `allow_degenerate`."""
    b = np.asarray(box, dtype=np.float64)
    b = b[None] if b.ndim == 1 else b
    if b.ndim != 2 or b.shape[1] != 4 or len(b) == 0:
        raise error(f"box must be 4 numbers (x1, y1, x2, y2) or B×4, got shape {np.asarray(box).shape}")
    if not np.isfinite(b).all():
        raise error(f"box must be finite numbers, got {b.tolist()}")
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if (w < 0).any() or (h < 0).any() or (not allow_degenerate and ((w == 0).any() or (h == 0).any())):
        raise error(f"box must have x2 > x1 and y2 > y1 (zero or negative area), got {b.tolist()}")
    check_inside(b.reshape(-1, 2), frame_hw, "box corner", error)
    return b


def check_inside(pts: np.ndarray, frame_hw: tuple[int, int], what: str, error: type[ValueError] = ValueError) -> None:
    """Every (x, y) row of `pts` lies within [0, W] × [0, H]."""
    h, w = frame_hw
    bad = ~np.isfinite(pts).all(1) | (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
    if bad.any():
        raise error(f"{what} {pts[bad][0].tolist()} lies outside the {w}×{h} frame")
