"""DAVIS-style metrics checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from sam2_model.train.metrics import (
    boundary,
    boundary_tolerance,
    contour_accuracy,
    disk,
    evaluate_masklets,
    presence_accuracy,
    region_similarity,
    wrong_object_rate,
)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_region_similarity_by_hand():
    a = box(20, 20, 2, 12, 2, 12)
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, box(20, 20, 14, 18, 14, 18)) == 0.0
    assert region_similarity(box(8, 8, 0, 4, 0, 4), box(8, 8, 2, 6, 0, 4)) == pytest.approx(8 / 24)
    assert region_similarity(a, box(20, 20, 2, 7, 2, 12)) == pytest.approx(50 / 100)
    assert region_similarity(box(10, 10, 0, 3, 0, 3), box(10, 10, 1, 4, 1, 4)) == pytest.approx(4 / 14)


def test_empty_conventions():
    empty, a = np.zeros((16, 16), bool), box(16, 16, 4, 8, 4, 8)
    assert region_similarity(empty, empty) == 1.0 and contour_accuracy(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0 and contour_accuracy(a, empty) == 0.0
    assert region_similarity(empty, a) == 0.0 and contour_accuracy(empty, a) == 0.0


def test_boundary_and_disk():
    b = boundary(box(8, 8, 2, 6, 2, 7))
    assert b.sum() == 2 * 5 + 2 * 2  # perimeter ring of a 4×5 block
    assert not b[3:5, 3:6].any()
    assert boundary(box(8, 8, 0, 8, 0, 4)).sum() == 8  # the image border is not a boundary
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(3).sum() == 29


def test_tolerance_is_davis():
    assert boundary_tolerance(480, 854) == 8  # DAVIS 480p
    assert boundary_tolerance(100, 100) == 2  # ceil(0.008 * 141.4)
    assert boundary_tolerance(100, 100, 5) == 5


def test_contour_accuracy_shift():
    gt = box(100, 100, 30, 70, 30, 70)
    assert contour_accuracy(gt, gt) == 1.0
    scores = [contour_accuracy(np.roll(gt, s, axis=1), gt) for s in range(7)]
    assert scores[:3] == [1.0, 1.0, 1.0]  # within the 2 px tolerance
    assert 0.5 < scores[3] < 1.0
    assert all(a > b for a, b in zip(scores[3:], scores[4:]))
    assert contour_accuracy(np.roll(gt, 5, axis=0), gt, tolerance=5) == 1.0


def test_contour_accuracy_precision_recall_by_hand():
    gt = box(100, 100, 10, 50, 10, 50)  # boundary 4*40 - 4 = 156 px
    pred = gt | box(100, 100, 80, 90, 80, 90)  # plus a far blob with boundary 36 px
    precision, recall = 156 / 192, 1.0
    expected = 2 * precision * recall / (precision + recall)
    assert contour_accuracy(pred, gt) == pytest.approx(expected)
    assert contour_accuracy(gt, pred) == pytest.approx(expected)  # recall and precision swap


def test_evaluate_masklets_frames_and_objects():
    t, h, w = 5, 32, 32
    gt = np.zeros((t, 2, h, w), bool)
    gt[:, 0, 4:12, 4:12] = True
    gt[:3, 1, 20:28, 20:28] = True  # object 1 absent in frames 3, 4
    pred = gt.copy()
    pred[0] = False  # wrong first frame
    pred[4, 0] = False  # wrong last frame for object 0
    pred[2, 1, 20:24] = False  # half of object 1 in frame 2
    pred[3, 1, 0:2, 0:2] = True  # object 1 predicted where it is absent

    r = evaluate_masklets(pred, gt)  # frames 1..3
    np.testing.assert_array_equal(r["frames"], [1, 2, 3])
    np.testing.assert_allclose(r["J_per_object"], [1.0, (1 + 0.5 + 0) / 3])
    assert r["J"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["J_per_frame"].shape == r["F_per_frame"].shape == (3, 2)
    assert r["F_per_object"][0] == 1.0 and r["F_per_frame"][2, 1] == 0.0
    assert r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)
    np.testing.assert_allclose(r["JF_per_object"], (r["J_per_object"] + r["F_per_object"]) / 2)

    r_all = evaluate_masklets(pred, gt, skip_first=False, skip_last=False)
    np.testing.assert_allclose(r_all["J_per_object"], [3 / 5, (0 + 1 + 0.5 + 0 + 1) / 5])
    assert evaluate_masklets(gt, gt, skip_first=False, skip_last=False)["JF"] == 1.0


def test_evaluate_masklets_errors():
    with pytest.raises(ValueError):
        evaluate_masklets(np.zeros((2, 1, 4, 4), bool), np.zeros((2, 1, 4, 4), bool))  # no frame left
    with pytest.raises(ValueError):
        evaluate_masklets(np.zeros((3, 1, 4, 4), bool), np.zeros((3, 2, 4, 4), bool))


def test_presence_accuracy():
    gt = np.array([[True, True], [False, True]])
    pred = np.array([[True, False], [False, True]])
    assert presence_accuracy(pred, gt) == 0.75
    masks = np.zeros((2, 2, 4, 4), bool)
    masks[0, 0, 1, 1] = masks[1, 1, 2, 2] = True
    assert presence_accuracy(masks, gt) == 0.75
    with pytest.raises(ValueError):
        presence_accuracy(pred[:1], gt)


def test_wrong_object_rate_counts_predictions_that_follow_a_neighbour():
    gt = np.zeros((2, 2, 8, 8), bool)  # T=2, K=2
    gt[:, 0] = box(8, 8, 0, 4, 0, 4)
    gt[:, 1] = box(8, 8, 4, 8, 4, 8)
    pred = gt.copy()
    assert wrong_object_rate(pred, gt) == 0.0
    pred[1, 0] = gt[1, 1]  # frame 1: object 0's mask has switched onto object 1
    assert wrong_object_rate(pred, gt) == 0.25
    pred[1, 0] = box(8, 8, 0, 8, 0, 8)  # 16 of 64 pixels on object 1: not mostly on it
    assert wrong_object_rate(pred, gt) == 0.0
    pred[1, 0] = box(8, 8, 4, 8, 0, 8)  # 16 of 32 on object 1: exactly half is not more than half
    assert wrong_object_rate(pred, gt) == 0.0
    pred[1, 0] = box(8, 8, 3, 8, 4, 8)  # 16 of 20 on object 1
    assert wrong_object_rate(pred, gt) == 0.25
    pred[1, 0] = False  # an empty prediction is a presence error, not a switch
    assert wrong_object_rate(pred, gt) == 0.0
    assert wrong_object_rate(gt[:, :1], gt[:, :1]) == 0.0  # one object: nothing to switch to
    with pytest.raises(ValueError):
        wrong_object_rate(pred[:1], gt)
