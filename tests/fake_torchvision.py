"""Test harness only: exact stand-ins for the torchvision pieces Meta's automatic mask generator imports, so
the reference generator runs on the CPU test environment (whose `sam2` oracle is installed without
torchvision) in the same process as ours.

Covered: `torchvision.ops.boxes.batched_nms` / `box_area` / `nms` (CPU semantics of torchvision 0.2x: a stable
descending sort, greedy suppression when IoU > threshold in float32, the coordinate-offset trick for up to
1000 boxes and the per-class loop with a final non-stable sort above), and `torchvision.transforms`
`ToTensor`, `Resize` (tensor input: bilinear, antialiased) and `Normalize`, scriptable as the reference
scripts them. `install()` puts them into `sys.modules` unless a real torchvision is importable.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------- ops.boxes
def box_area(boxes: Tensor) -> Tensor:
    """N×4 (x1, y1, x2, y2) -> N areas, (x2 - x1)·(y2 - y1) in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's CPU kernel, pair by pair in the boxes' precision."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    assert boxes.dtype == scores.dtype, "dets should have the same type as scores"
    b = boxes.detach().numpy()
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = torch.sort(scores, stable=True, descending=True).indices.tolist()
    suppressed = [False] * len(order)
    keep = []
    zero = b.dtype.type(0)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if suppressed[j]:
                continue
            w = max(zero, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(zero, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            overlap = inter / (areas[i] + areas[j] - inter)
            if float(overlap) > iou_threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category `idxs`: -> kept indices by decreasing score."""
    if boxes.numel() > 4000:  # torchvision's CPU switch to a loop over categories
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            current = torch.where(idxs == class_id)[0]
            keep_mask[current[nms(boxes[current], scores[current], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ---------------------------------------------------------------------------------------------- transforms
class ToTensor:
    """H×W×C uint8 array -> C×H×W float32 in [0, 1]."""

    def __call__(self, pic: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(pic.transpose(2, 0, 1))).contiguous().to(torch.float32).div(255)


class Resize(nn.Module):
    """Tensor resize to a fixed (h, w), bilinear with antialiasing (torchvision's default for tensors)."""

    def __init__(self, size: List[int]):
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, img: Tensor) -> Tensor:
        x = img.unsqueeze(0) if img.dim() == 3 else img
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.squeeze(0) if img.dim() == 3 else x


class Normalize(nn.Module):
    """(x - mean) / std per channel, not in place."""

    def __init__(self, mean: List[float], std: List[float]):
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, tensor: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.clone().sub_(mean).div_(std)


def install() -> bool:
    """Register the stand-ins as `torchvision` (ops, ops.boxes, transforms) unless the real package exists.
    -> True when the stand-ins are in use."""
    if "torchvision" in sys.modules and not getattr(sys.modules["torchvision"], "__fake__", False):
        return False
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        return False
    root = types.ModuleType("torchvision")
    root.__fake__ = True
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    for module, names in ((boxes, ("batched_nms", "box_area", "nms")), (ops, ("batched_nms", "box_area", "nms")),
                          (transforms, ("ToTensor", "Resize", "Normalize"))):
        for name in names:
            setattr(module, name, globals()[name])
    root.ops, ops.boxes, root.transforms = ops, boxes, transforms
    sys.modules.update({"torchvision": root, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": transforms})
    return True
