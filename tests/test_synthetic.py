"""Synthetic clips: determinism, masks agreeing with the rendered pixels, occlusion, leaving and returning, boxes."""
from __future__ import annotations

import av
import numpy as np
import pytest

from sam2_model.train.synthetic import generate_clip, generate_long_video, iter_frames, masks_to_boxes

SEEDS = range(6)


@pytest.fixture(scope="module")
def clips():
    """Clips with occlusion and an exit, 3 objects, 24 frames of 128×160."""
    return [generate_clip(s, 24, (128, 160), 3, leave_and_return=True) for s in SEEDS]


def background_mismatch(frames: np.ndarray, masks: np.ndarray) -> float:
    """Fraction of pixels outside all masks that differ from the (static) background.

    The background at a pixel is read from the first frame where no mask covers it. If masks lag or lead the frames,
    object pixels fall outside the masks and are counted here.
    """
    covered = masks.any(axis=1)  # T×H×W
    first_free = np.argmax(~covered, axis=0)  # H×W
    background = np.take_along_axis(frames, first_free[None, ..., None], axis=0)[0]
    free = ~covered
    return float(np.mean((frames != background[None]).any(-1)[free]))


def test_shapes_and_dtypes(clips):
    clip = clips[0]
    assert clip.frames.shape == (24, 128, 160, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == clip.amodal_masks.shape == (24, 3, 128, 160) and clip.masks.dtype == bool
    assert clip.fps == 24.0
    assert clip.boxes().shape == (24, 3, 4) and clip.visible().shape == (24, 3)


def test_deterministic_by_seed():
    a, b, c = generate_clip(7), generate_clip(7), generate_clip(8)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.masks, c.masks)


def test_masks_match_rendered_pixels(clips):
    for clip in clips:
        assert background_mismatch(clip.frames, clip.masks) == 0.0
        # the check has teeth: masks one frame late (or early) leave object pixels outside the masks
        assert background_mismatch(clip.frames[1:], clip.masks[:-1]) > 0.001
        assert background_mismatch(clip.frames[:-1], clip.masks[1:]) > 0.001


def test_object_pixels_differ_from_background(clips):
    for clip in clips:
        covered = clip.masks.any(axis=1)
        never_covered = ~covered.any(axis=0)
        background = clip.frames[0][never_covered]
        assert background.size > 0
        # the background is static, so where it is visible in frame 0 and covered later, the pixel must change
        for t in range(1, len(clip.frames)):
            newly = covered[t] & ~covered[0]
            if newly.sum() > 50:
                changed = (clip.frames[t] != clip.frames[0]).any(-1)[newly]
                assert changed.mean() > 0.9


def test_each_mask_carries_its_own_texture(clips):
    """An unoccluded object's mean colour stays closest to its own frame-0 mean colour (masks are not swapped)."""
    for clip in clips:
        k = clip.masks.shape[1]
        ref = np.stack([clip.frames[0][clip.masks[0, i]].mean(0) for i in range(k)])
        area = clip.amodal_masks.sum((2, 3))
        for t in range(1, len(clip.frames)):
            for i in range(k):
                unoccluded = np.array_equal(clip.masks[t, i], clip.amodal_masks[t, i])
                if unoccluded and area[t, i] > 0.5 * area[:, i].max():
                    colour = clip.frames[t][clip.masks[t, i]].mean(0)
                    assert np.argmin(np.linalg.norm(ref - colour, axis=1)) == i


def test_first_frame_objects_whole_and_apart(clips):
    for clip in clips:
        np.testing.assert_array_equal(clip.masks[0], clip.amodal_masks[0])
        assert clip.visible()[0].all()
        boxes = clip.boxes()[0]
        assert (boxes[:, :2] > 0).all() and (boxes[:, 2] < 159).all() and (boxes[:, 3] < 127).all()


def test_visible_masks_are_disjoint_parts_of_amodal(clips):
    for clip in clips:
        assert not (clip.masks & ~clip.amodal_masks).any()
        assert (clip.masks.sum(axis=1) <= 1).all()


