"""Malformed regions (backend/regions.py) through the HTTP app: a 400 naming the path in interactive requests,
the region left out with a warning in batch requests, never a 500; Label Studio's real bodies pass unchanged.

The fuzz tests mutate one region of a valid body at any depth (hypothesis, derandomized) and post it; a
small random-weight model tracks at most MAX_FRAMES frames, so a valid body costs milliseconds.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st

from backend.app import create_app
from backend.regions import checked_request
from backend.results import mask_to_bitmask, mask_to_brush, masklet_to_videorectangle
from tests.backend_helpers import (
    FPS, H, N_FRAMES, SEQ_XML, VIDEO_PATH, W, backend_settings, captured, clip_frames, h264_bytes, png_bytes,
)
from tests.fake_label_studio import FakeLabelStudio

ROOT = Path(__file__).resolve().parent
NOTES = Path("/work/shared/notes/label-studio-1.23.2-requests.json")
MAX_FRAMES = 2
SEQ_LEN = 3
FUZZ = hypothesis.settings(max_examples=40, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media")
    with FakeLabelStudio() as server:
        server.add(VIDEO_PATH, h264_bytes(tmp))
        for i, frame in enumerate(clip_frames(SEQ_LEN)):
            server.add(f"/data/upload/2/f{i}.png", png_bytes(frame))
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory, ls):
    # seed 0: its masks are empty, which costs the least per request; what is checked here is the answer's status
    app = create_app(backend_settings(tmp_path_factory.mktemp("backend"), ls.url, seed=0,
                                      max_propagation_frames=MAX_FRAMES))
    yield app
    app.extensions["sam2_backend"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


# ---------------------------------------------------------------- bodies


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[14:30, 20:41] = True
    return mask


def video_regions() -> dict[str, dict]:
    """One region of each type, as Label Studio sends them in a video project (only videorectangle is used)."""
    user = captured("predict_interactive")["params"]["context"]["result"][0]
    boxes = np.array([[10.0 + t, 16.0, 28.0 + t, 34.0] for t in range(N_FRAMES)])
    ours = masklet_to_videorectangle(boxes, region_id="sam2obj", from_name="box", to_name="video",
                                     frame_size=(W, H), fps=FPS, labels=["Car"], score=0.5)  # our own output back
    choice = {"id": "c1", "type": "choices", "from_name": "videoLabels", "to_name": "video", "origin": "manual",
              "value": {"choices": ["Car"]}}
    return {"user": user, "ours": dict(ours, origin="prediction"), "other": choice}


def sequence_regions() -> dict[str, dict]:
    """A keypoint, a rectangle, a brush and a bitmask region of an image-sequence project."""
    point = {"id": "kp1", "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": 1,
             "is_positive": True, "origin": "manual", "original_width": W, "original_height": H,
             "value": {"x": 40.0, "y": 50.0, "width": 1.5, "keypointlabels": ["Car"]}}
    rect = {"id": "r1", "type": "rectanglelabels", "from_name": "rect", "to_name": "frames", "item_index": 0,
            "origin": "manual", "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": 30.0, "y": 30.0, "width": 30.0, "height": 40.0, "rotation": 0, "rectanglelabels": ["Car"]}}
    brush = dict(mask_to_brush(_mask(), region_id="b1", from_name="brush", to_name="frames", labels=["Car"],
                               item_index=2), origin="manual")
    bitmask = mask_to_bitmask(_mask(), region_id="m1", from_name="mask", to_name="frames", item_index=2)
    return {"point": point, "rect": rect, "brush": brush, "bitmask": bitmask}


def video_body(where: str, regions: list[dict]) -> dict:
    """The captured interactive body with `regions` in one place: context | annotations | drafts | predictions."""
    body = captured("predict_interactive")
    task = body["tasks"][0]
    body["params"]["context"]["result"] = regions if where == "context" else []
    if where != "context":
        task[where] = [{"id": 3, "result": regions, "created_at": "2026-11-26T19:32:54.475867Z"}]
    return body


def sequence_body(where: str, regions: list[dict]) -> dict:
    body = video_body(where, regions)
    body["label_config"], body["project"] = SEQ_XML, "2.1"
    body["tasks"][0].update(id=20, data={"frames": [f"/data/upload/2/f{i}.png" for i in range(SEQ_LEN)]})
    return body


def batch(body: dict) -> dict:
    body = copy.deepcopy(body)
    body["params"]["context"] = None
    return body


def _error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    return response.get_json()["error"]


# ---------------------------------------------------------------- Label Studio's bodies pass unchanged


def test_label_studio_bodies_pass_unchanged():
    bodies = [captured("predict_interactive"), captured("predict_batch")]
    if NOTES.exists():  # the measured bodies, with a real annotation object from the webhook capture
        notes = json.loads(NOTES.read_text())
        annotated = copy.deepcopy(notes["predict_batch"])
        annotated["tasks"][0]["annotations"] = [notes["webhook_ANNOTATION_CREATED"]["annotation"]]
        bodies += [notes["predict_interactive"], annotated]
    bodies += [json.loads(p.read_text()) for p in sorted((ROOT / "data" / "events").glob("*.json"))]
    everything = list(video_regions().values()) + list(sequence_regions().values())
    bodies += [video_body(where, everything) for where in ("context", "annotations", "drafts", "predictions")]
    for body in bodies:
        context = (body.get("params") or {}).get("context")
        tasks, checked = checked_request(copy.deepcopy(body.get("tasks") or []), copy.deepcopy(context))
        assert tasks == (body.get("tasks") or []) and checked == context


# ---------------------------------------------------------------- the examples


def _user(body: dict, where: str) -> dict:
    return body["params"]["context"]["result"][0] if where == "context" else body["tasks"][0][where][0]["result"][0]


PLACES = {"context": "params.context.result[0]", "annotations": "tasks[0].annotations[0].result[0]",
          "drafts": "tasks[0].drafts[0].result[0]", "predictions": "tasks[0].predictions[0].result[0]"}
BREAKS = [  # (what changes in the user's videorectangle, the path below the region, words)
    (lambda r: "userbox1", "", "must be an object, got str"),
    (lambda r: [r], "", "must be an object, got list"),
    (lambda r: dict(r, id={"a": 1}), ".id", "string or an integer"),
    (lambda r: dict(r, from_name=7), ".from_name", "valid string"),
    (lambda r: dict(r, type=["videorectangle"]), ".type", "valid string"),
    (lambda r: dict(r, value="box"), ".value", "VideoRectangleValue"),
    (lambda r: dict(r, value=dict(r["value"], labels="Car")), ".value.labels", "valid list"),
    (lambda r: dict(r, value=dict(r["value"], sequence=[1])), ".value.sequence[0]", "Keyframe"),
    (lambda r: dict(r, value=dict(r["value"], sequence=[dict(r["value"]["sequence"][0], x="1")])),
     ".value.sequence[0].x", "valid number"),
    (lambda r: dict(r, value=dict(r["value"], sequence=[dict(r["value"]["sequence"][0], enabled="yes")])),
     ".value.sequence[0].enabled", "valid boolean"),
]


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("change, below, words", BREAKS)
def test_interactive_bad_region_is_a_400_naming_its_path(client, where, change, below, words):
    body = video_body(where, [video_regions()["user"]])
    if where == "drafts":  # an older, valid draft first: the bad region is in the second one
        body["tasks"][0]["drafts"].insert(0, {"id": 1, "result": [video_regions()["other"]]})
        bad = PLACES[where].replace("drafts[0]", "drafts[1]")
    else:
        bad = PLACES[where]
    container = body["params"]["context"]["result"] if where == "context" else body["tasks"][0][where][-1]["result"]
    container[0] = change(container[0])
    message = _error(client.post("/predict", json=body), 400)
    assert message.startswith(f"{bad}{below}: ") and words in message, message


def test_interactive_bad_annotation_object(client):
    body = video_body("annotations", [video_regions()["user"]])
    body["tasks"][0]["annotations"].append("annotation")
    assert _error(client.post("/predict", json=body), 400).startswith("tasks[0].annotations[1]: must be an object")
    body["tasks"][0]["annotations"][1] = {"id": "7", "result": []}
    assert _error(client.post("/predict", json=body), 400).startswith("tasks[0].annotations[1].id: ")
    del body["tasks"][0]["annotations"][1]
    body["tasks"][0]["predictions"] = {"id": 1}
    assert _error(client.post("/predict", json=body), 400).startswith("tasks[0].predictions: must be a list")


def test_batch_leaves_bad_regions_out_with_a_warning(client, caplog):
    good = video_regions()["user"]
    clean = batch(video_body("annotations", [good]))
    expected = client.post("/predict", json=clean).get_json()["results"]
    assert expected[0]["result"], "the clean body tracks the user's box"
    broken = copy.deepcopy(clean)
    task = broken["tasks"][0]
    task["annotations"][0]["result"] = [{"id": "x", "type": "videorectangle", "value": {"sequence": "no"}}, good, 5]
    task["annotations"].append("not an annotation")
    task["predictions"][0]["result"][0]["value"]["labels"] = 3
    with caplog.at_level(logging.WARNING, logger="backend.regions"):
        answer = client.post("/predict", json=broken)
    assert answer.status_code == 200 and answer.get_json()["results"] == expected  # the good region still tracked
    warned = [r.getMessage() for r in caplog.records if r.name == "backend.regions"]
    for path in ("tasks[0].annotations[0].result[0].value.sequence", "tasks[0].annotations[0].result[2]",
                 "tasks[0].annotations[1]", "tasks[0].predictions[0].result[0].value.labels"):
        assert any(path + ":" in w for w in warned), (path, warned)


# ---------------------------------------------------------------- property-based: any change at any depth

NAMES = ["id", "type", "from_name", "to_name", "value", "labels", "sequence", "frame", "x", "y", "width", "height",
         "enabled", "rotation", "rle", "format", "imageDataURL", "parentID", "item_index", "original_width",
         "original_height", "is_positive", "positive", "keypointlabels", "brushlabels", "sam2_auto"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(0, 255) | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=4)
    | st.sampled_from(NAMES + ["rle", "videorectangle", "keypointlabels", "brushlabels", "data:image/png;base64,"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=6)


def _slots(node, path=()) -> list[tuple]:
    """Every (path, container) place under `node`: its values and, for objects, room for a new key."""
    out = [path]
    if isinstance(node, dict):
        out += [s for k, v in node.items() for s in _slots(v, path + (k,))]
    elif isinstance(node, list):
        out += [s for i, v in enumerate(node) for s in _slots(v, path + (i,))]
    return out


def _alike(value) -> st.SearchStrategy:
    """Another value of the same JSON type (well-typed values that may still make no sense)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-1, 300) | st.integers(-2**40, 2**40)
    if isinstance(value, float):
        return st.floats()
    if isinstance(value, str):
        return st.text(max_size=6) | st.sampled_from(NAMES)
    return JSON


