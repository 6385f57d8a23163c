"""The backend recognises its own accepted suggestions (backend/answers.py).

Label Studio 1.23.2's Accept turns a suggestion into a draft region with the suggestion's origin ("prediction",
as the backend marks its answers) and no parentID and
deletes the smart keypoint that prompted it (docs/label-studio-editor.md); `accepted` below does the same to an
answer. Unit tests on AnswerMemory, then the refinement loop through the HTTP app with a small model.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing

import numpy as np
import pytest

from backend.answers import AnswerMemory, ProcessStore, SqliteStore, mask_digest, open_store, reuse_ids
from backend.app import create_app
from backend.labelconfig import parse_label_config
from backend.prompts import ObjectPrompts, image_prompts
from backend.results import mask_to_brush
from tests.backend_helpers import H, SEQ_XML, W, backend_settings, clip_frames, png_bytes
from tests.fake_label_studio import FakeLabelStudio

CONFIG = parse_label_config(SEQ_XML)
SIZES = [(W, H)] * 4
IMAGE_XML = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Car"/><Label value="Person"/></KeyPointLabels>
  <BrushLabels name="mask" toName="image"><Label value="Car"/><Label value="Person"/></BrushLabels>
</View>"""


def _kp(rid: str, frame: int, x: float, y: float, positive: bool = True, label: str = "Car") -> dict:
    return {"id": rid, "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": frame,
            "is_positive": positive, "value": {"x": x, "y": y, "width": 1.0, "keypointlabels": [label]}}


def _square(frame: int, size: int = 10) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[10:10 + size, 10 + frame:20 + frame] = True
    return m


def _answer(key: str, frames=range(4), size: int = 10) -> tuple[list[dict], list]:
    """An answer of object `key` (a mask per frame) and its `answered` entries for AnswerMemory.remember."""
    regions, answered = [], []
    for f in frames:
        r = mask_to_brush(_square(f, size), region_id=f"{key}_{f}", from_name="brush", to_name="frames",
                          labels=["Car"], item_index=f, parent_id=key)
        regions.append(r)
        answered.append((r, key, f, _square(f, size)))
    return regions, answered


def accepted(regions: list[dict], rename: bool = False) -> list[dict]:
    """What Accept leaves in the draft: the answer's origin ("prediction"), no parentID (ids renamed when
    `rename`)."""
    out = []
    for r in regions:
        r = {k: v for k, v in r.items() if k not in ("parentID", "score")}
        out.append(dict(r, origin=r.get("origin", "manual"), id=f"ls{r['id']}" if rename else r["id"]))
    return out


def _memory(key: str = "kp1") -> tuple[AnswerMemory, list[dict]]:
    memory = AnswerMemory()
    regions, answered = _answer(key)
    obj = ObjectPrompts(key, "Car", sources=[_kp(key, 1, 30, 30)])
    memory.remember(7, [obj], answered)
    return memory, regions


def test_accepted_masks_by_id_are_ours_and_the_click_comes_back():
    memory, answer = _memory()
    incoming = accepted(answer) + [_kp("neg", 1, 40, 40, positive=False)]
    regions, ids = memory.recognise(7, incoming, CONFIG)
    masks = [r for r in regions if r["type"] == "brushlabels"]
    assert all(r["parentID"] == "kp1" and r["origin"] == "prediction" for r in masks)
    assert ids == {("kp1", f): f"kp1_{f}" for f in range(4)}
    (obj,) = image_prompts(regions, CONFIG, SIZES)  # one object, the restored click and the negative one
    assert obj.key == "kp1"
    assert [(fp.frame, fp.point_labels) for fp in obj.frames] == [(1, [1, 0])]


def test_accepted_masks_with_new_ids_are_matched_by_mask_and_their_ids_reused():
    memory, answer = _memory()
    incoming = accepted(answer, rename=True) + [_kp("neg", 2, 40, 40, positive=False)]
    regions, ids = memory.recognise(7, incoming, CONFIG)
    assert all(r["parentID"] == "kp1" for r in regions if r["type"] == "brushlabels")
    assert ids == {("kp1", f): f"lskp1_{f}" for f in range(4)}
    again, _ = _answer("kp1", frames=[0, 3])
    extra = mask_to_brush(_square(0), region_id="other_0", from_name="brush", to_name="frames", item_index=0,
                          parent_id="other")
    assert [r["id"] for r in reuse_ids(again + [extra], ids)] == ["lskp1_0", "lskp1_3", "other_0"]


