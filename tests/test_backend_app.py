"""The HTTP backend through Flask's test client, on Label Studio 1.23.2's captured bodies.

Media come from a fake Label Studio on 127.0.0.1 (token required); the model is a small random-weight SAM 2
loaded from a checkpoint the tests write. Random weights make the masks arbitrary, so the tests check the
protocol, the structure of the results, what must hold whatever the masks (user keyframes and user masks
come back unchanged, frames and times match the video), and the error answers.
"""
from __future__ import annotations

import copy
import socket
import threading

import numpy as np
import pytest

from backend import compact
from backend.app import create_app
from backend.prompts import decode_bitmask, decode_brush
from backend.results import AUTO_KEY, mask_to_bitmask, mask_to_box, mask_to_brush, sequence_to_boxes
from config.settings import Settings
from tests.backend_helpers import (
    FPS, H, N_FRAMES, SEQ_XML, VIDEO_PATH, W, backend_settings, captured, clip_frames, h264_bytes, png_bytes,
    small_model,
)
from tests.fake_label_studio import FakeLabelStudio

IMAGE_XML = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Car"/></KeyPointLabels>
  <{out} name="mask" toName="image"><Label value="Car"/></{out}>
</View>"""
SEQ_LEN = 6


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media")
    with FakeLabelStudio() as server:
        server.add(VIDEO_PATH, h264_bytes(tmp))
        server.add("/data/upload/1/corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 3000)
        for i, frame in enumerate(clip_frames(SEQ_LEN)):
            server.add(f"/data/upload/2/f{i}.png", png_bytes(frame))
        server.add("/data/upload/3/image.png", png_bytes(clip_frames(1)[0]))
        yield server


@pytest.fixture(scope="module")
def settings(tmp_path_factory, ls):
    return backend_settings(tmp_path_factory.mktemp("backend"), ls.url, interactive_budget_s=60.0,
                            predict_budget_s=60.0)


@pytest.fixture(scope="module")
def client(settings):
    app = create_app(settings)
    yield app.test_client()
    app.extensions["sam2_backend"].close()


def _ok(response) -> dict:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    message = response.get_json()["error"]
    for w in words:
        assert w in message, message
    return message


def _still_serving(client):
    assert _ok(client.get("/health"))["status"] == "UP"


# ---------------------------------------------------------------- simple routes


def test_health_versions_metrics_setup_webhook(client):
    health = _ok(client.get("/health"))
    assert health["status"] == "UP" and health["model_version"] == "backend_test"
    assert _ok(client.get("/versions"))["versions"] == ["backend_test"]
    assert _ok(client.post("/setup", json=captured("setup"))) == {"model_version": "backend_test"}
    metrics = _ok(client.get("/metrics"))
    assert {"sessions", "session_bytes", "media_cache_bytes", "counters"} <= set(metrics)
    created = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1, "result": []},
               "project": {"id": 1, "title": "SAM2 video test"}}
    assert _ok(client.post("/webhook", json=created))["status"] == "ok"
    assert _ok(client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}))["trained"] is False
    _error(client.post("/webhook", json={"project": {}}), 400, '"action"')
    bad_setup = dict(captured("setup"), schema="<View><Text name='t' value='$t'/></View>")
    _error(client.post("/setup", json=bad_setup), 422, "Supported label configs")


@pytest.mark.parametrize("body, words", [
    (b"{not json", ["not valid JSON"]),
    (b"", ["empty request body"]),
    (b"[1, 2]", ["must be a JSON object"]),
    (b'{"label_config": "<View/>"}', ['missing field "tasks"']),
    (b'{"tasks": "x"}', ['"tasks" must be list']),
    (b'{"tasks": [{"id": 1}]}', ['"tasks[0].data"']),
    (b'{"tasks": [{"id": 1, "data": {}}], "params": {"context": [1]}}', ['"params.context" must be dict']),
    (b'{"tasks": [{"id": 1, "data": {}}], "project": "99.1"}', ['"label_config" is missing']),
])
def test_malformed_requests(client, body, words):
    _error(client.post("/predict", data=body, content_type="application/json"), 400, *words)
    _still_serving(client)


def test_unknown_routes_and_methods(client):
    _error(client.get("/nothing"), 404, "Not Found")
    _error(client.get("/predict"), 405, "Method Not Allowed")


# ---------------------------------------------------------------- video


def _check_video_region(region: dict, user_item: dict, tracked: bool = True) -> None:
    value = region["value"]
    assert region["id"] == "userbox1" and region["type"] == "videorectangle"
    assert (region["from_name"], region["to_name"]) == ("box", "video")
    assert value["framesCount"] == N_FRAMES and value["duration"] == pytest.approx(N_FRAMES / FPS)
    assert value["labels"] == ["Car"]
    frames = [k["frame"] for k in value["sequence"]]
    assert frames == sorted(frames) and all(1 <= f <= N_FRAMES for f in frames)
    user = [k for k in value["sequence"] if AUTO_KEY not in k]
    assert len(user) == 1 and {k: user[0][k] for k in user_item if k != "enabled"} == \
        {k: v for k, v in user_item.items() if k != "enabled"}  # the user's keyframe, as drawn
    for k in value["sequence"]:
        assert k["time"] == pytest.approx((k["frame"] - 1) / FPS)
    if tracked:
        assert any(AUTO_KEY in k for k in value["sequence"]), "no computed keyframe: the track never left the prompt"


def test_interactive_video_on_captured_payload(client, ls):
    body = captured("predict_interactive")
    answer = _ok(client.post("/predict", json=body))
    assert answer["model_version"] == "backend_test" and len(answer["results"]) == 1
    [region] = answer["results"][0]["result"]
    _check_video_region(region, body["params"]["context"]["result"][0]["value"]["sequence"][0])
    # the same prompts again: the session is reused, nothing is downloaded or tracked again
    downloads = _ok(client.get("/metrics"))["media_downloads"]
    again = _ok(client.post("/predict", json=body))
    assert again["results"] == answer["results"]
    assert _ok(client.get("/metrics"))["media_downloads"] == downloads


def _record_tracking(session) -> list[tuple[int, tuple]]:
    """Record (frame, session object ids) of every frame `session` propagates from now on."""
    seen = []
    propagate = session.propagate

    def spy(*args, **kwargs):
        for result in propagate(*args, **kwargs):
            seen.append((result.frame_idx, tuple(result.obj_ids)))
            yield result

    session.propagate = spy
    return seen


def test_two_annotators_and_a_correction_on_one_video_task(settings):
    """Annotators 1 and 2 click on the same video task (their drafts name them). Neither resets the other's
    object; annotator 1's correction keyframe on frame 12 re-tracks only frames 11.. (decoded), of that object;
    the answers hold each annotator's own region."""
    app = create_app(settings)
    client = app.test_client()

    def click(user: int, region: dict) -> dict:
        body = captured("predict_interactive")
        body["tasks"][0]["id"] = 60
        body["tasks"][0]["drafts"] = [{"id": user, "user": f"a{user}@example.com", "result": [region],
                                       "created_username": f" a{user}@example.com, {user}",
                                       "created_at": "2026-12-04T06:00:00Z"}]
        body["params"]["context"]["result"] = [region]
        [answer] = _ok(client.post("/predict", json=body))["results"][0]["result"]
        assert answer["id"] == region["id"]
        return answer

    first = captured("predict_interactive")["params"]["context"]["result"][0]
    second = copy.deepcopy(first)
    second["id"] = "other1"
    second["value"]["sequence"][0].update(x=5.0, y=5.0, width=20.0, height=20.0)
    click(1, first)
    [entry] = app.extensions["sam2_backend"].store._entries.values()
    tracker = entry.value
    tracked = _record_tracking(tracker.session)
    click(2, second)
    assert {i for _, ids in tracked for i in ids} == set(tracker.state("user:2").passes[0].obj_ids)
    assert [f for f, _ in tracked] == list(range(N_FRAMES))  # all of it, forward from its keyframe (frame 1)
    assert [o.key for o in tracker.state("user:1").objects] == ["userbox1"]
    before = {f: tracker.result(f, "user:1").masks.copy() for f in range(N_FRAMES)}

    corrected = copy.deepcopy(first)
    corrected["value"]["sequence"].append(dict(first["value"]["sequence"][0], frame=12, time=11 / FPS, x=40.0))
    tracked.clear()
    answer = click(1, corrected)
    assert [f for f, _ in tracked] == list(range(11, N_FRAMES))
    assert len({ids for _, ids in tracked}) == 1 and tracked[0][1] != tracker.state("user:2").passes[0].obj_ids
    for f in range(11):
        np.testing.assert_array_equal(tracker.result(f, "user:1").masks, before[f])
    assert [k["frame"] for k in answer["value"]["sequence"] if AUTO_KEY not in k] == [1, 12]
    assert [o.key for o in tracker.state("user:2").objects] == ["other1"]
    assert tracker.frames("user:2") == list(range(N_FRAMES))
    app.extensions["sam2_backend"].close()