@st.composite
def mutated(draw, regions: list[dict]) -> tuple[list[dict], int]:
    """`regions` with one of them changed somewhere (a value replaced by any JSON value or by one of its own
    type, a key removed or added); the changed region's index."""
    regions = copy.deepcopy(regions)
    index = draw(st.integers(0, len(regions) - 1))
    path = draw(st.sampled_from(_slots(regions[index])))
    parent, node = None, regions[index]
    for part in path:
        parent, node = node, node[part]
    action = draw(st.sampled_from(["alike", "replace", "remove", "add"] if path else ["replace", "add"]))
    if action == "alike":
        parent[path[-1]] = draw(_alike(node))
    elif action == "add" and isinstance(node, dict):
        node[draw(st.sampled_from(NAMES))] = draw(JSON)
    elif action == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    elif path:
        parent[path[-1]] = draw(JSON)
    else:
        regions[index] = draw(JSON)
    return regions, index


def _check_answer(response, where: str, index: int, interactive: bool) -> None:
    body = response.get_json()
    if not interactive:  # a batch never fails for a region
        assert response.status_code == 200 and len(body["results"]) == 1, (response.status_code, body)
        return
    assert response.status_code in (200, 400, 422), (response.status_code, body)
    if response.status_code == 400:  # the region named is the changed one
        place = PLACES[where][: -len("[0]")] + f"[{index}]"
        assert body["error"].startswith((place + ".", place + ":")), (place, body)


