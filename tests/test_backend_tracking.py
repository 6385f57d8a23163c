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


def test_tracked_frames_are_stored_once_compactly(predictor, frames):
    """Every tracked frame is encoded when tracked; requests read the compact store, never the session again."""
    tracker = Tracker(predictor.open(frames))
    tracker.set_prompts(_objects(), max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    first = {r.frame_idx: r for r in tracker.results()}
    calls = []
    tracker.session.result = lambda frame: calls.append(frame)  # would break any re-render
    again = {r.frame_idx: r for r in tracker.results()}
    assert calls == [] and sorted(again) == sorted(first) == list(range(N))
    for f in first:
        np.testing.assert_array_equal(again[f].masks, first[f].masks)
    h, w = frames[0].shape[:2]
    assert 0 < tracker.results_nbytes() < N * 2 * h * w / 8  # smaller than bit-packed masks
    tracker.set_prompts([], max_frames=10)
    assert tracker.results_nbytes() == 0  # a reset drops the store


def test_dropped_logits_track_the_same_and_a_click_there_still_works(predictor, frames):
    """drop_logits: identical tracked masks from the compact store, far fewer session bytes, and a correction
    click on a frame whose logits were dropped is decoded from the click alone."""
    kept, dropped = Tracker(predictor.open(frames)), Tracker(predictor.open(frames), drop_logits=True)
    for t in (kept, dropped):
        t.set_prompts(_objects(), max_frames=10_000)
        assert t.run(deadline=float("inf"))
    want = {r.frame_idx: r for r in kept.results()}
    got = {r.frame_idx: r for r in dropped.results()}
    assert sorted(got) == sorted(want)
    for f in want:
        np.testing.assert_array_equal(got[f].masks, want[f].masks, err_msg=f"frame {f}")
    stats_kept, stats_dropped = kept.session.memory_stats(), dropped.session.memory_stats()
    assert stats_dropped["results"] < stats_kept["results"] / 4  # small test model: 64² logits
    assert dropped._session_bytes(N, 2) < kept._session_bytes(N, 2) / 4
    assert not dropped.session.result(20).masks.any()  # the session no longer renders a dropped frame
    np.testing.assert_array_equal(dropped.result(20).masks, want[20].masks)  # the store still does
    click = _objects()
    click[0].frames.append(FramePrompt(20, points=[(30.0, 25.0)], point_labels=[1]))
    assert dropped.set_prompts(click, max_frames=10_000)  # the session restarts: the click is decoded afresh
    assert dropped.progress.start == 20
    assert dropped.result(20).masks.shape == want[20].masks.shape
    for t in (kept, dropped):
        t.close()


def test_click_on_a_dropped_frame_uses_no_mask_input(predictor, frames):
    """The engine: after drop_logits a click on a tracked frame is decoded with no previous mask as input."""
    a, b = predictor.open(frames), predictor.open(frames)
    for s in (a, b):
        s.add_prompt(5, "a", box=(10.0, 16.0, 40.0, 34.0))
        for _ in s.propagate("forward", start_frame=5, max_frames=4):
            pass
    a.drop_logits(8)
    a.drop_logits(5)  # a prompted frame keeps its logits
    assert a.objects["a"].tracked[8].low_res is None and a.objects["a"].cond[5].low_res is not None
    seen = []
    model_predict = b.model.predict_masks
    b.model.predict_masks = lambda *args: seen.append(args[4]) or model_predict(*args)
    click = dict(points=np.array([[30.0, 25.0]]), labels=np.array([1]))
    try:
        b.add_prompt(8, "a", **click)
        assert seen[-1] is not None  # kept logits: the previous mask is the mask input
        b.objects["a"].pending.clear()
        b.objects["a"].prompts.pop(8)
        b.drop_logits(8)
        b.add_prompt(8, "a", **click)
        assert seen[-1] is None  # dropped: the click alone
    finally:
        del b.model.predict_masks  # the class method again
    got = a.add_prompt(8, "a", **click)
    np.testing.assert_array_equal(b.result(8).masks, got.masks)
    assert a.objects["a"].pending[8].low_res is not None
