"""The interactive event protocol (backend/events.py) through Flask's test client.

Payloads in tests/data/events/ are built from the shapes of Label Studio's reference backend
(HumanSignal/label-studio-ml-backend, examples/segment_anything_video_interactive: README.md and model.py);
the clip is the 64x48, 20-frame, 25 fps test video of the other backend tests, served by a fake Label Studio.
The model has random weights, so masks are arbitrary: the tests compare every mask sent with the session's
own mask of that object on that frame, and check frames, order, bounds and errors.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.app import create_app
from tests.backend_helpers import FPS, H, N_FRAMES, VIDEO_PATH, W, backend_settings, h264_bytes
from tests.fake_label_studio import FakeLabelStudio

EVENTS_DIR = Path(__file__).resolve().parent / "data" / "events"


def event(name: str, task_id: int = 1, **context) -> dict:
    """A recorded-style /predict body for `name` (file in tests/data/events), for task `task_id`."""
    body = copy.deepcopy(json.loads((EVENTS_DIR / f"{name}.json").read_text()))
    body["tasks"][0]["id"] = task_id
    body["params"]["context"].update(context)
    return body


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    with FakeLabelStudio() as server:
        server.add(VIDEO_PATH, h264_bytes(tmp_path_factory.mktemp("media")))
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory, ls):
    app = create_app(backend_settings(tmp_path_factory.mktemp("backend"), ls.url))
    yield app
    app.extensions["sam2_backend"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture
def backend(app):
    """The app's SAM2Backend; event limits changed by a test are restored after it."""
    backend = app.extensions["sam2_backend"]
    limits = backend.events.limits
    yield backend
    backend.events.limits = limits


def limit(backend, **changes) -> None:
    backend.events.limits = dataclasses.replace(backend.events.limits, **changes)


def post(client, body: dict) -> dict:
    """The single result item of an event answer (None when the result is empty)."""
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["model_version"] == "backend_test" and len(answer["results"]) == 1
    items = answer["results"][0]["result"]
    assert len(items) <= 1
    return items[0] if items else None


def decode(url: str) -> np.ndarray:
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.mode == "L" and image.size == (W, H)
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels == 255


@contextlib.contextmanager
def tracker_of(backend, task_id: int):
    """The task's video Tracker, holding its session (as a request would)."""
    def missing():
        raise AssertionError(f"task {task_id} has no video session")

    with backend.store.use(("video", task_id, VIDEO_PATH), missing) as entry:
        yield entry.value


def session_mask(backend, task_id: int, frame: int, obj: str) -> np.ndarray:
    with tracker_of(backend, task_id) as tracker:
        result = tracker.result(frame)  # the compact store: the session drops tracked logits
        return result.masks[result.obj_ids.index(obj)]


def assert_sent_mask(url: str, backend, task_id: int, frame: int, obj: str) -> None:
    """The PNG sent is the session's mask of `obj` on `frame`, and shows something (neither empty nor full)."""
    mask = decode(url)
    np.testing.assert_array_equal(mask, session_mask(backend, task_id, frame, obj))
    assert 0 < mask.sum() < mask.size, f"object {obj} on frame {frame}: {mask.sum()} of {mask.size} pixels"


def poll(client, task_id: int, session_id: str, timeout: float = 30.0) -> tuple[list[dict], dict]:
    """track_progress until done: (all frame entries in delivery order, the last value)."""
    entries, started = [], time.monotonic()
    while True:
        value = post(client, event("track_progress", task_id, session_id=session_id))["value"]
        entries += value["frames"]
        if value["done"]:
            return entries, value
        assert time.monotonic() - started < timeout, "track did not finish"


def check_entries(backend, task_id: int, entries: list[dict], frames: range, objects: list[str]) -> None:
    """Every entry is an object's mask as the session holds it; every non-empty mask in `frames` was sent once."""
    sent = [(e["frame"], e["object_id"]) for e in entries]
    assert len(sent) == len(set(sent))
    for e in entries:
        assert e["time_ms"] == pytest.approx(e["frame"] * 1000 / FPS) and (e["width"], e["height"]) == (W, H)
        assert_sent_mask(e["imageDataURL"], backend, task_id, e["frame"], e["object_id"])
    seen = {(f, o) for f in frames for o in objects if session_mask(backend, task_id, f, o).any()}
    assert seen, "no non-empty mask in range: the check would prove nothing"
    assert set(sent) == seen
    assert {o for _, o in sent} == set(objects), f"objects without any mask sent: {set(objects) - {o for _, o in sent}}"