CASES = [(where, True) for where in PLACES] + [(where, False) for where in ("annotations", "drafts", "predictions")]


def _fuzz(client, regions: list[dict], make_body, where: str, interactive: bool) -> None:
    @FUZZ
    @hypothesis.given(change=mutated(regions))
    def run(change):
        changed, index = change
        body = make_body(where, changed)
        _check_answer(client.post("/predict", json=body if interactive else batch(body)), where, index, interactive)

    run()


@pytest.mark.parametrize("where, interactive", CASES)
def test_fuzz_video_regions(client, where, interactive):
    _fuzz(client, list(video_regions().values()), video_body, where, interactive)


@pytest.mark.parametrize("where, interactive", [("context", True), ("drafts", True), ("drafts", False)])
def test_fuzz_image_sequence_regions(client, where, interactive):
    _fuzz(client, list(sequence_regions().values()), sequence_body, where, interactive)


@pytest.mark.parametrize("interactive", [True, False], ids=["interactive", "batch"])
def test_fuzz_brush_rle_bytes(client, interactive):
    """Well-typed but corrupt RLE (some bytes of a valid one changed): a 422 or a mask, never a 500."""
    brush = sequence_regions()["brush"]
    rle = brush["value"]["rle"]

    @FUZZ
    @hypothesis.given(changes=st.dictionaries(st.integers(0, len(rle) - 1), st.integers(0, 255), min_size=1,
                                              max_size=3))
    def run(changes):
        region = copy.deepcopy(brush)
        for i, byte in changes.items():
            region["value"]["rle"][i] = byte
        body = sequence_body("drafts", [region])
        _check_answer(client.post("/predict", json=body if interactive else batch(body)), "drafts", 0, interactive)

    run()
