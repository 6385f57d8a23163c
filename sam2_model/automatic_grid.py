"""Where the automatic mask generator prompts: point grids in [0, 1]² and the crops of an image.

Layer 0 is the whole image; crop layer i (1..n) tiles the image with 2^i × 2^i overlapping crops and prompts
them with a grid coarsened by downscale^i, as in SAM's automatic mask generation.
"""
from __future__ import annotations

import math

import numpy as np


def point_grid(n_per_side: int) -> np.ndarray:
    """Centres of an n×n grid of cells over [0, 1]²: -> (n²)×2 (x, y) float64, x varying fastest."""
    if n_per_side <= 0:
        return np.zeros((0, 2))
    half_cell = 1.0 / (2 * n_per_side)
    side = np.linspace(half_cell, 1.0 - half_cell, n_per_side)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per layer 0..n_layers; layer i has int(n_per_side / downscale^i) points per side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crops (x0, y0, x1, y1) pixels and their layer index: the whole image, then for each layer i ≥ 1 a
    2^i × 2^i tiling whose neighbours overlap by int(overlap_ratio · short side · 2 / 2^i) pixels
    (x0 outer, y0 inner). Crops are clipped to the image; they may be empty for tiny images."""
    h, w = image_hw
    boxes, layers = [[0, 0, w, h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + w) / n)
        crop_h = math.ceil((overlap * (n - 1) + h) / n)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(layer)
    return boxes, layers
