"""Mask filters and bookkeeping of the automatic mask generator, in plain torch/numpy (no torchvision).

Boxes are (x0, y0, x1, y1) with x1, y1 the last pixel inside the mask (inclusive), as SAM reports them.
RLE is the uncompressed COCO form: {"size": [h, w], "counts": [...]} over the mask read column by column,
alternating runs of background and foreground, starting with background (a leading 0 when pixel 0 is set).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def stability_score(logits: Tensor, threshold: float, offset: float) -> Tensor:
    """IoU of a mask binarized at threshold + offset and at threshold - offset (the first lies inside the
    second, so it is a ratio of areas): logits N×H×W -> N float32 (NaN where both are empty)."""
    inner = (logits > threshold + offset).sum(dim=(-1, -2))
    outer = (logits > threshold - offset).sum(dim=(-1, -2))
    return inner.float() / outer.float()


def masks_to_boxes(masks: Tensor) -> Tensor:
    """N×H×W bool -> N×4 int64 (x0, y0, x1, y1), last pixels inclusive; [0, 0, 0, 0] for an empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64)
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)  # N×H, N×W
    first = lambda a: a.to(torch.uint8).argmax(dim=-1)  # noqa: E731  (first True; 0 when none)
    boxes = torch.stack([first(cols), first(rows), w - 1 - first(cols.flip(-1)), h - 1 - first(rows.flip(-1))], 1)
    return torch.where(rows.any(dim=-1, keepdim=True), boxes, 0).to(torch.int64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: boxes N×4 (x0, y0, x1, y1), scores N -> indices kept, by decreasing
    score (ties in input order). A box is dropped when its IoU with a kept box exceeds `iou_threshold`;
    areas are (x1 - x0)·(y1 - y0) in float32, the convention of torchvision's nms."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores, stable=True, descending=True).indices
    b = boxes.float()[order].numpy()
    x0, y0, x1, y1 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    area = (x1 - x0) * (y1 - y0)
    zero = np.float32(0)
    alive = np.ones(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        if rest.size == 0:
            break
        iw = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: NaN, never suppressed
            iou = inter / (area[i] + area[rest] - inter)
        alive[rest[iou.astype(np.float64) > iou_threshold]] = False
    return order[torch.as_tensor(keep, dtype=torch.int64)]


def box_near_crop_edge(boxes: Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0) -> Tensor:
    """Boxes N×4 of a crop (crop pixels) that come within `atol` of an edge of the crop that is not an edge
    of the image (masks probably cut by the crop): -> N bool."""
    shifted = uncrop_boxes(boxes, crop_box).float()
    near = lambda edges: (shifted - torch.tensor([edges], dtype=torch.float32)).abs() <= atol  # noqa: E731
    return (near(crop_box) & ~near(image_box)).any(dim=1)


def uncrop_boxes(boxes: Tensor, crop_box: list[int]) -> Tensor:
    """N×4 boxes in crop pixels -> image pixels."""
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([[x0, y0, x0, y0]], dtype=boxes.dtype)


def uncrop_points(points: Tensor, crop_box: list[int]) -> Tensor:
    """N×2 points (x, y) in crop pixels -> image pixels."""
    return points + torch.tensor([crop_box[:2]], dtype=points.dtype)


def uncrop_mask(mask: np.ndarray, crop_box: list[int], image_hw: tuple[int, int]) -> np.ndarray:
    """A crop's h×w bool mask -> the image's H×W bool mask (False outside the crop)."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, image_hw[1], image_hw[0]):
        return mask
    out = np.zeros(image_hw, dtype=bool)
    out[y0:y1, x0:x1] = mask
    return out


def encode_rle(masks: Tensor | np.ndarray) -> list[dict]:
    """N×H×W bool masks -> N uncompressed RLEs."""
    masks = np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks, dtype=bool)
    n, h, w = masks.shape
    columns = masks.transpose(0, 2, 1).reshape(n, h * w)
    out = []
    for flat in columns:
        bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [h * w]])
        counts = np.diff(bounds).tolist()
        out.append({"size": [h, w], "counts": ([0] + counts) if h * w and flat[0] else counts})
    return out


def decode_rle(rle: dict) -> np.ndarray:
    """Uncompressed RLE -> H×W bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = (np.arange(len(counts)) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def rle_area(rle: dict) -> int:
    """Foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))



def fill_small_regions(logits: Tensor, threshold: float, max_area: float) -> Tensor:
    """Holes (background components) and sprinkles (foreground components) of at most `max_area` pixels,
    8-connected, in masks binarized at `threshold`, flipped: holes to threshold + 10, sprinkles to
    threshold - 10. logits N×h×w (low-res) -> N×h×w. Both kinds are found on the input masks."""
    import cv2  # a runtime dependency already (opencv-python-headless)

    out = logits.clone()
    foreground = (logits > threshold).cpu().numpy()
    for i, fg in enumerate(foreground):
        for region, value in ((~fg, threshold + 10.0), (fg, threshold - 10.0)):
            _, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
            area = stats[:, cv2.CC_STAT_AREA][labels]
            small = torch.from_numpy((labels > 0) & (area <= max_area)).to(out.device)
            out[i] = torch.where(small, torch.tensor(value, dtype=out.dtype, device=out.device), out[i])
    return out
