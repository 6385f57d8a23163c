"""End-to-end image-mode parity: the reference and ours load the same random weights from an official-layout
checkpoint; image-encoder features, low-res logits and IoU scores must agree within 1e-4 (float32)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle import ReferenceImagePredictor, build_reference, randomize_, save_official_checkpoint
from oracle_cc import reference_extension
from sam2_model import ImagePredictor, load_model

TOL = 1e-4


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A random image with structure at several scales (uint8 RGB)."""
    g = torch.Generator().manual_seed(seed)
    img = sum(F.interpolate(torch.rand(1, 3, s, s, generator=g), (h, w), mode="bilinear") for s in (4, 16, 64))
    return (img[0].permute(1, 2, 0) / 3 * 255).clamp(0, 255).byte().numpy()


PROMPTS = {
    "one point": dict(point_coords=[[200.0, 150.0]], point_labels=[1]),
    "points with negatives": dict(point_coords=[[200.0, 150.0], [320.0, 240.0], [60.0, 400.0]],
                                  point_labels=[1, 0, 1]),
    "box": dict(box=[100.0, 80.0, 420.0, 330.0]),
    "box plus points": dict(box=[100.0, 80.0, 420.0, 330.0], point_coords=[[250.0, 200.0]], point_labels=[0]),
    "single mask output": dict(point_coords=[[200.0, 150.0]], point_labels=[1], multimask_output=False),
    "several points single mask": dict(point_coords=[[200.0, 150.0], [300.0, 90.0]], point_labels=[1, 1],
                                       multimask_output=False),
}


