"""End-to-end image-mode parity: the reference and ours load the same random weights from an official-layout
checkpoint; image-encoder features, low-res logits and IoU scores must agree within 1e-4 (float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oracle import build_reference, randomize_, save_official_checkpoint
from sam2_model import ImagePredictor, load_model
from sam2_model.image_predictor import preprocess_image

TOL = 1e-4


class ReferenceImagePredictor:
    """The reference SAM2ImagePredictor's steps, on the reference model's own methods (its module imports
    torchvision, which the CPU test environment lacks). Input preprocessing is shared with ours."""

    def __init__(self, ref, image: np.ndarray):
        self.ref = ref
        self.orig_hw = image.shape[:2]
        x = preprocess_image(image, ref.image_size)
        backbone_out = ref.forward_image(x)
        _, feats, _, sizes = ref._prepare_backbone_features(backbone_out)
        feats[-1] = feats[-1] + ref.no_mem_embed
        maps = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats, sizes)]
        self.embed, self.high_res = maps[-1], maps[:-1]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        h, w = self.orig_hw
        scale = torch.tensor([self.ref.image_size / w, self.ref.image_size / h])
        points = None
        if point_coords is not None:
            points = (torch.as_tensor(point_coords, dtype=torch.float)[None] * scale,
                      torch.as_tensor(point_labels, dtype=torch.int)[None])
        if box is not None:
            box_coords = torch.as_tensor(box, dtype=torch.float).reshape(-1, 2, 2) * scale
            box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(box_coords.shape[0], 1)
            if points is not None:
                points = (torch.cat([box_coords, points[0]], 1), torch.cat([box_labels, points[1]], 1))
            else:
                points = (box_coords, box_labels)
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float)[None]
        sparse, dense = self.ref.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        low_res, iou, _, _ = self.ref.sam_mask_decoder(
            image_embeddings=self.embed, image_pe=self.ref.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1, high_res_features=self.high_res)
        full = F.interpolate(low_res, self.orig_hw, mode="bilinear", align_corners=False)
        # like the reference: drop the batch dimension only for a single prompt
        return full.squeeze(0).numpy(), iou.squeeze(0).numpy(), low_res.clamp(-32, 32).squeeze(0).numpy()


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
