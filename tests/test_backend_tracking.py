"""backend.tracking.Tracker: chunked, interruptible propagation equals one uninterrupted "both" pass."""
from __future__ import annotations

import numpy as np
import pytest

from backend.prompts import FramePrompt, ObjectPrompts
from backend.tracking import Tracker
from sam2_model.video.predictor import VideoPredictor
from sam2_model.video.session import FrameIndexError, PromptError
from tests.backend_helpers import clip_frames, small_model

N = 26  # forward from frame 5 needs two chunks


@pytest.fixture(scope="module")
def predictor():
    return VideoPredictor(small_model())


@pytest.fixture(scope="module")
def frames():
    return clip_frames(N)


def _objects():
    return [
        ObjectPrompts("a", "Car", [FramePrompt(5, box=(10.0, 16.0, 40.0, 34.0))]),
        ObjectPrompts("b", None, [FramePrompt(8, points=[(20.0, 25.0)], point_labels=[1]),
                                  FramePrompt(12, points=[(25.0, 25.0), (5.0, 5.0)], point_labels=[1, 0])]),
    ]


class StepClock:
    """Advances one tick per call: a deadline of k ticks stops a run after a few frames."""

    def __init__(self):
        self.t = 0

    def __call__(self) -> int:
        self.t += 1
        return self.t


def test_interrupted_runs_equal_one_both_pass(predictor, frames):
    reference = predictor.open(frames)
    for obj in _objects():
        for fp in obj.frames:
            if fp.box is not None:
                reference.add_prompt(fp.frame, obj.key, box=fp.box)
            else:
                reference.add_prompt(fp.frame, obj.key, points=np.array(fp.points), labels=np.array(fp.point_labels))
    want = {r.frame_idx: r for r in reference.propagate("both", start_frame=5)}  # later (backward) wins

    tracker = Tracker(predictor.open(frames))
    assert tracker.set_prompts(_objects(), max_frames=10_000)
    assert tracker.progress.start == 5  # the earliest prompt
    runs = 0
    while not tracker.run(deadline=7, clock=StepClock()):
        runs += 1
        assert tracker.set_prompts(_objects(), max_frames=10_000) is False  # unchanged: resumes
    assert runs > 3
    got = {r.frame_idx: r for r in tracker.results()}
    assert sorted(got) == list(range(N)) == sorted(want)
    for f, w in want.items():
        assert got[f].obj_ids == w.obj_ids
        np.testing.assert_array_equal(got[f].masks, w.masks, err_msg=f"frame {f}")
        np.testing.assert_array_equal(got[f].object_scores, w.object_scores)


def test_changed_prompts_restart_at_the_change_and_limits(predictor, frames):
    tracker = Tracker(predictor.open(frames))
    tracker.set_prompts(_objects(), max_frames=3)
    assert tracker.run(deadline=float("inf"))
    assert list(tracker.progress.covered()) == list(range(2, 9))  # 3 frames each way
    assert tracker.frames() == list(range(2, 9)) + [12]  # plus the prompted frames
    moved = _objects()
    moved[1].frames[1].points[0] = (46.0, 26.0)
    assert tracker.set_prompts(moved, max_frames=3)
    assert tracker.progress.start == 12
    assert tracker.run(deadline=float("inf"))
    assert list(tracker.progress.covered()) == list(range(9, 16))
    tracker.run(deadline=0)  # a spent budget does nothing
    tracker.close()


def test_bad_prompts_leave_a_clean_tracker(predictor, frames):
    tracker = Tracker(predictor.open(frames))
    with pytest.raises(FrameIndexError):
        tracker.set_prompts([ObjectPrompts("a", None, [FramePrompt(N + 5, box=(1.0, 1.0, 9.0, 9.0))])], 10)
    with pytest.raises(PromptError):
        tracker.set_prompts([ObjectPrompts("a", None, [FramePrompt(3, box=(1.0, 1.0, 900.0, 9.0))])], 10)
    assert tracker.progress is None
    assert tracker.set_prompts(_objects(), 2) and tracker.run(float("inf"))
    assert tracker.nbytes() > 0
