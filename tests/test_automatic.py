"""The automatic mask generator: parity with the reference SAM2AutomaticMaskGenerator on the same random
weights (its torchvision imports replaced by exact stand-ins, tests/fake_torchvision.py), unit parity of the
grid/crop/filter helpers with the reference's, and bad input.

Random weights make masks that spread over the whole image, so the parity cases raise mask_threshold (smaller,
scattered masks with distinct boxes) or the NMS thresholds (everything kept, order checked) so that many masks
survive the filters.
"""
from __future__ import annotations

import fake_torchvision

fake_torchvision.install()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sam2.utils import amg  # noqa: E402

from oracle import build_reference, randomize_, save_official_checkpoint  # noqa: E402
from sam2_model import custom_config, load_model  # noqa: E402
from sam2_model.automatic import MaskGenerator  # noqa: E402
from sam2_model.automatic_filters import (  # noqa: E402
    box_near_crop_edge, decode_rle, encode_rle, fill_small_regions, masks_to_boxes, nms, stability_score,
)
from sam2_model.automatic_grid import crop_boxes, layer_point_grids, point_grid  # noqa: E402
from test_image_predictor import smooth_image  # noqa: E402

CFG = custom_config("automatic_parity", image_size=256, embed_dim=32, num_heads=1, stages=(1, 2, 2, 1),
                    global_att_blocks=(4,), window_spec=(8, 4, 4, 2))
