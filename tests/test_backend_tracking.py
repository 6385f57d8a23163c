"""backend.tracking.Tracker: chunked, interruptible propagation equals one uninterrupted "both" pass; prompt changes
re-track only what they affect; owners keep their objects apart."""
from __future__ import annotations

import numpy as np
import pytest

from backend import compact
from backend.prompts import FramePrompt, ObjectPrompts
from backend.results import mask_to_box
from backend.errors import BackendError
from backend.tracking import Tracker, add_frame_prompt
from config.settings import Settings
from sam2_model import build_model
from sam2_model.configs import get_config
from sam2_model.video.frames import FrameSource
from sam2_model.video.predictor import VideoPredictor
from sam2_model.video.session import FrameIndexError, PromptError
from tests.backend_helpers import TRACKING_SEED, clip_frames, small_model

N = 26  # forward from frame 5 needs two chunks


@pytest.fixture(scope="module")
def predictor():
    return VideoPredictor(small_model(TRACKING_SEED))  # a seed whose masks are not empty


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


def test_changes_beyond_the_range_retrack_nothing(predictor, frames):
    tracker = Tracker(predictor.open(frames))
    tracker.set_prompts(_objects(), max_frames=3)
    assert tracker.run(deadline=float("inf"))
    assert list(tracker.progress.covered()) == list(range(2, 9))  # 3 frames each way
    assert tracker.frames() == list(range(2, 9)) + [12]  # plus the prompted frames
    before = tracker.result(12).masks[1].copy()
    moved = _objects()
    moved[1].frames[1].points[0] = (46.0, 26.0)
    tracked = _record_tracking(tracker)
    assert tracker.set_prompts(moved, max_frames=3)
    assert tracker.run(deadline=float("inf"))
    assert tracked == []  # frame 12 lies past the range of the seed (frame 5): only its prompt is decoded again
    assert tracker.frames() == list(range(2, 9)) + [12]
    assert not np.array_equal(tracker.result(12).masks[1], before)
    tracker.run(deadline=0)  # a spent budget does nothing
    tracker.close()


def _record_tracking(tracker: Tracker) -> list[tuple[int, tuple]]:
    """Record (frame, object ids) of every frame the tracker's session propagates from now on."""
    seen = []
    propagate = tracker.session.propagate

    def spy(*args, **kwargs):
        for result in propagate(*args, **kwargs):
            seen.append((result.frame_idx, tuple(result.obj_ids)))
            yield result

    tracker.session.propagate = spy
    return seen


def _engine(predictor, frames, objects, start):
    """A bare session holding `objects`' prompts, propagated both ways from `start` (the tracker's first pass)."""
    session = predictor.open(frames)
    for obj in objects:
        for fp in obj.frames:
            add_frame_prompt(session, obj.key, fp)
    for _ in session.propagate("both", start_frame=start):
        pass
    return session