# ---------------------------------------------------------------- events


def test_capabilities(client):
    item = post(client, event("capabilities"))
    assert item["type"] == "capabilities"
    value = item["value"]
    assert value["prompts"] == ["point", "box"] and value["multi_object"] is True
    assert {"tag": "VideoRectangle", "output": "bbox", "features": ["track"]} in value["targets"]
    assert set(value["events"]) == {"capabilities", "prewarm", "predict", "track", "track_progress",
                                    "track_cancel", "release"}
    assert value["model_info"]["version"] == "backend_test"
    no_task = {"params": {"context": {"event": "capabilities"}}}  # task-agnostic: no task, no label config
    assert post(client, no_task)["value"] == value


def test_predict_click_and_box(client, backend):
    click = post(client, event("predict_click", task_id=2))
    assert click["type"] == "bitmask" and (click["from_name"], click["to_name"]) == ("box", "video")
    value = click["value"]
    assert value["frame"] == 7 and value["object_id"] == "0"  # floor(282 ms * 25 fps) = 7 (0-based)
    assert (value["width"], value["height"]) == (W, H) and value["time_ms"] == pytest.approx(280.0)
    assert_sent_mask(value["imageDataURL"], backend, 2, 7, "0")

    box = post(client, event("predict_box", task_id=2, object_id="car-2"))
    assert box["value"]["frame"] == 2 and box["value"]["object_id"] == "car-2"
    assert_sent_mask(box["value"]["imageDataURL"], backend, 2, 2, "car-2")
    with tracker_of(backend, 2) as tracker:
        assert [o.key for o in tracker.objects] == ["0", "car-2"]
        assert tracker.objects[1].frames[0].box == pytest.approx((12.0, 16.0, 30.0, 34.0), abs=0.01)

    # the frame's prompts removed: no mask, the object is gone
    assert post(client, event("predict_box", task_id=2, object_id="car-2", result=[])) is None
    with tracker_of(backend, 2) as tracker:
        assert [o.key for o in tracker.objects] == ["0"]


def test_click_without_event_is_a_predict(client, backend):
    """The newest client's click carries time_ms/frame and no `event`: served as predict, not the classic
    protocol's empty answer."""
    body = event("predict_click", task_id=12, time_ms=402.0)
    del body["params"]["context"]["event"]
    click = post(client, body)
    assert click is not None and click["type"] == "bitmask" and click["value"]["frame"] == 10
    assert_sent_mask(click["value"]["imageDataURL"], backend, 12, 10, "0")
    body = event("predict_click", task_id=12, time_ms=None, frame=4)
    del body["params"]["context"]["event"]
    assert post(client, body)["value"]["frame"] == 3
    classic = event("predict_click", task_id=12)  # no event, no frame, no time: the classic protocol
    for key in ("event", "frame", "time_ms"):
        del classic["params"]["context"][key]
    answer = client.post("/predict", json=classic)
    assert answer.status_code == 200 and answer.get_json()["results"][0]["result"] == []


def test_prewarm_embeds_frames(client, backend):
    ack = post(client, event("prewarm", task_id=3))
    assert ack["type"] == "prewarm_ack" and ack["value"]["status"] == "ok" and ack["value"]["frame_count"] == N_FRAMES
    assert sorted(ack["value"]["cached"] + ack["value"]["pending"]) == [0, 1, 2, 3, 4, 5]  # frame 0 and 5 after
    started = time.monotonic()
    while ack["value"]["pending"]:  # prewarming runs in the background: ask again until all are cached
        assert time.monotonic() - started < 20
        time.sleep(0.05)
        ack = post(client, event("prewarm", task_id=3))
    assert ack["value"]["cached"] == [0, 1, 2, 3, 4, 5]
    with tracker_of(backend, 3) as tracker:
        features = tracker.session.features
        misses = features.misses
    post(client, event("predict_click", task_id=3, time_ms=122.0))  # frame 3: prewarmed, no image encoder run
    assert features.misses == misses
    post(client, event("predict_click", task_id=3, time_ms=402.0, object_id="b"))  # frame 10 was not prewarmed
    assert features.misses == misses + 1

    both = post(client, event("prewarm", task_id=3, time_ms=402.0, window=1000, direction="both"))["value"]
    cap = backend.events.limits.max_prewarm_window
    assert sorted(both["cached"] + both["pending"]) == list(range(max(0, 10 - cap), min(N_FRAMES, 11 + cap)))


