"""Mask post-processing on low-res logits: fill small holes, remove small sprinkles (as SAM 2 does).

A hole is a connected background region (logits <= threshold) of at most `max_area` pixels, a sprinkle a
connected foreground region (logits > threshold) of at most `max_area` pixels; both are found with
8-connectivity, regions touching the border included. OpenCV labels the components on the CPU, so no
compiled extension is needed; the arrays are small (4h×4w, 256×256 for a 1024 px model).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

VIDEO_HOLE_FILL_LOGIT = 0.1
"""Logit the video predictor writes into a filled hole (just above the threshold 0)."""
IMAGE_FILL_MARGIN = 10.0
"""The image predictor writes threshold + 10 into holes and threshold - 10 into sprinkles."""


def component_areas(mask: Tensor) -> Tensor:
    """Area of the 8-connected component each pixel belongs to: N×1×H×W bool -> N×1×H×W int32 (0 where the
    mask is False)."""
    masks = mask.detach().to("cpu", torch.uint8).numpy()
    planes = masks.reshape(-1, *masks.shape[-2:])
    areas = np.zeros(planes.shape, dtype=np.int32)
    for i, m in enumerate(planes):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
        if count > 1:
            sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
            sizes[0] = 0  # OpenCV's label 0 is the background of `m`
            areas[i] = sizes[labels]
    return torch.from_numpy(areas.reshape(masks.shape)).to(mask.device)


def small_components(mask: Tensor, max_area: float) -> Tensor:
    """N×1×H×W bool: pixels of `mask` whose 8-connected component has at most `max_area` pixels."""
    areas = component_areas(mask)
    return (areas > 0) & (areas <= max_area)


def fill_holes(logits: Tensor, max_area: float, fill: float = VIDEO_HOLE_FILL_LOGIT) -> Tensor:
    """The video predictor's hole filling: background regions (logits <= 0) of at most `max_area` pixels get
    the logit `fill`. logits N×1×H×W -> same shape and dtype (unchanged when max_area <= 0)."""
    if max_area <= 0:
        return logits
    holes = small_components(logits <= 0, max_area)
    return torch.where(holes, torch.tensor(fill, dtype=logits.dtype, device=logits.device), logits)


def clean_masks(logits: Tensor, threshold: float, max_hole_area: float, max_sprinkle_area: float) -> Tensor:
    """The image predictor's post-processing of B×C×H×W low-res logits (float32 out).

    Holes (logits <= threshold, area <= max_hole_area) become threshold + 10, sprinkles (logits > threshold,
    area <= max_sprinkle_area) threshold - 10; both are found on the input logits. An area of 0 turns a step off.
    """
    logits = logits.float()
    flat = logits.flatten(0, 1).unsqueeze(1)
    out = logits
    if max_hole_area > 0:
        holes = small_components(flat <= threshold, max_hole_area).reshape_as(logits)
        out = torch.where(holes, threshold + IMAGE_FILL_MARGIN, out)
    if max_sprinkle_area > 0:
        sprinkles = small_components(flat > threshold, max_sprinkle_area).reshape_as(logits)
        out = torch.where(sprinkles, threshold - IMAGE_FILL_MARGIN, out)
    return out