def test_occlusion_happens(clips):
    for clip in clips:
        visible, whole = clip.masks.sum((2, 3)), clip.amodal_masks.sum((2, 3))
        assert (visible < 0.8 * whole).any()


def test_no_occlusion_when_disabled():
    for seed in SEEDS:
        clip = generate_clip(seed, 24, (128, 160), 3, occlusion=False)
        np.testing.assert_array_equal(clip.masks, clip.amodal_masks)
        assert clip.visible().all()


def test_leave_and_return(clips):
    for clip in clips:
        visible, inside = clip.visible(), clip.amodal_masks.any((2, 3))
        gone = [i for i in range(inside.shape[1]) if not inside[:, i].all()]
        assert len(gone) == 1, "exactly one object should leave the frame"
        absent = np.flatnonzero(~inside[:, gone[0]])
        assert absent[0] > 0 and absent[-1] < len(inside) - 1  # present before, gone, back again
        assert len(absent) == absent[-1] - absent[0] + 1  # a single stretch out of the frame
        assert visible[absent[-1] + 1 :, gone[0]].any()
    assert generate_clip(0, 24, leave_and_return=False, occlusion=False).visible().all()


def test_boxes_match_masks(clips):
    for clip in clips:
        boxes, visible = clip.boxes(), clip.visible()
        assert np.isnan(boxes[~visible]).all() and not np.isnan(boxes[visible]).any()
        for t, i in zip(*np.nonzero(visible)):
            ys, xs = np.nonzero(clip.masks[t, i])
            np.testing.assert_array_equal(boxes[t, i], [xs.min(), ys.min(), xs.max(), ys.max()])


def test_masks_to_boxes_by_hand():
    m = np.zeros((2, 5, 6), bool)
    m[0, 1:3, 2:5] = True
    np.testing.assert_array_equal(masks_to_boxes(m)[0], [2, 1, 4, 2])
    assert np.isnan(masks_to_boxes(m)[1]).all()


@pytest.mark.parametrize("size,k", [((96, 64), 1), ((64, 200), 4)])
def test_other_sizes_and_counts(size, k):
    clip = generate_clip(1, 16, size, k, leave_and_return=True)
    assert clip.masks.shape == (16, k) + size
    assert background_mismatch(clip.frames, clip.masks) == 0.0


def test_frame_indices_render_the_same_frames_as_the_whole_clip():
    whole = generate_clip(3, 16, (48, 64), 2, leave_and_return=True)
    part = generate_clip(3, 16, (48, 64), 2, leave_and_return=True, frame_indices=[9, 2, 15])
    assert part.frames.shape[0] == 3
    for i, t in enumerate([9, 2, 15]):
        assert np.array_equal(part.frames[i], whole.frames[t]) and np.array_equal(part.masks[i], whole.masks[t])
        assert np.array_equal(part.amodal_masks[i], whole.amodal_masks[t])
    with pytest.raises(ValueError, match="frame indices"):
        generate_clip(3, 16, (48, 64), 2, frame_indices=[16])


def test_iter_frames_matches_generate_clip():
    clip = generate_clip(2, 16, (48, 64), 2, leave_and_return=True)
    for t, (frame, visible) in enumerate(iter_frames(2, 16, (48, 64), 2, leave_and_return=True)):
        np.testing.assert_array_equal(frame, clip.frames[t])
        np.testing.assert_array_equal(visible, clip.masks[t])
    with pytest.raises(ValueError):
        generate_clip(0, 8, leave_and_return=True)


def test_long_video_streams_to_h264(tmp_path):
    path = tmp_path / "clip.mp4"
    boxes = generate_long_video(path, 30, (64, 96), 12.0, seed=5, num_objects=2)
    clip = generate_clip(5, 30, (64, 96), 2, leave_and_return=True, fps=12.0)
    np.testing.assert_array_equal(boxes, clip.boxes())
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.frames.shape
    assert np.abs(decoded.astype(int) - clip.frames).mean() < 8