def test_track_until_done(client, backend):
    post(client, event("predict_click", task_id=4, time_ms=402.0))  # frame 10
    started = post(client, event("track", task_id=4))
    assert started["type"] == "track_started"
    value = started["value"]
    assert value["total_frames"] == N_FRAMES and value["start_frame"] == 10 and value["direction"] == "both"
    assert value["fps"] == pytest.approx(FPS) and value["duration_ms"] == pytest.approx(N_FRAMES * 1000 / FPS)
    entries, last = poll(client, 4, value["session_id"])
    assert last["produced"] == last["total"] == N_FRAMES and last["error"] is None and not last["cancelled"]
    check_entries(backend, 4, entries, range(N_FRAMES), ["0"])
    forward = [e["frame"] for e in entries if e["frame"] >= 10]
    backward = [e["frame"] for e in entries if e["frame"] < 10]
    assert forward == sorted(forward) and backward == sorted(backward, reverse=True)
    # a finished track is forgotten once delivered
    gone = post(client, event("track_progress", task_id=4, session_id=value["session_id"]))["value"]
    assert gone["done"] is True and gone["error"] == "session not found"


@pytest.mark.parametrize("context, frames", [
    ({"direction": "forward", "max_frames": 4, "time_ms": 200.0}, range(5, 10)),
    ({"direction": "backward", "max_duration_ms": 80, "time_ms": 200.0}, range(3, 6)),  # 80 ms = 2 frames
    ({"direction": "forward", "time_ms": 760.0}, range(19, 20)),  # the last frame
])
def test_track_one_direction(client, backend, context, frames):
    task_id = 41  # one session for all cases: frames embedded once
    post(client, event("predict_box", task_id=task_id, time_ms=context["time_ms"]))
    value = post(client, event("track", task_id=task_id, **context))["value"]
    assert value["total_frames"] == len(frames)
    entries, last = poll(client, task_id, value["session_id"])
    assert last["produced"] == len(frames)
    check_entries(backend, task_id, entries, frames, ["0"])
    order = [e["frame"] for e in entries]
    assert order == sorted(order, reverse=context["direction"] == "backward")


def test_polls_beyond_the_wait_slots_do_not_wait(client, backend, monkeypatch):
    """THREADS - 1 polls may wait (long poll); with every slot taken a poll answers with what is buffered, so
    polls never hold all request threads."""
    from backend import events
    waits = []
    original = events.TrackJob.drain
    monkeypatch.setattr(events.TrackJob, "drain", lambda job, wait=True: waits.append(wait) or original(job, wait))
    assert backend.settings.threads == 4 and backend.events._waiters._initial_value == 3
    post(client, event("predict_box", task_id=43, time_ms=200.0))
    value = post(client, event("track", task_id=43, direction="forward", max_frames=3, time_ms=200.0))["value"]
    taken = [backend.events._waiters.acquire(blocking=False) for _ in range(3)]
    try:
        assert all(taken) and not backend.events._waiters.acquire(blocking=False)
        post(client, event("track_progress", task_id=43, session_id=value["session_id"]))
    finally:
        for _ in taken:
            backend.events._waiters.release()
    entries, last = poll(client, 43, value["session_id"])
    assert waits[0] is False and all(waits[1:]) and last["done"]


def test_track_with_its_own_prompts(client, backend):
    click = event("predict_click")["params"]["context"]["result"]  # the reference client sends the prompts along
    value = post(client, event("track", task_id=42, result=click, time_ms=282.0, direction="forward",
                               max_frames=3))["value"]
    assert value["object_ids"] == ["0"] and value["start_frame"] == 7 and value["total_frames"] == 4
    entries, last = poll(client, 42, value["session_id"])
    assert last["produced"] == 4
    check_entries(backend, 42, entries, range(7, 11), ["0"])
    with tracker_of(backend, 42) as tracker:
        assert tracker.objects[0].frames[0].points == [pytest.approx((26.0, 25.0), abs=0.01),
                                                        pytest.approx((4.99, 4.99), abs=0.01)]
        assert tracker.objects[0].frames[0].point_labels == [1, 0]