def test_an_edited_accepted_mask_is_a_mask_prompt_of_the_same_object():
    memory, answer = _memory()
    incoming = accepted(answer)
    edited = mask_to_brush(_square(2, size=14), region_id="kp1_2", from_name="brush", to_name="frames",
                           labels=["Car"], item_index=2)
    incoming[2] = dict(edited, origin="prediction")  # edited in the editor, the accepted suggestion's origin kept
    regions, _ = memory.recognise(7, incoming, CONFIG)
    assert regions[1 + 2]["parentID"] == "kp1" and regions[1 + 2]["origin"] == "prediction-changed"
    (obj,) = image_prompts(regions, CONFIG, SIZES)
    on_2 = obj.at(2)
    assert mask_digest(on_2.mask) == mask_digest(_square(2, size=14))
    assert [fp.frame for fp in obj.frames if fp.points] == [1]


def test_masks_the_backend_never_answered_stay_the_users():
    memory, answer = _memory()
    painted = mask_to_brush(_square(1, size=6), region_id="painted", from_name="brush", to_name="frames",
                            labels=["Car"], item_index=1)
    moved = dict(accepted(answer)[0], item_index=1)  # our frame-0 mask, now claimed for frame 1: not ours
    regions, ids = memory.recognise(7, [painted, moved], CONFIG)
    assert [r.get("parentID") for r in regions] == [None, None] and ids == {}
    assert memory.recognise(8, [painted], CONFIG) == ([painted], {})  # another task: nothing remembered
    objects = image_prompts(regions, CONFIG, SIZES)
    assert sorted(o.key for o in objects) == ["kp1_0", "painted"]


def test_the_users_own_mask_that_started_an_object_is_never_taken_for_ours():
    memory = AnswerMemory()
    user = mask_to_brush(_square(0), region_id="brush1", from_name="brush", to_name="frames", labels=["Car"],
                         item_index=0)
    ours = dict(user, id="brush1_0", parentID="brush1")  # the backend returned the user's mask as given
    memory.remember(7, [ObjectPrompts("brush1", "Car")], [(ours, "brush1", 0, _square(0))])
    regions, _ = memory.recognise(7, [dict(user, origin="manual"), dict(accepted([ours])[0])], CONFIG)
    assert regions[0].get("parentID") is None and regions[0]["origin"] == "manual"  # still the user's prompt
    assert regions[1]["parentID"] == "brush1" and regions[1]["origin"] == "prediction"


@pytest.mark.parametrize("kind", ["process", "sqlite"])
def test_memory_keeps_the_most_recent_tasks(kind, tmp_path):
    memory = AnswerMemory(ProcessStore(2) if kind == "process" else SqliteStore(tmp_path / "a.sqlite", 2))
    _, answered = _answer("a")
    for task in (1, 2, 3):
        memory.remember(task, [], answered)
    regions = accepted([answered[0][0]])
    assert memory.recognise(1, regions, CONFIG)[1] == {}
    assert memory.recognise(3, regions, CONFIG)[1] == {("a", 0): "a_0"}


def test_sqlite_memory_is_shared_by_workers_and_survives_a_restart(tmp_path):
    """Two stores on one file stand for two gunicorn workers, or a worker before and after a restart."""
    path = tmp_path / "state" / "answers.sqlite"
    first, second = AnswerMemory(open_store(str(path))), AnswerMemory(open_store(str(path)))
    regions, answered = _answer("kp1")
    kp = dict(_kp("kp1", 0, 30.0, 30.0), parentID="kp1")
    first.remember(7, [ObjectPrompts("kp1", "Car", sources=[kp])], answered)
    rewritten, ids = second.recognise(7, accepted(regions, rename=True), CONFIG)
    assert ids == {("kp1", f): f"lskp1_{f}" for f in range(4)}  # recognised by mask, ids as LS renamed them
    assert rewritten[0]["id"] == "kp1" and rewritten[0]["type"] == "keypointlabels"  # the click put back
    assert {r["parentID"] for r in rewritten} == {"kp1"}
    assert all(r["origin"] == "prediction" for r in rewritten[1:])


def test_a_memory_that_cannot_be_opened_or_read_is_no_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = open_store(str(blocker / "answers.sqlite"))  # its folder cannot be made
    assert isinstance(store, ProcessStore) and "kept in this worker's memory only" in caplog.text
    assert isinstance(open_store("none"), ProcessStore)
    broken = SqliteStore(tmp_path / "b.sqlite")
    memory = AnswerMemory(broken)
    regions, answered = _answer("a")
    memory.remember(1, [], answered)
    with closing(sqlite3.connect(broken.path)) as db, db:
        db.execute("UPDATE answers SET data = '{not json'")
    assert memory.recognise(1, accepted(regions), CONFIG)[1] == {}  # the masks count as the user's
    assert "cannot read task 1" in caplog.text


# ---------------------------------------------------------------- through the HTTP app, small model