BASE = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.5, stability_score_thresh=0.0)
CASES = {  # name: (image h, w, options, fewest masks the case must produce to mean something)
    "nms": (96, 128, dict(mask_threshold=3.0, box_nms_thresh=0.7), 3),
    "everything kept, order": (96, 128, dict(box_nms_thresh=1.0, stability_score_thresh=0.3), 40),
    "m2m": (96, 128, dict(mask_threshold=3.0, use_m2m=True), 5),
    "crops": (120, 160, dict(mask_threshold=4.0, crop_n_layers=1, crop_n_points_downscale_factor=2,
                             crop_overlap_ratio=0.5, box_nms_thresh=0.95, crop_nms_thresh=0.5, points_per_side=12,
                             points_per_batch=64, output_mode="uncompressed_rle"), 20),
    "crops and m2m": (120, 160, dict(mask_threshold=4.0, crop_n_layers=1, crop_overlap_ratio=0.5,
                                     box_nms_thresh=0.95, crop_nms_thresh=0.5, use_m2m=True), 5),
    "small regions": (96, 128, dict(box_nms_thresh=1.0, stability_score_thresh=0.3, min_mask_region_area=40), 20),
    "small regions and m2m": (96, 128, dict(mask_threshold=3.0, use_m2m=True, box_nms_thresh=0.95,
                                            min_mask_region_area=25), 3),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference SAM2Base, our SAM2) on the same random weights."""
    torch.manual_seed(0)
    ref = randomize_(build_reference(CFG), seed=1).eval()
    path = tmp_path_factory.mktemp("automatic") / "automatic.pt"
    save_official_checkpoint(ref.state_dict(), path)
    return ref, load_model(path, config=CFG)


def reference_generate(ref, image: np.ndarray, **options) -> list[dict]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(ref, **options)
    s = ref.image_size // 4  # the reference predictor hard-codes the feature sizes of a 1024 model
    generator.predictor._bb_feat_sizes = [(s, s), (s // 2, s // 2), (s // 4, s // 4)]
    with torch.inference_mode():
        return generator.generate(image)


def assert_same_records(reference: list[dict], ours: list[dict]) -> None:
    assert len(ours) == len(reference)
    for i, (r, o) in enumerate(zip(reference, ours)):
        assert set(o) == set(r)
        if isinstance(r["segmentation"], np.ndarray):
            assert o["segmentation"].dtype == bool and np.array_equal(o["segmentation"], r["segmentation"]), i
        else:
            assert o["segmentation"] == r["segmentation"], i
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert o[key] == r[key], (i, key)
        for key in ("predicted_iou", "stability_score"):
            assert np.isclose(o[key], r[key], atol=1e-4, equal_nan=True), (i, key, o[key], r[key])


@pytest.mark.parametrize("case", list(CASES))
def test_same_masks_as_reference(models, case, monkeypatch):
    ref, ours = models
    h, w, options, fewest = CASES[case]
    image = smooth_image(h, w, seed=2)
    options = {**BASE, **options}
    if options.get("min_mask_region_area"):  # the reference's clean-up needs its CUDA kernel: stand in for it
        import sam2.utils.misc

        monkeypatch.setattr(sam2.utils.misc, "get_connected_components", connected_components_standin)
    reference = reference_generate(ref, image, **options)
    assert len(reference) >= fewest  # the case keeps enough masks to compare
    if options.get("crop_n_layers"):
        assert len({tuple(r["crop_box"]) for r in reference}) > 1  # masks from crops survive
    records = MaskGenerator(ours, **options).generate(image)
    assert_same_records(reference, records)
    if options.get("min_mask_region_area"):  # the clean-up changed masks
        plain = MaskGenerator(ours, **{**options, "min_mask_region_area": 0}).generate(image)
        assert [r["area"] for r in plain] != [r["area"] for r in records]


def test_precomputed_features_give_the_same_masks(models, monkeypatch):
    _, ours = models
    image = smooth_image(96, 128, seed=4)
    options = {**BASE, **CASES["nms"][2]}
    expected = MaskGenerator(ours, **options).generate(image)
    from sam2_model.image_predictor import preprocess_image

    with torch.inference_mode():
        features = ours.encode_image(preprocess_image(image, CFG.image_size))
    calls = []
    monkeypatch.setattr(ours, "encode_image", lambda *a: calls.append(a))
    got = MaskGenerator(ours, **options).generate(image, features=features)
    assert calls == []  # no second embedding
    assert_same_records(expected, got)


# ---------------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("hw", [(96, 128), (1080, 1920), (7, 5)])
@pytest.mark.parametrize("layers,ratio", [(0, 512 / 1500), (1, 512 / 1500), (2, 0.5), (3, 0.1)])
def test_crop_boxes_and_grids_match_reference(hw, layers, ratio):
    assert crop_boxes(hw, layers, ratio) == tuple(amg.generate_crop_boxes(hw, layers, ratio))
    for downscale in (1, 2):
        ours, theirs = layer_point_grids(16, layers, downscale), amg.build_all_layer_point_grids(16, layers, downscale)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_point_grid_is_cell_centres():
    np.testing.assert_allclose(point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])


def random_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Blobs of random size and place, some empty, some touching the borders."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n - 2):
        y0, x0 = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y1, x1 = y0 + int(torch.randint(1, h, (1,), generator=g)), x0 + int(torch.randint(1, w, (1,), generator=g))
        masks[i, y0:y1, x0:x1] = torch.rand(min(y1, h) - y0, min(x1, w) - x0, generator=g) > 0.2
    masks[-1] = torch.rand(h, w, generator=g) > 0.5
    return masks  # masks[-2] stays empty


def test_boxes_rle_and_stability_match_reference():
    masks = random_masks(12, 23, 31, seed=0)
    assert torch.equal(masks_to_boxes(masks), amg.batched_mask_to_box(masks))
    rles = encode_rle(masks)
    assert rles == amg.mask_to_rle_pytorch(masks)
    for rle, mask in zip(rles, masks):
        assert np.array_equal(decode_rle(rle), mask.numpy())
    logits = torch.randn(12, 23, 31, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(stability_score(logits, 0.5, 1.0), amg.calculate_stability_score(logits, 0.5, 1.0),
                               equal_nan=True)


def test_box_near_crop_edge_matches_reference():
    g = torch.Generator().manual_seed(3)
    boxes = torch.randint(0, 60, (50, 2), generator=g)
    boxes = torch.cat([boxes, boxes + torch.randint(0, 60, (50, 2), generator=g)], 1)
    for crop in ([0, 0, 100, 80], [30, 20, 100, 80], [0, 0, 60, 50]):
        assert torch.equal(box_near_crop_edge(boxes, crop, [0, 0, 100, 80]),
                           amg.is_box_near_crop_edge(boxes, crop, [0, 0, 100, 80]))


def test_nms_matches_torchvision_semantics():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40], 1).round()
    scores = (torch.rand(300, generator=g) * 10).round() / 10  # many ties
    for threshold in (0.0, 0.3, 0.7, 1.0):
        assert torch.equal(nms(boxes, scores, threshold), fake_torchvision.nms(boxes, scores, threshold))
    # by hand: the second box overlaps the first with IoU 0.81, the third is apart
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 30, 30]])
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.8).tolist() == [1, 2]
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 0.85).tolist() == [1, 0, 2]


def test_fill_small_regions_by_hand():
    fg = torch.zeros(1, 12, 14, dtype=torch.bool)
    fg[0, 1:9, 1:9] = True
    fg[0, 3, 3] = False  # a one-pixel hole
    fg[0, 4:7, 5:8] = False  # a 9-pixel hole
    fg[0, 10:12, 12:14] = True  # a 4-pixel sprinkle
    fg[0, 9, 9] = True  # touches the square diagonally: 8-connected, part of it
    logits = torch.where(fg, 2.0, -3.0)
    out = fill_small_regions(logits, 0.5, 4)
    assert out[0, 3, 3] == 10.5 and (out[0, 4:7, 5:8] == -3.0).all()  # small hole filled, big one kept
    assert (out[0, 10:12, 12:14] == -9.5).all() and out[0, 9, 9] == 2.0  # sprinkle removed, corner kept
    assert (out[0, 0] == -3.0).all()  # the background around is no hole (it is big)
    changed = out != logits
    assert changed.sum() == 1 + 4


def connected_components_standin(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for the reference's CUDA kernel (sam2._C, not built on CPU): N×1×H×W binary -> labels (> 0 on
    foreground) and the area of each pixel's 8-connected foreground component (0 on background)."""
    import cv2

    labels, areas = torch.zeros_like(mask, dtype=torch.int32), torch.zeros_like(mask, dtype=torch.int32)
    for i, m in enumerate(mask[:, 0].to(torch.uint8).numpy()):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        labels[i, 0] = torch.from_numpy(lab.astype(np.int32))
        areas[i, 0] = torch.from_numpy(np.where(lab > 0, stats[lab, cv2.CC_STAT_AREA], 0).astype(np.int32))
    return labels, areas


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def tiny_model():
    from sam2_model import build_model

    torch.manual_seed(0)
    return build_model(custom_config("automatic_tiny", image_size=64, d_model=32, memory_dim=16)).eval()