def test_track_cancel_stops_early(client, backend):
    limit(backend, track_buffer=2)  # the track may run 2 frames ahead of its poller
    post(client, event("predict_click", task_id=5, time_ms=402.0))
    session_id = post(client, event("track", task_id=5))["value"]["session_id"]
    job = backend.events._jobs[session_id]
    started = time.monotonic()
    while job.produced < 2:
        assert time.monotonic() - started < 10
        time.sleep(0.01)
    time.sleep(0.2)
    assert job.produced == 2 and job.thread.is_alive()  # paused: nobody polled
    ack = post(client, event("track_cancel", task_id=5, session_id=session_id))
    assert ack["type"] == "track_cancel_ack"
    assert ack["value"] == {"status": "cancelled", "session_id": session_id, "produced": 2, "total": N_FRAMES,
                            "stopped": True}
    with tracker_of(backend, 5) as tracker:
        assert len(tracker.progress.covered()) == 2  # frames 10 and 11 tracked, no more
    gone = post(client, event("track_progress", task_id=5, session_id=session_id))["value"]
    assert gone["done"] is True and gone["error"] == "session not found"
    again = post(client, event("track_cancel", task_id=5, session_id=session_id))["value"]
    assert again == {"status": "not_found", "session_id": session_id}


def test_new_track_or_prompt_supersedes_the_running_one(client, backend):
    limit(backend, track_buffer=2)
    post(client, event("predict_click", task_id=6, time_ms=402.0))
    first = post(client, event("track", task_id=6))["value"]["session_id"]
    second = post(client, event("track", task_id=6, direction="forward"))["value"]["session_id"]
    entries, last = poll(client, 6, first)
    assert last["cancelled"] is True and last["produced"] < N_FRAMES
    post(client, event("predict_click", task_id=6, time_ms=82.0))  # changed prompts end the second track too
    entries, last = poll(client, 6, second)
    assert last["cancelled"] is True and last["produced"] < 10


def test_release_frees_the_session(client, backend):
    limit(backend, track_buffer=2)
    post(client, event("predict_click", task_id=7, time_ms=402.0))
    session_id = post(client, event("track", task_id=7))["value"]["session_id"]
    job = backend.events._jobs[session_id]
    ack = post(client, event("release", task_id=7))
    assert ack["type"] == "release_ack" and ack["value"] == {"status": "released", "released": True}
    job.thread.join(5)
    assert not job.thread.is_alive() and job.cancelled
    assert ("video", 7, VIDEO_PATH) not in backend.store._entries
    gone = post(client, event("track_progress", task_id=7, session_id=session_id))["value"]
    assert gone["error"] == "session not found"
    assert post(client, event("release", task_id=7))["value"]["released"] is False

    # a session released under a running track (TTL or budget eviction) ends the track with an error
    post(client, event("predict_click", task_id=7, time_ms=402.0))
    session_id = post(client, event("track", task_id=7))["value"]["session_id"]
    job = backend.events._jobs[session_id]
    while job.produced < 2:
        time.sleep(0.01)
    backend.store.release(("video", 7, VIDEO_PATH))
    entries, last = poll(client, 7, session_id)
    assert len(entries) <= 2 and last["produced"] < N_FRAMES and "released" in last["error"]


def test_several_objects(client, backend):
    a = post(client, event("predict_click", task_id=8, time_ms=122.0, object_id="a"))["value"]
    assert_sent_mask(a["imageDataURL"], backend, 8, 3, "a")
    b = post(client, event("predict_box", task_id=8, time_ms=None, frame=13, object_id="b"))["value"]
    assert b["frame"] == 12
    assert_sent_mask(b["imageDataURL"], backend, 8, 12, "b")
    post(client, event("predict_click", task_id=8, time_ms=602.0, object_id="a"))  # a second keyframe of "a"
    post(client, event("predict_click", task_id=8, time_ms=202.0))  # implicit object "0" on frame 5 ...
    post(client, event("predict_box", task_id=8, time_ms=362.0))  # ... moves to frame 9 (one keyframe)
    with tracker_of(backend, 8) as tracker:
        assert {o.key: [fp.frame for fp in o.frames] for o in tracker.objects} == {"a": [3, 15], "b": [12], "0": [9]}

    value = post(client, event("track", task_id=8, time_ms=122.0, object_id="a"))["value"]
    assert value["object_ids"] == ["a", "b", "0"] and value["start_frame"] == 3
    entries, last = poll(client, 8, value["session_id"])
    assert last["produced"] == N_FRAMES
    check_entries(backend, 8, entries, range(N_FRAMES), ["a", "b", "0"])