@pytest.mark.parametrize("frame, retracked", [(15, range(15, N)), (2, range(2, -1, -1))])
def test_a_correction_retracks_from_its_frame_away_from_the_seed(predictor, frames, frame, retracked):
    """A click on frame 15 (after the seed, frame 5) re-tracks 15..end forward; one on frame 2 re-tracks 2..0
    backward. The other frames keep their masks, and the new ones equal the engine's own correction: forget the
    frame, prompt it, propagate from it."""
    objects = [_objects()[0]]
    tracker = Tracker(predictor.open(frames), drop_logits=True)
    tracker.set_prompts(objects, max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    before = {r.frame_idx: r.masks.copy() for r in tracker.results()}
    click = FramePrompt(frame, points=[(30.0, 25.0), (3.0, 3.0)], point_labels=[1, 0])
    corrected = [ObjectPrompts("a", "Car", sorted(objects[0].frames + [click], key=lambda fp: fp.frame))]
    tracked = _record_tracking(tracker)
    assert tracker.set_prompts(corrected, max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    assert [f for f, _ in tracked] == list(retracked)

    engine = _engine(predictor, frames, objects, start=5)
    engine.forget(frame, "a")
    add_frame_prompt(engine, "a", click)
    for _ in engine.propagate("forward" if frame > 5 else "backward", start_frame=frame):
        pass
    assert tracker.frames() == list(range(N))
    for f in range(N):
        got = tracker.result(f).masks
        if f in retracked:
            np.testing.assert_array_equal(got, engine.result(f).masks, err_msg=f"frame {f}")
        else:
            np.testing.assert_array_equal(got, before[f], err_msg=f"frame {f} changed")
    assert any(not np.array_equal(tracker.result(f).masks, before[f]) for f in retracked)


def test_a_cut_correction_keeps_the_older_masks_past_its_front(predictor, frames):
    """A correction whose re-tracking the budget cuts still answers every frame tracked before: the front's
    side has the new masks, the rest the old ones until the next request moves the front on."""
    tracker = Tracker(predictor.open(frames), drop_logits=True)
    tracker.set_prompts(_objects()[:1], max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    corrected = _objects()[:1]
    corrected[0].frames.append(FramePrompt(10, points=[(30.0, 25.0)], point_labels=[1]))
    tracked = _record_tracking(tracker)
    tracker.set_prompts(corrected, max_frames=10_000)
    assert not tracker.run(deadline=3, clock=StepClock())
    assert 0 < len(tracked) < N - 10
    assert tracker.frames() == list(range(N))  # nothing shrank
    assert tracker.set_prompts(corrected, max_frames=10_000) is False
    assert tracker.run(deadline=float("inf"))
    assert [f for f, _ in tracked] == list(range(10, N))  # resumed, each frame once


def test_objects_are_added_and_removed_without_retracking_the_others(predictor, frames):
    a, b = _objects()
    tracker = Tracker(predictor.open(frames), drop_logits=True)
    tracker.set_prompts([a], max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    alone = {r.frame_idx: r.masks[0].copy() for r in tracker.results()}
    tracked = _record_tracking(tracker)
    assert tracker.set_prompts([a, b], max_frames=10_000)
    assert tracker.run(deadline=float("inf"))
    b_id = tracker.progress.obj_ids
    assert len(tracked) == N + 1 and {ids for _, ids in tracked} == {b_id}  # b alone, from its seed (frame 8)
    assert tracker.progress.start == 8
    only_b = Tracker(predictor.open(frames), drop_logits=True)
    only_b.set_prompts([b], max_frames=10_000)
    assert only_b.run(deadline=float("inf"))
    for r in tracker.results():
        assert r.obj_ids == ["a", "b"]
        np.testing.assert_array_equal(r.masks[0], alone[r.frame_idx])
        np.testing.assert_array_equal(r.masks[1], only_b.result(r.frame_idx).masks[0])
    tracked.clear()
    assert tracker.set_prompts([b], max_frames=10_000)
    assert tracker.run(deadline=float("inf")) and tracked == []
    assert [r.obj_ids for r in tracker.results()] == [["b"]] * N
    assert tracker.results_nbytes() == only_b.results_nbytes()  # a's masks left with it


def test_owners_keep_their_objects_apart(predictor, frames):
    """Two annotators on one task: each one's objects, passes and answers are their own, and one's changes
    never re-track or remove the other's. The first identified owner adopts the anonymous objects."""
    a, b = _objects()
    tracker = Tracker(predictor.open(frames), drop_logits=True)
    tracker.set_prompts([a], max_frames=10_000)  # a first click, before any draft names its user
    assert tracker.run(deadline=float("inf"))
    first = {r.frame_idx: r.masks.copy() for r in tracker.results()}
    tracked = _record_tracking(tracker)
    assert tracker.set_prompts([a], max_frames=10_000, owner="user:1") is False  # adopted: nothing to redo
    assert tracker.state().objects == [] and tracker.frames() == []
    assert tracker.set_prompts([b], max_frames=10_000, owner="user:2")
    assert tracker.run(deadline=float("inf"), owner="user:2")
    assert tracker.run(deadline=float("inf"), owner="user:1")
    assert {ids for _, ids in tracked} == {tracker.state("user:2").passes[0].obj_ids}
    tracked.clear()
    assert tracker.set_prompts([], max_frames=10_000, owner="user:2")  # user 2 deletes their region
    assert tracker.run(deadline=float("inf"), owner="user:1") and tracked == []
    assert tracker.frames("user:2") == []
    for f, masks in first.items():
        r = tracker.result(f, owner="user:1")
        assert r.obj_ids == ["a"]
        np.testing.assert_array_equal(r.masks, masks)


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


def test_tracks_hold_the_box_and_score_of_each_stored_mask(predictor, frames, monkeypatch):
    """Tracker.tracks: each object's box and presence score on every frame, kept when the frame was stored and
    read without decoding a mask; they equal the stored mask's box and score through a cut run, a correction
    and a removal, and NaN marks the frames with no mask."""
    tracker = Tracker(predictor.open(frames), drop_logits=True)
    decode_rle = compact.decode_rle

    def check() -> dict:
        monkeypatch.setattr(compact, "decode_rle", lambda rle: pytest.fail("tracks() decoded a mask"))
        tracks = tracker.tracks()
        monkeypatch.setattr(compact, "decode_rle", decode_rle)
        assert list(tracks) == [o.key for o in tracker.objects]
        shown = 0
        for f in range(N):
            result = tracker.result(f)
            for i, key in enumerate(result.obj_ids):
                box, track = mask_to_box(result.masks[i]), tracks[key]
                if box is None:
                    assert np.isnan(track.boxes[f]).all(), (key, f)
                else:
                    assert tuple(track.boxes[f]) == box and track.scores[f] == result.object_scores[i], (key, f)
                    shown += 1
        assert shown > 0
        return tracks

    tracker.set_prompts(_objects(), max_frames=10_000)
    tracker.run(deadline=7, clock=StepClock())
    cut = check()
    assert np.isnan(cut["a"].scores).any()  # the cut run left frames without results
    assert not np.isnan(cut["b"].scores[[8, 12]]).any()  # prompted frames have results before they are tracked
    assert tracker.run(deadline=float("inf"))
    whole = check()
    click = _objects()
    click[0].frames.append(FramePrompt(20, points=[(30.0, 25.0)], point_labels=[1]))
    tracker.set_prompts(click, max_frames=10_000)
    tracker.run(deadline=float("inf"))
    corrected = check()
    np.testing.assert_array_equal(corrected["a"].boxes[:20], whole["a"].boxes[:20])  # before the click: kept
    np.testing.assert_array_equal(corrected["b"].boxes, whole["b"].boxes)  # the other object: untouched
    before = tracker.results_nbytes()
    tracker.set_prompts(click[:1], max_frames=10_000)
    assert list(tracker.tracks()) == ["a"]
    assert before - tracker.results_nbytes() >= N * compact.TRACK_BYTES  # b's track left with it
    tracker.close()


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
    assert dropped.set_prompts(click, max_frames=10_000)  # the click is decoded afresh, re-tracked from there
    assert (dropped.progress.start, dropped.progress.fwd_next) == (5, 20)
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


class _LongClip(FrameSource):
    """A 30-minute 30 fps 720p clip drawn on demand (only the frames asked for are made)."""

    frame_count, fps, frame_size = 30 * 60 * 30, 30.0, (720, 1280)

    def get(self, idx: int) -> np.ndarray:
        frame = np.full((720, 1280, 3), 40, np.uint8)
        frame[300:420, 200 + self._check_index(idx) % 600:][:, :160] = (220, 180, 60)
        return frame


def test_a_30_minute_clip_with_5_objects_fits_the_default_budget():
    """With the default settings, 5 boxes in the middle of a 30-minute clip are tracked over all 54 000 frames,
    not refused (413): the up-front estimate, with the pointer size of the official models, fits
    SESSION_BUDGET_MB. An eighth of that budget refuses it, before anything changed."""
    settings = Settings()
    model = build_model(get_config("sam2.1_hiera_tiny"))  # random weights: only the sizes matter here
    objects = [ObjectPrompts(f"o{k}", None, [FramePrompt(27_000, box=(200.0 + 50 * k, 300.0, 360.0 + 50 * k, 420.0))])
               for k in range(5)]
    small = Tracker(VideoPredictor(model).open(_LongClip()), budget_bytes=int(settings.session_budget_mb * 2**17),
                    drop_logits=True)
    with pytest.raises(BackendError) as refused:
        small.set_prompts(objects, settings.max_propagation_frames)
    assert refused.value.status == 413 and small.progress is None and small.session.obj_ids == []
    tracker = Tracker(VideoPredictor(model).open(_LongClip()), budget_bytes=int(settings.session_budget_mb * 2**20),
                      drop_logits=True)
    assert tracker.set_prompts(objects, settings.max_propagation_frames)
    assert tracker.progress.span == _LongClip.frame_count
    needed = tracker._results_bytes(_LongClip.frame_count, 5)
    assert needed < settings.session_budget_mb * 2**20 / 4  # about 0.8 GB of 4 GB