@pytest.mark.parametrize("options,message", [
    (dict(points_per_side=0), "points_per_side"),
    (dict(points_per_side=2.5), "points_per_side"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
    (dict(stability_score_thresh=-0.1), "stability_score_thresh"),
    (dict(box_nms_thresh=float("nan")), "box_nms_thresh"),
    (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio"),
    (dict(crop_n_layers=-1), "crop_n_layers"),
    (dict(points_per_batch=0), "points_per_batch"),
    (dict(output_mode="png"), "output_mode"),
    (dict(output_mode="coco_rle"), "pycocotools"),
    (dict(use_m2m="yes"), "use_m2m"),
    (dict(points_per_side=None), "exactly one"),
    (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=4), "no points"),
])
def test_bad_options(tiny_model, options, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(tiny_model, **options)


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10), np.uint8), "H×W×3"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    ("frame.png", "numpy array"),
])
def test_bad_images(tiny_model, image, message):
    with pytest.raises(ValueError, match=message):
        MaskGenerator(tiny_model, points_per_side=2).generate(image)


def test_one_colour_and_nothing_surviving(tiny_model):
    flat = np.full((40, 60, 3), 128, np.uint8)
    records = MaskGenerator(tiny_model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            crop_n_layers=1).generate(flat)
    assert isinstance(records, list)
    for r in records:
        assert r["segmentation"].shape == (40, 60) and r["area"] == int(r["segmentation"].sum())
    assert MaskGenerator(tiny_model, points_per_side=4, pred_iou_thresh=1.0).generate(flat) == []
    tiny = np.zeros((3, 2, 3), np.uint8)  # crops of a tiny image can be empty
    assert isinstance(MaskGenerator(tiny_model, points_per_side=2, crop_n_layers=2).generate(tiny), list)