def test_long_poll_blocks_nothing_else(client, backend):
    limit(backend, track_buffer=2, progress_wait_s=5.0)
    post(client, event("predict_click", task_id=9, time_ms=402.0))
    session_id = post(client, event("track", task_id=9))["value"]["session_id"]
    job = backend.events._jobs[session_id]
    while job.produced < 2:
        time.sleep(0.01)
    answers = []
    with tracker_of(backend, 9):  # the session is busy: the track cannot go on, its poller must wait
        started = time.monotonic()
        assert post(client, event("track_progress", task_id=9, session_id=session_id))["value"]["produced"] == 2
        assert time.monotonic() - started < 1  # frames were waiting: answered at once
        waiting = threading.Thread(target=lambda: answers.append(
            post(client, event("track_progress", task_id=9, session_id=session_id))["value"]))
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()  # long poll in progress ...
        started = time.monotonic()
        assert post(client, event("capabilities"))["type"] == "capabilities"  # ... other requests are served
        assert post(client, event("predict_click", task_id=10))["type"] == "bitmask"
        assert time.monotonic() - started < 3 and waiting.is_alive()
    waiting.join(10)
    assert answers and answers[0]["produced"] > 2 and not answers[0]["error"]  # the session free: tracking went on
    post(client, event("track_cancel", task_id=9, session_id=session_id))


# ---------------------------------------------------------------- bad events

IMAGE_XML = ('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image" smart="true">'
             '<Label value="Car"/></KeyPointLabels><BitmaskLabels name="mask" toName="image"/></View>')


@pytest.mark.parametrize("name, context, status, words", [
    ("predict_click", {"event": "segment"}, 400, ['unknown event "segment"', "track_progress"]),
    ("predict_click", {"event": 7}, 400, ['"params.context.event" must be str']),
    ("track_progress", {"session_id": None}, 400, ['missing field "params.context.session_id"']),
    ("track_cancel", {"session_id": ""}, 400, ['"params.context.session_id"']),
    ("predict_click", {"time_ms": 5000.0}, 422, ["time_ms: 5 s is beyond the video: it ends at 0.800 s"]),
    ("predict_click", {"time_ms": 1400.0}, 422, ["beyond the video"]),  # more than 0.5 s after the end
    ("predict_click", {"time_ms": None, "frame": 40}, 422, ["frame 40 (1.560 s) is beyond the video",
                                                            "20 frames at 25 fps"]),
    ("predict_click", {"time_ms": None, "frame": 0}, 422, ["frame 0 is before the first frame"]),
    ("predict_click", {"time_ms": "soon"}, 400, ['"params.context.time_ms" must be a number']),
    ("predict_click", {"result": [{"type": "keypointlabels", "value": {"x": 150.0, "y": 10.0}}]}, 422,
     ["bad prompt", "outside the 64x48 frame"]),
    ("predict_box", {"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5}}] * 2},
     422, ["one box per object and frame"]),
    ("predict_click", {"result": "click"}, 400, ['"params.context.result" must be list']),
    ("predict_click", {"object_id": ["a"]}, 400, ['"params.context.object_id"']),
    ("track", {"direction": "sideways"}, 400, ['"params.context.direction" must be one of forward, backward, both']),
    ("track", {"max_frames": -1}, 400, ['"params.context.max_frames" must be an integer >= 0']),
    ("track", {"max_duration_ms": "long"}, 400, ['"params.context.max_duration_ms" must be a number']),
    ("track", {}, 422, ["nothing to track"]),
    ("prewarm", {"window": 2.5}, 400, ['"params.context.window" must be an integer']),
])
def test_bad_events(client, name, context, status, words):
    response = client.post("/predict", json=event(name, task_id=99, **context))
    assert response.status_code == status, response.get_json()
    message = response.get_json()["error"]
    for w in words:
        assert w in message, message
    assert client.get("/health").get_json()["status"] == "UP"


def test_edge_answers(client):
    # the end (currentTime == duration), and editor frames just past it (a longer audio track), show the last frame
    assert post(client, event("predict_click", task_id=98, time_ms=800.0))["value"]["frame"] == N_FRAMES - 1
    assert post(client, event("predict_click", task_id=98, time_ms=1000.0))["value"]["frame"] == N_FRAMES - 1
    assert post(client, event("predict_click", task_id=98, time_ms=None, frame=25))["value"]["frame"] == N_FRAMES - 1
    # an unknown session answers the reference's "not found" shape
    value = post(client, event("track_progress", task_id=98, session_id="nope"))["value"]
    assert value == {"session_id": "nope", "frames": [], "error": "session not found", "done": True}
    # events serve video projects only
    body = event("prewarm", task_id=98)
    body["label_config"], body["tasks"][0]["data"] = IMAGE_XML, {"image": "/data/upload/3/image.png"}
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and "video projects" in response.get_json()["error"]