SEQ_LEN = 6


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with FakeLabelStudio() as server:
        for i, frame in enumerate(clip_frames(SEQ_LEN)):
            server.add(f"/data/upload/2/f{i}.png", png_bytes(frame))
        server.add("/data/upload/3/image.png", png_bytes(clip_frames(1)[0]))
        settings = backend_settings(tmp_path_factory.mktemp("backend"), server.url, interactive_budget_s=60.0)
        app = create_app(settings)
        yield app.test_client()
        app.extensions["sam2_backend"].close()


def _ask(client, task: dict, xml: str, context: list[dict]) -> list[dict]:
    body = {"tasks": [task], "project": "2.1", "label_config": xml, "params": {"context": {"result": context}}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]["result"]


def test_sequence_click_accept_negative_click_refines_one_object(client):
    task = {"id": 120, "data": {"frames": [f"/data/upload/2/f{i}.png" for i in range(SEQ_LEN)]},
            "annotations": [], "drafts": [], "predictions": []}
    first = _ask(client, task, SEQ_XML, [_kp("click1", 2, 35.0, 50.0)])
    assert first and {r["parentID"] for r in first} == {"click1"}
    assert len({r["item_index"] for r in first}) == len(first)  # one mask per frame
    task["drafts"] = [{"id": 1, "result": accepted(first), "updated_at": "2026-12-04T00:00:00Z"}]
    second = _ask(client, task, SEQ_XML, [_kp("neg1", 2, 60.0, 50.0, positive=False)])
    assert second and {r["parentID"] for r in second} == {"click1"}  # the same object, not one per mask
    assert len({r["item_index"] for r in second}) == len(second)
    assert {r["id"] for r in second} <= {r["id"] for r in first}  # Accept replaces the accepted masks
    task["drafts"] = [{"id": 1, "result": accepted(second, rename=True), "updated_at": "2026-12-04T00:01:00Z"}]
    third = _ask(client, task, SEQ_XML, [_kp("pos2", 4, 40.0, 45.0)])
    assert {r["parentID"] for r in third} == {"click1"}
    assert {r["id"] for r in third} <= {"ls" + r["id"] for r in second}  # ids LS gave, matched by mask


def test_image_click_accept_negative_click_changes_the_mask(client):
    task = {"id": 130, "data": {"image": "/data/upload/3/image.png"}, "annotations": [], "drafts": []}
    kp = {"id": "c1", "type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
          "value": {"x": 35.0, "y": 50.0, "width": 1.0, "keypointlabels": ["Car"]}}
    (first,) = _ask(client, task, IMAGE_XML, [kp])
    task["drafts"] = [{"id": 2, "result": accepted([first]), "updated_at": "2026-12-04T00:00:00Z"}]
    neg = dict(kp, id="n1", is_positive=False, value=dict(kp["value"], x=60.0))
    (second,) = _ask(client, task, IMAGE_XML, [neg])  # alone it would say nothing: the first click came back
    assert second["id"] == first["id"] and second["parentID"] == "c1"
    other = dict(kp, id="p1", value=dict(kp["value"], keypointlabels=["Person"]))
    answer = _ask(client, task, IMAGE_XML, [other])  # a new label starts a new object beside the accepted one
    assert {r["parentID"] for r in answer} == {"p1"}  # only the clicked object: the accepted one stays as drawn
    task["drafts"] = [{"id": 2, "result": accepted([second]) + accepted(answer), "updated_at": "2026-12-04T00:01:00Z"}]
    neg2 = dict(kp, id="n2", is_positive=False, value=dict(kp["value"], x=20.0))
    (again,) = _ask(client, task, IMAGE_XML, [neg2])  # the first object is still known after an answer without it
    assert again["id"] == first["id"] and again["parentID"] == "c1"


def test_a_click_on_another_worker_refines_the_same_object(client):
    """WORKERS > 1: Accept's draft and the next click reach a worker that did not answer the first click."""
    other_app = create_app(client.application.extensions["sam2_backend"].settings)
    try:
        other = other_app.test_client()
        task = {"id": 140, "data": {"frames": [f"/data/upload/2/f{i}.png" for i in range(SEQ_LEN)]},
                "annotations": [], "drafts": [], "predictions": []}
        first = _ask(client, task, SEQ_XML, [_kp("click1", 2, 35.0, 50.0)])
        task["drafts"] = [{"id": 1, "result": accepted(first, rename=True), "updated_at": "2026-12-04T00:00:00Z"}]
        second = _ask(other, task, SEQ_XML, [_kp("neg1", 2, 60.0, 50.0, positive=False)])
        assert second and {r["parentID"] for r in second} == {"click1"}  # not one object per accepted mask
        assert {r["id"] for r in second} <= {"ls" + r["id"] for r in first}
    finally:
        other_app.extensions["sam2_backend"].close()
