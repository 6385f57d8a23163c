"""Label Studio's editor frames against decoded frames (backend/frametime.py), on synthetic clips with unusual
timing, and through the HTTP backend: a config framerate other than the file's, a variable frame rate, a start
time other than 0, rotation metadata, and the bad-input choices (module doc of backend/frametime.py).

Expected frames are computed here from the editor's rule written out independently: frame f seeks to
t = round(((f - 1) / F) / 2 ms) * 2 ms + 2 ms and shows the last frame whose timestamp is <= t.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest

from backend.app import create_app
from backend.frametime import FrameMap, FrameTimeError, editor_frame, editor_framerate, seek_time
from sam2_model.video.frames import VideoFileSource
from sam2_model.video.timeline import Timeline
from tests.backend_helpers import backend_settings, captured
from tests.clips import vfr_pts, write_clip, write_mjpeg_mkv
from tests.fake_label_studio import FakeLabelStudio
from tests.test_frames import frame_index

MS = Fraction(1, 1000)


def shown(starts_s, frame: int, fps: float) -> int:
    """The decoded frame the editor shows at 1-based `frame`, from the rule in the module doc."""
    t = round((frame - 1) / fps / 0.002) * 0.002 + 0.002
    return max(i for i, s in enumerate(starts_s) if s <= t + 1e-9) if starts_s[0] <= t else 0


# ---------------------------------------------------------------- the rule


def test_framerate_as_the_editor_reads_it():
    assert editor_framerate(None) == editor_framerate("") == editor_framerate("0") == 24.0
    assert editor_framerate("fast") == editor_framerate("$missing", {"v": 1}) == 24.0  # NaN -> 24
    assert editor_framerate("0x1E") == 30.0 and editor_framerate(" 1e1 ") == 10.0
    assert editor_framerate("0.5") == 2.0 and editor_framerate("$fps", {"fps": 0.25}) == 4.0
    assert editor_framerate("$m.rates[1]", {"m": {"rates": [1, "59.94"]}}) == 59.94
    for bad in ("-1", "-0.5", "Infinity"):
        with pytest.raises(FrameTimeError, match="framerate"):
            editor_framerate(bad)


def test_seek_and_frame_shown():
    assert seek_time(1, 24.0, 10) == pytest.approx(0.002)
    assert seek_time(2, 30.0, 10) == pytest.approx(0.036)  # 1/30 s rounds to 34 ms, plus 2 ms
    assert seek_time(99, 30.0, 10) == seek_time(10, 30.0, 10)  # clamped to the editor's length
    for fps in (24.0, 25.0, 29.97, 30.0, 60.0):
        assert all(editor_frame(seek_time(f, fps, 500), fps, 500) == f for f in range(1, 501))


def test_config_framerate_below_the_files():
    """The issue's example: the default 24 on a 30 fps clip; editor frame 300 shows decoded frame 373, not 299."""
    frames = FrameMap.for_video(Timeline.uniform(600, 30.0), 24.0)
    assert frames.length == 480
    assert frames.decoded(300) == 373 and frames.editor(373) == 300
    assert frames.editor(374) == 300  # a frame the editor steps over: the frame it reports while playing it
    starts = Timeline.uniform(600, 30.0).starts
    assert frames.decoded_frames.tolist() == [shown(starts, f, 24.0) for f in range(1, 481)]
    assert all(frames.editor(frames.decoded(f)) == f for f in range(1, 481))


def test_config_framerate_above_the_files():
    """Config 60 on a 25 fps clip: editor frames show each decoded frame two or three times."""
    tl = Timeline.uniform(25, 25.0)
    frames = FrameMap.for_video(tl, 60.0)
    assert frames.length == 60
    assert frames.decoded_frames.tolist() == [shown(tl.starts, f, 60.0) for f in range(1, 61)]
    assert [frames.editor(i) for i in range(25)] == [1 + int(np.argmax(frames.decoded_frames == i)) for i in range(25)]
    assert frames.decoded(frames.editor(7)) == 7


def test_frames_count_from_the_region_wins():
    frames = FrameMap.for_video(Timeline.uniform(20, 25.0), 25.0, frames_count=21)  # round(duration * F) = n + 1
    assert frames.length == 21 and frames.decoded(21) == 19