def test_a_video_answer_reads_the_boxes_kept_when_tracked(settings, monkeypatch):
    """Serving a track decodes no stored mask: each frame's box was kept when the frame was tracked. The box
    Label Studio draws on every frame is within BOX_TOLERANCE_PX of the stored mask's box, before and after a
    correction re-tracks part of the object."""
    app = create_app(settings)
    client = app.test_client()
    decoded = []
    decode_rle = compact.decode_rle
    monkeypatch.setattr(compact, "decode_rle", lambda rle: decoded.append(rle) or decode_rle(rle))
    body = captured("predict_interactive")
    body["tasks"][0]["id"] = 61
    first = body["params"]["context"]["result"][0]
    corrected = copy.deepcopy(first)
    corrected["value"]["sequence"].append(dict(first["value"]["sequence"][0], frame=12, time=11 / FPS, x=40.0))
    for region in (first, corrected):
        body["params"]["context"]["result"] = [region]
        decoded.clear()
        [answer] = _ok(client.post("/predict", json=body))["results"][0]["result"]
        assert decoded == []
        [entry] = app.extensions["sam2_backend"].store._entries.values()
        [owner] = entry.value.owners
        drawn = sequence_to_boxes(answer["value"]["sequence"], N_FRAMES, (W, H))
        user = {k["frame"] - 1 for k in region["value"]["sequence"]}
        shown = 0
        for f in range(N_FRAMES):
            box = mask_to_box(entry.value.result(f, owner).masks[0])  # decoded from the store, after the answer
            if f in user:
                continue
            if box is None:
                assert np.isnan(drawn[f]).all(), f
            else:
                np.testing.assert_allclose(drawn[f], box, atol=settings.box_tolerance_px + 1e-9, err_msg=f"frame {f}")
                shown += 1
        assert shown > 0
    app.extensions["sam2_backend"].close()