@pytest.fixture(scope="module", params=["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def pair(request, tmp_path_factory):
    """(reference predictor, our predictor) on the same weights and image."""
    torch.manual_seed(0)
    ref = randomize_(build_reference(request.param), seed=1).eval()
    path = tmp_path_factory.mktemp("ckpt") / f"{request.param}.pt"  # official name: config inferred
    save_official_checkpoint(ref.state_dict(), path)
    ours = ImagePredictor(load_model(path))
    image = smooth_image(480, 640, seed=2)
    with torch.inference_mode():
        ours.set_image(image)
        reference = ReferenceImagePredictor(ref, image)
    return reference, ours


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def test_image_encoder_features_match(pair):
    reference, ours = pair
    diffs = [max_diff(reference.embed, ours._features.embedding)]
    diffs += [max_diff(r, o) for r, o in zip(reference.high_res, ours._features.high_res)]
    print(f"encoder features max abs diff: {max(diffs):.2e}")
    assert max(diffs) <= TOL


@pytest.mark.parametrize("case", list(PROMPTS))
def test_prompted_masks_match(pair, case):
    reference, ours = pair
    kwargs = PROMPTS[case]
    with torch.inference_mode():
        ref_full, ref_iou, ref_low = reference.predict(**kwargs)
        logits, iou, low = ours.predict(**kwargs, return_logits=True)
    d_low, d_iou = max_diff(ref_low, low), max_diff(ref_iou, iou)
    print(f"{case}: low-res logits {d_low:.2e}, iou {d_iou:.2e}")
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    assert d_low <= TOL and d_iou <= TOL
    assert max_diff(ref_full, logits) <= TOL
    masks, _, _ = ours.predict(**kwargs)
    assert masks.dtype == bool and masks.shape == (ref_full.shape[0], 480, 640)
    decided = np.abs(ref_full) > 1e-3  # pixels whose sign is not down to rounding
    assert np.array_equal(masks[decided], (ref_full > 0)[decided])


def test_mask_input_matches(pair):
    """A previous call's low-res logits fed back as mask_input (SAM's iterative refinement)."""
    reference, ours = pair
    with torch.inference_mode():
        _, iou, low = ours.predict(point_coords=[[200.0, 150.0]], point_labels=[1])
        prev = low[np.argmax(iou)][None]
        kwargs = dict(point_coords=[[200.0, 150.0], [330.0, 260.0]], point_labels=[1, 0], mask_input=prev,
                      multimask_output=False)
        _, ref_iou, ref_low = reference.predict(**kwargs)
        _, iou2, low2 = ours.predict(**kwargs)
        _, ref_iou_m, ref_low_m = reference.predict(mask_input=prev)
        _, iou_m, low_m = ours.predict(mask_input=prev)
    diffs = [max_diff(ref_low, low2), max_diff(ref_iou, iou2), max_diff(ref_low_m, low_m), max_diff(ref_iou_m, iou_m)]
    print(f"mask input max abs diff: {max(diffs):.2e}")
    assert max(diffs) <= TOL


@pytest.mark.parametrize("holes, sprinkles", [(40, 0), (0, 40), (100, 100)])
def test_hole_and_sprinkle_removal_match(pair, holes, sprinkles):
    """max_hole_area / max_sprinkle_area: ours vs the reference's own post-processing (its connected
    components from the CUDA kernel's stand-in, oracle_cc)."""
    reference, ours = pair
    kwargs = dict(point_coords=[[200.0, 150.0], [320.0, 240.0]], point_labels=[1, 0])
    cleaned, filtered = copy.copy(ours), copy.copy(reference)  # the same embedded image
    for predictor in (cleaned, filtered):
        predictor.max_hole_area, predictor.max_sprinkle_area = holes, sprinkles
    with torch.inference_mode(), reference_extension(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference warns when it skips post-processing
        ref_full, _, ref_low = filtered.predict(**kwargs)
        logits, _, low = cleaned.predict(**kwargs, return_logits=True)
        raw, _, _ = ours.predict(**kwargs, return_logits=True)
    changed = int(((logits > 0) != (raw > 0)).sum())
    assert changed > 0, "post-processing changed nothing: the comparison would prove nothing"
    assert max_diff(ref_low, low) <= TOL and np.array_equal(low, ours.predict(**kwargs)[2])  # low_res stays raw
    assert max_diff(ref_full, logits) <= TOL
    decided = np.abs(ref_full) > 1e-3
    assert np.array_equal((logits > 0)[decided], (ref_full > 0)[decided])
    print(f"holes {holes}, sprinkles {sprinkles}: {changed} mask pixels changed")


def test_batched_boxes_match(pair):
    reference, ours = pair
    boxes = np.array([[100.0, 80.0, 420.0, 330.0], [10.0, 20.0, 200.0, 300.0]])
    with torch.inference_mode():
        _, ref_iou, ref_low = reference.predict(box=boxes, multimask_output=False)
        masks, iou, low = ours.predict(box=boxes, multimask_output=False)
    assert masks.shape == (2, 1, 480, 640) and low.shape == ref_low.shape
    assert max_diff(ref_low, low) <= TOL and max_diff(ref_iou, iou) <= TOL


def test_embedding_is_reused(pair, monkeypatch):
    """predict() never re-runs the image encoder."""
    _, ours = pair
    calls = []
    monkeypatch.setattr(ours.model.image_encoder, "forward", lambda *a, **k: calls.append(1))
    for kwargs in PROMPTS.values():
        ours.predict(**kwargs)
    assert calls == []


@pytest.fixture(scope="module")
def small_predictor():
    from sam2_model import build_model, custom_config
    torch.manual_seed(0)
    return ImagePredictor(build_model(custom_config("input_test", image_size=128, d_model=64, memory_dim=16)))


def test_predict_before_set_image(small_predictor):
    small_predictor.reset()
    with pytest.raises(ValueError, match="call set_image"):
        small_predictor.predict(point_coords=[[1, 1]], point_labels=[1])


@pytest.mark.parametrize("image, message", [
    (np.zeros((40, 50), np.uint8), "H×W×3"),
    (np.zeros((40, 50, 4), np.uint8), "H×W×3"),
    (np.zeros((40, 50, 3), np.float32), "uint8"),
    (np.zeros((0, 50, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images(small_predictor, image, message):
    with pytest.raises(ValueError, match=message):
        small_predictor.set_image(image)


@pytest.mark.parametrize("kwargs, message", [
    (dict(point_coords=[[60, 10]], point_labels=[1]), "outside the 50×40 frame"),
    (dict(point_coords=[[-1, 10]], point_labels=[1]), "outside"),
    (dict(point_coords=[[10, 10]], point_labels=[1, 0]), "need 1 labels"),
    (dict(point_coords=[[10, 10]], point_labels=[2]), "labels must be 1"),
    (dict(point_coords=[[10, 10]]), "given together"),
    (dict(point_coords=np.zeros((0, 2)), point_labels=[]), "N ≥ 1"),
    (dict(box=[30, 10, 20, 30]), "x2 > x1"),
    (dict(box=[10, 10, 20]), "4 numbers"),
    (dict(box=[10, 10, 60, 30]), "outside"),
    (dict(mask_input=np.zeros((64, 64))), "low-res logits"),
])
def test_bad_prompts(small_predictor, kwargs, message):
    small_predictor.set_image(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        small_predictor.predict(**kwargs)
    masks, iou, low = small_predictor.predict(point_coords=[[10, 10]], point_labels=[1])  # still usable
    assert masks.shape == (3, 40, 50) and iou.shape == (3,) and low.shape == (3, 32, 32)