# ---------------------------------------------------------------- unusual files


def test_variable_frame_rate_clip(tmp_path):
    pts = vfr_pts(60, seed=1)
    with VideoFileSource(write_clip(tmp_path / "vfr.mp4", pts, MS), cache_frames=0) as src:
        frames = FrameMap.for_video(src.timeline, 30.0)
        assert frames.length == math.floor(src.timeline.end * 30 + 0.5)
        starts = [p / 1000 for p in pts]
        expected = [shown(starts, f, 30.0) for f in range(1, frames.length + 1)]
        assert frames.decoded_frames.tolist() == expected
        assert expected != [min(f - 1, 59) for f in range(1, frames.length + 1)]  # not frame - 1
        for f in (1, 17, frames.length):
            assert frame_index(src.get(frames.decoded(f))) == expected[f - 1]
        for i in set(expected):
            assert frames.decoded(frames.editor(i)) == i


def test_start_time_not_zero(tmp_path):
    """Frames stamped from 1.0 s: the editor's first 30 frames (t < 1 s) show the first decoded frame."""
    pts = [30 + i for i in range(45)]
    with VideoFileSource(write_clip(tmp_path / "late.mp4", pts, Fraction(1, 30)), cache_frames=0) as src:
        frames = FrameMap.for_video(src.timeline, 30.0)
        assert frames.length == 75  # round(2.5 s * 30)
        assert frames.decoded_frames[:31].tolist() == [0] * 31 and frames.decoded(32) == 1
        assert frames.decoded(75) == 44 and frames.editor(0) == 1 and frames.editor(1) == 32
        assert frames.decoded_at(0.2) == 0 and frames.decoded_at(1.5) == 15


def test_timestamps_backwards_and_repeated(tmp_path):
    """Packets 0 1 2 2 5 3 4 6 (x 40 ms, decode order, no frame count): 7 distinct times, one frame each."""
    path = write_mjpeg_mkv(tmp_path / "messy.mkv", [0, 1, 2, 2, 5, 3, 4, 6], [0, 1, 2, 2, 3, 3, 4, 6])
    with VideoFileSource(path, cache_frames=0) as src:
        frames = FrameMap.for_video(src.timeline, 25.0)
        assert frames.length == 7 and frames.decoded_frames.tolist() == list(range(7))


def test_frames_past_the_end_and_before_the_start():
    frames = FrameMap.for_video(Timeline.uniform(20, 25.0), 25.0)  # 0.8 s
    assert frames.decoded(21) == frames.decoded(33) == 19  # within 0.5 s of the end: the last frame
    for bad in (0, -3, 34, 10**9):
        with pytest.raises(FrameTimeError):
            frames.decoded(bad)
    assert frames.decoded_at(0.8) == 19
    for bad in (-0.001, 1.31, math.nan):
        with pytest.raises(FrameTimeError):
            frames.decoded_at(bad)


# ---------------------------------------------------------------- through the HTTP backend

CLIPS = {  # name: (timestamps, time base, rotation, <Video framerate> attribute, editor keyframe)
    "file30_config24": (list(range(45)), Fraction(1, 30), 0, None, 25),
    "vfr": (vfr_pts(40, seed=2), MS, 0, "30", 20),
    "late_start": ([30 + i for i in range(45)], Fraction(1, 30), 0, "$fps", 40),
    "rotated": (list(range(20)), Fraction(1, 30), -90, "30", 5),
}
CONFIG = ('<View><Labels name="videoLabels" toName="video"><Label value="Car"/><Label value="Red"/></Labels>'
          '<Video name="video" value="$video"{}/><VideoRectangle name="box" toName="video"/></View>')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clips")
    with FakeLabelStudio() as server:
        server.timelines = {}
        for name, (pts, base, rotation, _, _) in CLIPS.items():
            path = write_clip(tmp / f"{name}.mp4", pts, base, size=(64, 96), rotation=rotation)
            server.add(f"/data/upload/9/{name}.mp4", path.read_bytes())
            with VideoFileSource(path) as src:
                server.timelines[name] = (src.timeline, src.frame_size)
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory, served):
    app = create_app(backend_settings(tmp_path_factory.mktemp("backend"), served.url, interactive_budget_s=60.0))
    yield app
    app.extensions["sam2_backend"].close()