def test_interactive_answer_holds_only_the_context_objects(client):
    """The draft holds a stale copy of the region being edited and a region the user deleted since: the answer
    holds the context's region only (as the context has it), marked origin "prediction"."""
    body = captured("predict_interactive")
    region = body["params"]["context"]["result"][0]
    stale = copy.deepcopy(region)
    stale["value"]["sequence"][0].update(x=5.0, y=5.0)
    deleted = copy.deepcopy(region)
    deleted["id"], deleted["value"]["sequence"][0]["frame"] = "deleted1", 6
    body["tasks"][0]["id"] = 40
    body["tasks"][0]["drafts"] = [{"id": 1, "result": [stale, deleted], "created_at": "2026-11-26T19:32:54Z"}]
    [answer] = _ok(client.post("/predict", json=body))["results"][0]["result"]
    assert answer["origin"] == "prediction"
    _check_video_region(answer, region["value"]["sequence"][0])
    # batch (no context): every object of the annotation, each marked as a prediction
    batch = captured("predict_batch")
    batch["tasks"][0]["id"] = 41
    batch["tasks"][0]["annotations"] = [{"id": 7, "result": [region, deleted], "was_cancelled": False}]
    regions = _ok(client.post("/predict", json=batch))["results"][0]["result"]
    assert sorted(r["id"] for r in regions) == ["deleted1", "userbox1"]
    assert all(r["origin"] == "prediction" for r in regions)


