"""Mask post-processing (sam2_model/postprocess.py) against the reference's own functions.

The reference computes connected components with a CUDA extension; `oracle_cc` is a sequential port of that
kernel, checked here against a plain flood fill, and then lets the reference run its own hole filling and
sprinkle removal on the CPU.
"""
from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle import reference_postprocess_masks
from oracle_cc import get_connected_componnets, reference_extension
from sam2_model import ImagePredictor, build_model, custom_config
from sam2_model.postprocess import clean_masks, component_areas, fill_holes
from sam2_model.video.predictor import VideoPredictor


def blobby_logits(n: int, h: int, w: int, seed: int, smooth: int = 3) -> torch.Tensor:
    """N×1×H×W logits with connected regions of many sizes (smoothed noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=g)
    return F.avg_pool2d(x, smooth, stride=1, padding=smooth // 2, count_include_pad=False) * 4


def flood_fill(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent 8-connected labelling of a bool H×W plane: (kernel-style labels, areas).

    A component's label is 1 + the raster index of the top-left pixel of its first 2×2 block."""
    h, w = plane.shape
    labels = np.zeros((h, w), np.int64)
    areas = np.zeros((h, w), np.int64)
    seen = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if not plane[y, x] or seen[y, x]:
                continue
            pixels, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and plane[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            first_block = min((py // 2 * 2) * w + px // 2 * 2 for py, px in pixels)
            for py, px in pixels:
                labels[py, px], areas[py, px] = first_block + 1, len(pixels)
    return labels, areas


@pytest.mark.parametrize("seed, density", [(0, 0.5), (1, 0.2), (2, 0.8), (3, 0.05)])
def test_kernel_stand_in_is_an_8_connected_labelling(seed, density):
    rng = np.random.default_rng(seed)
    mask = rng.random((2, 1, 24, 30)) < density
    labels, counts = get_connected_componnets(torch.from_numpy(mask).to(torch.uint8))
    assert labels.dtype == counts.dtype == torch.int32 and labels.shape == mask.shape
    for i in range(2):
        want_labels, want_areas = flood_fill(mask[i, 0])
        assert np.array_equal(labels[i, 0].numpy(), want_labels)
        assert np.array_equal(counts[i, 0].numpy(), want_areas)
    # and our OpenCV areas are the kernel's counts
    assert torch.equal(component_areas(torch.from_numpy(mask)), counts)


def test_kernel_stand_in_keeps_the_kernels_input_checks():
    with pytest.raises(AssertionError, match="even"):
        get_connected_componnets(torch.zeros(1, 1, 5, 4, dtype=torch.uint8))
    with pytest.raises(AssertionError, match="uint8"):
        get_connected_componnets(torch.zeros(1, 1, 4, 4))


def test_diagonal_pixels_are_one_component():
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # a diagonal line: 8-connected, not 4-connected
    assert set(component_areas(mask)[mask].tolist()) == {4}
    assert set(get_connected_componnets(mask.to(torch.uint8))[1][mask].tolist()) == {4}


@pytest.mark.parametrize("max_area", [1, 8, 30])
def test_fill_holes_matches_the_reference(max_area):
    from sam2.utils.misc import fill_holes_in_mask_scores

    logits = blobby_logits(3, 64, 64, seed=max_area)
    with reference_extension(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference warns when it skips the step
        want = fill_holes_in_mask_scores(logits, max_area)
    got = fill_holes(logits, max_area)
    filled = int(((logits <= 0) & (got > 0)).sum())
    assert filled > 0, "no hole was filled: the comparison would prove nothing"
    assert torch.equal(got, want)


def test_without_the_stand_in_the_reference_skips_hole_filling():
    """What the reference does on a CPU-only install (the oracle environment): it warns and changes nothing."""
    from sam2.utils.misc import fill_holes_in_mask_scores

    logits = blobby_logits(1, 64, 64, seed=8)
    with pytest.warns(UserWarning, match="Skipping the post-processing"):
        out = fill_holes_in_mask_scores(logits, 8)
    assert torch.equal(out, logits) and not torch.equal(fill_holes(logits, 8), logits)


def test_fill_holes_off_and_absent_objects():
    logits = blobby_logits(1, 64, 64, seed=4)
    assert fill_holes(logits, 0) is logits
    absent = torch.full((1, 1, 64, 64), -1024.0)  # an absent object: one background region, nothing filled
    assert torch.equal(fill_holes(absent, 8), absent)
    half = fill_holes(logits.half(), 8)
    assert half.dtype == torch.float16


@pytest.mark.parametrize("threshold, holes, sprinkles", [(0.0, 10, 0), (0.0, 0, 10), (0.0, 25, 25), (1.5, 8, 40)])
def test_image_post_processing_matches_the_reference(threshold, holes, sprinkles):
    low_res = blobby_logits(6, 64, 64, seed=int(holes + sprinkles)).reshape(2, 3, 64, 64)
    with reference_extension(), warnings.catch_warnings():
        warnings.simplefilter("error")
        want = reference_postprocess_masks(low_res, (100, 150), threshold, holes, sprinkles)
    cleaned = clean_masks(low_res, threshold, holes, sprinkles)
    flipped = int(((cleaned > threshold) != (low_res > threshold)).sum())
    assert flipped > 0, "nothing was changed: the comparison would prove nothing"
    got = F.interpolate(cleaned, (100, 150), mode="bilinear", align_corners=False)
    assert torch.equal(got, want)


def test_options_are_validated():
    model = build_model(custom_config("pp", image_size=64, d_model=32, memory_dim=8, decoder_mlp_dim=32,
                                      memory_attention_ff_dim=32, memory_attention_layers=1))
    for bad in (-1, "8", None, True, float("nan")):
        with pytest.raises(ValueError, match="max_hole_area"):
            ImagePredictor(model, max_hole_area=bad)
        with pytest.raises(ValueError, match="max_sprinkle_area"):
            ImagePredictor(model, max_sprinkle_area=bad)
        with pytest.raises(ValueError, match="fill_hole_area"):
            VideoPredictor(model, fill_hole_area=bad)
    assert ImagePredictor(model).max_hole_area == ImagePredictor(model).max_sprinkle_area == 0  # as the reference
    assert VideoPredictor(model).fill_hole_area == 8  # as the reference's video predictor
