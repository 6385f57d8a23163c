"""DAVIS-style video object segmentation metrics: region similarity J, contour accuracy F, J&F, presence accuracy,
and the wrong-object rate (identity switches).

Conventions follow the DAVIS benchmark (Perazzi et al. 2016; davis2017-evaluation):
- J is the IoU of the predicted and ground-truth masks; J = 1 when both are empty.
- F is the F-measure of boundary precision and recall: a boundary pixel counts as matched when the other mask's
  boundary lies within `ceil(0.008 · image diagonal)` pixels (a disk). Boundaries are the mask pixels removed by a
  3×3 erosion; the image border is not a boundary (the mask is extended past it). F = 1 when both boundaries are
  empty; when only one is empty its precision or recall is 0 and so F = 0.
- Frames where an object is absent from the ground truth count too (J = F = 1 for an empty prediction, else 0).
- Sequence scores average per-object scores; an object's score averages its counted frames. By default the first
  and last frames are excluded, as DAVIS does for semi-supervised evaluation (the first frame carries the prompt).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal, as in DAVIS
_SQUARE = np.ones((3, 3), np.uint8)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two H×W boolean masks; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """H×W bool: pixels of the mask with a 3×3 neighbour outside it (the image border does not count)."""
    inner = cv2.erode(mask.astype(np.uint8), _SQUARE, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return mask.astype(bool) & ~inner


def disk(radius: int) -> np.ndarray:
    """(2r+1)×(2r+1) uint8 disk structuring element: offsets with x² + y² <= r²."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def boundary_tolerance(height: int, width: int, tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching distance in pixels: `tolerance` itself when >= 1, else ceil(tolerance · diagonal)."""
    return int(tolerance) if tolerance >= 1 else math.ceil(tolerance * math.hypot(height, width))


def contour_accuracy(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two H×W boolean masks (see the module docstring for the conventions)."""
    pred_b, gt_b = boundary(pred), boundary(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    kernel = disk(boundary_tolerance(*pred.shape[-2:], tolerance))
    pred_near = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    gt_near = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def counted_frames(num_frames: int, skip_first: bool = True, skip_last: bool = True) -> np.ndarray:
    """Indices of the frames that enter the scores."""
    frames = np.arange(int(skip_first), num_frames - int(skip_last))
    if len(frames) == 0:
        raise ValueError(f"no frames left to evaluate out of {num_frames}")
    return frames


def evaluate_masklets(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    skip_first: bool = True,
    skip_last: bool = True,
    tolerance: float = BOUNDARY_TOLERANCE,
) -> dict[str, object]:
    """Score predicted masklets against ground truth, both T×K×H×W bool (object k of pred matches object k of gt).

    Returns a dict: "J", "F", "JF" (floats, sequence means over objects); "J_per_object", "F_per_object",
    "JF_per_object" (K arrays, means over frames); "J_per_frame", "F_per_frame" (N×K arrays) and "frames" (the N
    counted frame indices). Defaults drop the first and last frame, like DAVIS semi-supervised evaluation.
    """
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred and gt must both be T×K×H×W, got {pred.shape} and {gt.shape}")
    frames = counted_frames(pred.shape[0], skip_first, skip_last)
    k = pred.shape[1]
    j = np.array([[region_similarity(pred[t, i], gt[t, i]) for i in range(k)] for t in frames]).reshape(-1, k)
    f = np.array([[contour_accuracy(pred[t, i], gt[t, i], tolerance) for i in range(k)] for t in frames])
    f = f.reshape(-1, k)
    j_obj, f_obj = j.mean(axis=0), f.mean(axis=0)
    return {
        "J": float(j_obj.mean()),
        "F": float(f_obj.mean()),
        "JF": float((j_obj.mean() + f_obj.mean()) / 2),
        "J_per_object": j_obj,
        "F_per_object": f_obj,
        "JF_per_object": (j_obj + f_obj) / 2,
        "J_per_frame": j,
        "F_per_frame": f,
        "frames": frames,
    }


def presence_accuracy(pred_visible: np.ndarray, gt_visible: np.ndarray) -> float:
    """Fraction of (frame, object) entries whose predicted presence matches the ground truth (T×K bool each).

    Masks (T×K×H×W) are accepted too and reduced to "has any pixel".
    """
    pred_visible, gt_visible = _presence(pred_visible), _presence(gt_visible)
    if pred_visible.shape != gt_visible.shape:
        raise ValueError(f"shapes differ: {pred_visible.shape} and {gt_visible.shape}")
    return float(np.mean(pred_visible == gt_visible))


def _presence(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=bool)
    return x.any(axis=(-2, -1)) if x.ndim == 4 else x


def on_other_objects(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """T×K bool: entries of T×K×H×W bool masks whose prediction lies mostly (more than half of its pixels) on the
    ground truth of the *other* objects, i.e. the tracker has switched to a neighbour. An empty prediction is
    never on another object."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred and gt must both be T×K×H×W, got {pred.shape} and {gt.shape}")
    area = pred.sum(axis=(2, 3))  # T×K
    wrong = np.zeros(area.shape, bool)
    for k in range(gt.shape[1]):
        others = np.delete(gt, k, axis=1).any(axis=1)  # T×H×W: pixels of the other objects
        on_others = (pred[:, k] & others).sum(axis=(1, 2))
        wrong[:, k] = 2 * on_others > area[:, k]
    return wrong


def wrong_object_rate(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of (frame, object) entries of T×K×H×W bool masks that are `on_other_objects` (an empty prediction
    is a presence error, counted by `presence_accuracy`, not a switch)."""
    return float(on_other_objects(pred, gt).mean())