def test_batch_without_and_with_prompts(client, ls):
    body = captured("predict_batch")  # Retrieve Predictions on a task without annotations
    requests_before = len(ls.requests)
    answer = _ok(client.post("/predict", json=body))
    assert answer["results"] == [[]]  # no prediction for Label Studio to store, not an empty one
    assert len(ls.requests) == requests_before  # no prompt: no download

    region = captured("predict_interactive")["params"]["context"]["result"][0]
    annotated = copy.deepcopy(body["tasks"][0])
    annotated["annotations"] = [{"id": 7, "result": [region], "was_cancelled": False,
                                 "created_at": "2026-11-26T19:32:54Z"}]
    missing = copy.deepcopy(annotated)
    missing["id"], missing["data"] = 2, {"video": "/data/upload/1/missing.mp4"}
    body["tasks"] = [annotated, copy.deepcopy(body["tasks"][0]), missing]
    answer = _ok(client.post("/predict", json=body))
    assert len(answer["results"]) == 3  # one per task, in order
    [video] = answer["results"][0]["result"]
    _check_video_region(video, region["value"]["sequence"][0])
    assert answer["results"][1] == [] and answer["results"][2] == []  # nothing to store; never a batch error


def test_overlapping_batch_calls_store_a_track_once(settings, monkeypatch):
    """The editor's task reload after Submit and a Retrieve Predictions ask for the same task at once: one answer
    holds the track, the other nothing to store (Label Studio would keep both: two identical predictions)."""
    app = create_app(settings)
    backend, client = app.extensions["sam2_backend"], app.test_client()
    body = captured("predict_batch")
    region = captured("predict_interactive")["params"]["context"]["result"][0]
    body["tasks"][0]["annotations"] = [{"id": 7, "result": [region], "was_cancelled": False,
                                        "created_at": "2026-11-26T19:32:54Z"}]
    entered, go_on, first = threading.Event(), threading.Event(), {}
    predict = backend.predictor.predict

    def slow_first(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert go_on.wait(30)
        return predict(*args, **kwargs)

    monkeypatch.setattr(backend.predictor, "predict", slow_first)
    try:
        thread = threading.Thread(target=lambda: first.update(_ok(client.post("/predict", json=body))))
        thread.start()
        assert entered.wait(30)
        assert _ok(client.post("/predict", json=body))["results"] == [[]]  # the same prompts, in flight
        changed = copy.deepcopy(body)  # other prompts of the same task: a different prediction, answered
        changed["tasks"][0]["annotations"][0]["result"][0]["value"]["sequence"][0]["x"] += 5.0
        assert _ok(client.post("/predict", json=changed))["results"][0]["result"]
        go_on.set()
        thread.join(60)
        [track] = first["results"][0]["result"]
        _check_video_region(track, region["value"]["sequence"][0])
        assert _ok(client.post("/predict", json=body))["results"][0]["result"]  # answered: asked again, answered
    finally:
        go_on.set()
        backend.close()


@pytest.mark.parametrize("change, status, words", [
    ({"frame": N_FRAMES + 40}, 422, ["frame 60 (2.360 s) is beyond the video", "20 frames at 25 fps"]),
    ({"frame": 0}, 422, ["frame must be in 1..framesCount"]),
    ({"x": 150.0}, 422, ["zero area inside the 64x48 frame"]),
    ({"width": "wide"}, 400, ["params.context.result[0].value.sequence[0].width:", "valid number"]),
])
def test_bad_video_prompts(client, change, status, words):
    body = captured("predict_interactive")
    body["params"]["context"]["result"][0]["value"]["sequence"][0].update(change)
    _error(client.post("/predict", json=body), status, *words)
    _still_serving(client)


@pytest.mark.parametrize("video, status, words", [
    ("/data/upload/1/missing.mp4", 422, ["not found", "404"]),
    ("/data/upload/1/corrupt.mp4", 422, ["not decodable"]),
    ("file:///etc/passwd", 422, ["unsupported media reference"]),
])
def test_bad_media(client, video, status, words):
    body = captured("predict_interactive")
    body["tasks"][0]["data"]["video"] = video
    _error(client.post("/predict", json=body), status, *words)
    _still_serving(client)


def test_unsupported_label_config(client):
    body = captured("predict_interactive")
    body["label_config"] = '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
    _error(client.post("/predict", json=body), 422, "unsupported label config", "Supported label configs")


def test_unreachable_label_studio_and_budget(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Settings(**{**settings.__dict__, "label_studio_url": f"http://127.0.0.1:{port}",
                       "download_timeout_s": 2.0, "media_cache_dir": settings.media_cache_dir + "-down"})
    client = create_app(down, model=small_model()).test_client()
    _error(client.post("/predict", json=captured("predict_interactive")), 502, "unreachable")
    _still_serving(client)


def test_interactive_budget_answers_the_prompted_frame(settings):
    app = create_app(Settings(**{**settings.__dict__, "interactive_budget_s": 1e-6}), model=small_model())
    body = captured("predict_interactive")
    [region] = _ok(app.test_client().post("/predict", json=body))["results"][0]["result"]
    _check_video_region(region, body["params"]["context"]["result"][0]["value"]["sequence"][0], tracked=False)
    [entry] = app.extensions["sam2_backend"].store._entries.values()
    assert len(entry.value.progress.covered()) == 0 and entry.value.frames() == [0]  # only the prompted frame


def test_concurrent_requests(client):
    body = captured("predict_interactive")
    answers = []

    def post():
        answers.append(client.post("/predict", json=body))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 3
    assert len({str(a.get_json()["results"]) for a in answers}) == 1


# ---------------------------------------------------------------- image sequence and image


def _mask(frame_hw=(H, W)) -> np.ndarray:
    m = np.zeros(frame_hw, bool)
    m[14:30, 20:41] = True
    m[20, 5] = True  # a stray pixel: the round trip must keep it
    return m


def _sequence_body(context_result: list[dict]) -> dict:
    task = {"id": 20, "data": {"frames": [f"/data/upload/2/f{i}.png" for i in range(SEQ_LEN)]},
            "annotations": [], "drafts": [], "predictions": []}
    return {"tasks": [task], "project": "2.1", "label_config": SEQ_XML,
            "params": {"login": None, "password": None, "context": {"result": context_result}}}


def test_image_sequence_mask_round_trip_and_keypoints(client):
    mask = _mask()
    brush = mask_to_brush(mask, region_id="userbrush", from_name="brush", to_name="frames", labels=["Car"], item_index=2)
    brush["origin"] = "manual"
    point = {"id": "kp1", "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": 4,
             "is_positive": True, "origin": "manual", "original_width": W, "original_height": H,
             "value": {"x": 30.0, "y": 50.0, "width": 1.5, "keypointlabels": ["Car"]}}
    answer = _ok(client.post("/predict", json=_sequence_body([brush, point])))
    regions = answer["results"][0]["result"]
    assert regions and all(r["type"] == "brushlabels" and r["value"]["format"] == "rle" for r in regions)
    assert all(0 <= r["item_index"] < SEQ_LEN and r["value"]["brushlabels"] == ["Car"] for r in regions)
    assert all(r["parentID"] in ("userbrush", "kp1") for r in regions)
    [on_k] = [r for r in regions if r["item_index"] == 2 and r["parentID"] == "userbrush"]
    np.testing.assert_array_equal(decode_brush(on_k, W, H), mask)  # frame k: exactly the mask given
    ids = [r["id"] for r in regions]
    assert len(ids) == len(set(ids))


def test_image_sequence_answer_holds_the_clicked_object_only(client):
    """A click inside the user's brush refines that brush's object; the draft's other object (a rectangle)
    is not returned."""
    brush = mask_to_brush(_mask(), region_id="userbrush", from_name="brush", to_name="frames", labels=["Car"],
                          item_index=2)
    rect = {"id": "rect1", "type": "rectanglelabels", "from_name": "rect", "to_name": "frames", "item_index": 0,
            "origin": "manual", "value": {"x": 5.0, "y": 5.0, "width": 30.0, "height": 30.0, "rotation": 0,
                                          "rectanglelabels": ["Car"]}}
    point = {"id": "kp9", "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": 2,
             "is_positive": True, "value": {"x": 45.0, "y": 45.0, "width": 1.5, "keypointlabels": ["Car"]}}
    body = _sequence_body([point])
    body["tasks"][0]["id"] = 21
    body["tasks"][0]["drafts"] = [{"id": 3, "result": [brush, rect], "created_at": "2026-11-26T19:32:54Z"}]
    regions = _ok(client.post("/predict", json=body))["results"][0]["result"]
    assert regions and {r["parentID"] for r in regions} == {"userbrush"}
    assert all(r["origin"] == "prediction" for r in regions)
    body["params"]["context"]["result"] = [rect]  # the rectangle named: its object only
    regions = _ok(client.post("/predict", json=body))["results"][0]["result"]
    assert regions and {r["parentID"] for r in regions} == {"rect1"}


def test_image_sequence_bad_item_index(client):
    point = {"id": "kp1", "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": 9,
             "value": {"x": 30.0, "y": 50.0, "width": 1.5, "keypointlabels": ["Car"]}}
    _error(client.post("/predict", json=_sequence_body([point])), 422, "item_index 9 outside 0..5")


@pytest.mark.parametrize("out, kind", [("BrushLabels", "brushlabels"), ("BitmaskLabels", "bitmasklabels")])
def test_single_image(client, out, kind):
    point = {"id": "kp1", "type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
             "value": {"x": 10.0, "y": 80.0, "width": 1.5, "keypointlabels": ["Car"]}}  # outside the mask
    mask = _mask()
    convert = mask_to_brush if kind == "brushlabels" else mask_to_bitmask
    given = convert(mask, region_id="painted", from_name="mask", to_name="image", labels=["Car"])
    task = {"id": 30, "data": {"image": "/data/upload/3/image.png"}, "annotations": [], "drafts": []}
    body = {"tasks": [task], "label_config": IMAGE_XML.format(out=out), "project": "3.1",
            "params": {"context": {"result": [point, given]}}}
    regions = _ok(client.post("/predict", json=body))["results"][0]["result"]
    assert {r["type"] for r in regions} == {kind} and "item_index" not in regions[0]
    by_parent = {r["parentID"]: r for r in regions}
    assert set(by_parent) <= {"kp1", "painted"} and "painted" in by_parent
    decode = decode_brush if kind == "brushlabels" else decode_bitmask
    np.testing.assert_array_equal(decode(by_parent["painted"], W, H), mask)
    assert (by_parent["painted"]["original_width"], by_parent["painted"]["original_height"]) == (W, H)


# ---------------------------------------------------------------- basic auth


def test_basic_auth(settings):
    secured = Settings(**{**settings.__dict__, "basic_auth_user": "ls", "basic_auth_pass": "s3cret"})
    client = create_app(secured, model=small_model()).test_client()
    assert client.get("/health").status_code == 200
    response = client.get("/versions")
    _error(response, 401, "authentication required")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    _error(client.post("/predict", json=captured("predict_batch"), auth=("ls", "wrong")), 401)
    _error(client.get("/metrics", auth=("LS", "s3cret")), 401)
    assert _ok(client.get("/versions", auth=("ls", "s3cret")))["versions"]
    assert _ok(client.post("/predict", json=captured("predict_batch"), auth=("ls", "s3cret")))["results"]
