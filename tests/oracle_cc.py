"""Test-only stand-in for the reference's CUDA extension `sam2._C`, so that the reference runs its own mask
post-processing (the video predictor's `fill_hole_area`, the image predictor's hole and sprinkle removal) on
the CPU instead of warning and skipping it.

`get_connected_componnets` (sic, the extension's name) is a sequential port of the extension's kernel
(sam2/csrc/connected_components.cu: block-based union-find over 2×2 blocks, 8-connectivity): for an N×1×H×W
uint8 input it returns int32 [labels, counts] of that shape, labels = 1 + the raster index of the top-left
pixel of the component's first 2×2 block (0 on background), counts = the component's area (0 on background).
The kernel unions with atomicMin, so every component's root is its smallest block index whatever the thread
order; running the same unions one after another gives the same labels.
"""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import torch
from torch import Tensor


def _find(parent: np.ndarray, n: int) -> int:
    while parent[n] != n:
        n = parent[n]
    return n


def _union(parent: np.ndarray, a: int, b: int) -> None:
    """Link the larger root to the smaller one (what the kernel's atomicMin loop converges to)."""
    a, b = _find(parent, a), _find(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


def _bit(p: int, pos: int) -> bool:
    return bool((p >> pos) & 1)


def _label_plane(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, counts) of one H×W uint8 plane, kernel by kernel: init_labeling, merge, compression,
    final_labeling, init_counting, final_counting."""
    h, w = img.shape
    flat = img.reshape(-1)
    label = np.zeros(h * w, dtype=np.int64)
    blocks = [(row, col) for row in range(0, h, 2) for col in range(0, w, 2)]
    for row, col in blocks:  # init_labeling
        label[row * w + col] = row * w + col
    for row, col in blocks:  # merge
        idx = row * w + col
        p = 0
        if flat[idx]:
            p |= 0x777
        if row + 1 < h and flat[idx + w]:
            p |= 0x777 << 4
        if col + 1 < w and flat[idx + 1]:
            p |= 0x777 << 1
        if col == 0:
            p &= 0xEEEE
        if col + 1 >= w:
            p &= 0x3333
        elif col + 2 >= w:
            p &= 0x7777
        if row == 0:
            p &= 0xFFF0
        if row + 1 >= h:
            p &= 0xFF
        if p > 0:
            if _bit(p, 0) and flat[idx - w - 1]:
                _union(label, idx, idx - 2 * w - 2)  # top-left block
            if (_bit(p, 1) and flat[idx - w]) or (_bit(p, 2) and flat[idx - w + 1]):
                _union(label, idx, idx - 2 * w)  # top block
            if _bit(p, 3) and flat[idx + 2 - w]:
                _union(label, idx, idx - 2 * w + 2)  # top-right block
            if (_bit(p, 4) and flat[idx - 1]) or (_bit(p, 8) and flat[idx + w - 1]):
                _union(label, idx, idx - 2)  # left block
    out = np.zeros(h * w, dtype=np.int32)
    for row, col in blocks:  # compression + final_labeling
        idx = row * w + col
        y = _find(label, idx) + 1
        for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
            if row + dr < h and col + dc < w:
                j = idx + dr * w + dc
                out[j] = y if flat[j] else 0
    sizes = np.bincount(out, minlength=h * w + 1)  # init_counting (label y counted at y - 1 there)
    counts = np.where(out > 0, sizes[out], 0).astype(np.int32)  # final_counting
    return out.reshape(h, w), counts.reshape(h, w)


def get_connected_componnets(inputs: Tensor) -> list[Tensor]:
    """The extension's entry point, with its argument checks (the CUDA one aside)."""
    assert inputs.ndimension() == 4, "inputs must be [N, 1, H, W] shape"
    assert inputs.dtype == torch.uint8, "inputs must be a uint8 type"
    n, c, h, w = inputs.shape
    assert c == 1, "inputs must be [N, 1, H, W] shape"
    assert h % 2 == 0, "height must be an even number"
    assert w % 2 == 0, "width must be an even number"
    planes = inputs.cpu().numpy()
    labels = np.zeros((n, c, h, w), dtype=np.int32)
    counts = np.zeros((n, c, h, w), dtype=np.int32)
    for i in range(n):
        labels[i, 0], counts[i, 0] = _label_plane(planes[i, 0])
    return [torch.from_numpy(labels).to(inputs.device), torch.from_numpy(counts).to(inputs.device)]


@contextlib.contextmanager
def reference_extension():
    """Make `from sam2 import _C` find this stand-in while the context is open (restored afterwards)."""
    import sam2

    module = types.ModuleType("sam2._C")
    module.get_connected_componnets = get_connected_componnets
    saved_module = sys.modules.get("sam2._C")
    saved_attr = getattr(sam2, "_C", None)
    sys.modules["sam2._C"] = module
    sam2._C = module
    try:
        yield module
    finally:
        if saved_module is None:
            sys.modules.pop("sam2._C", None)
        else:
            sys.modules["sam2._C"] = saved_module
        if saved_attr is None:
            if hasattr(sam2, "_C"):
                del sam2._C
        else:
            sam2._C = saved_attr