def body_for(name: str, frame: int, framerate: str | None = None, task_id: int = 900) -> dict:
    pts, base, rotation, attribute, _ = CLIPS[name]
    attribute = framerate if framerate is not None else attribute
    body = captured("predict_interactive")
    body["label_config"] = CONFIG.format("" if attribute is None else f' framerate="{attribute}"')
    task = body["tasks"][0]
    task["id"], task["data"] = task_id, {"video": f"/data/upload/9/{name}.mp4", "fps": 30}
    region = body["params"]["context"]["result"][0]
    del region["value"]["framesCount"], region["value"]["duration"]
    region["value"]["labels"] = ["Car", "Red"]
    region["value"]["sequence"] = [{"frame": frame, "enabled": True, "rotation": 0, "x": 50.0, "y": 25.0,
                                    "width": 25.0, "height": 50.0}]
    return body


@pytest.fixture
def prompts_seen(monkeypatch):
    """(object, decoded frame, pixel box) of every box prompt the backend tracks."""
    from backend import tracking
    seen = []
    original = tracking.Tracker.set_prompts

    def spy(self, objects, *args, **kwargs):
        seen.extend((o.key, fp.frame, fp.box) for o in objects for fp in o.frames if fp.box is not None)
        return original(self, objects, *args, **kwargs)

    monkeypatch.setattr(tracking.Tracker, "set_prompts", spy)
    return seen


@pytest.mark.parametrize("name", list(CLIPS))
def test_keyframe_lands_on_the_frame_the_editor_shows(app, served, prompts_seen, name):
    pts, base, rotation, attribute, frame = CLIPS[name]
    fps = 24.0 if attribute is None else 30.0
    timeline, (height, width) = served.timelines[name]
    answer = app.test_client().post("/predict", json=body_for(name, frame, task_id=900 + len(name)))
    assert answer.status_code == 200, answer.get_json()
    starts = [p * float(base) for p in pts]
    expected = shown(starts, frame, fps)
    assert expected != frame - 1 or name == "rotated"
    assert (width, height) == ((64, 96) if rotation else (96, 64))  # the frame as shown: rotated
    [(key, decoded, box)] = prompts_seen
    assert key == "userbox1" and decoded == expected
    assert box == pytest.approx((0.5 * width, 0.25 * height, 0.75 * width, 0.75 * height))
    [region] = answer.get_json()["results"][0]["result"]
    value = region["value"]
    assert value["framesCount"] == math.floor(timeline.end * fps + 0.5) and value["labels"] == ["Car", "Red"]
    user = [k for k in value["sequence"] if k["frame"] == frame]
    assert user and user[0]["x"] == 50.0 and user[0]["width"] == 25.0
    assert all(1 <= k["frame"] <= value["framesCount"] for k in value["sequence"])


def test_keyframe_one_past_the_end_is_clamped(app, prompts_seen):
    body = body_for("file30_config24", 37, task_id=950)  # 1.5 s at 24: the editor's length is 36
    answer = app.test_client().post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    assert prompts_seen[0][1] == 44  # the last decoded frame


@pytest.mark.parametrize("framerate, frame, words", [
    ("-5", 1, ["unsupported label config", "framerate", "negative"]),
    ("30", 0, ["frame must be in 1..framesCount"]),
    ("30", 80, ["beyond the video", "ends at 1.500 s"]),
])
def test_bad_framerates_and_frames(app, framerate, frame, words):
    answer = app.test_client().post("/predict", json=body_for("file30_config24", frame, framerate, task_id=960))
    assert answer.status_code == 422, answer.get_data(as_text=True)
    message = answer.get_json()["error"]
    assert all(w in message for w in words), message
    assert app.test_client().get("/health").status_code == 200


def test_non_numeric_framerate_reads_as_24(app, prompts_seen):
    answer = app.test_client().post("/predict", json=body_for("file30_config24", 25, "fast", task_id=970))
    assert answer.status_code == 200 and prompts_seen[0][1] == 30  # as with the default 24
    assert copy.deepcopy(answer.get_json())["results"][0]["result"][0]["value"]["framesCount"] == 36
