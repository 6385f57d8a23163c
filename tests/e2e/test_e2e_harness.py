"""Harness self-test: the real Label Studio 1.23.2 against the stand-in ML backend (no SAM 2 involved).

Proves that projects, media, the ML connection, interactive-annotating and Retrieve Predictions work as
tests/e2e assumes, and pins down what Label Studio sends and returns, so that a failure of the backend's
own e2e test points at the backend, not at the harness.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e.projects import (
    FPS,
    FRAME_SIZE,
    SEQUENCE_LENGTH,
    VIDEO_CONFIG,
    VIDEO_FRAMES,
    Connected,
    brush_on_frame,
    connect_projects,
    prediction_errors,
    videorectangle_keyframe,
)
from tests.e2e.standin_backend import MODEL_VERSION, square_mask

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def projects(label_studio, standin, e2e_media) -> Connected:
    """This module's own projects (other modules' actions do not show here), served by the stand-in."""
    return connect_projects(label_studio.api, e2e_media, standin.url, "stand-in")


def _requests_to(standin, path: str) -> list[dict]:
    return [body for p, body in standin.backend.requests if p == path]


def test_video_task_points_at_the_uploaded_h264(label_studio, standin, projects, e2e_media):
    (task,) = projects.video.tasks
    url = task["data"]["video"]
    assert url.startswith(f"/data/upload/{projects.video.id}/") and url.endswith("-clip.mp4")
    media = label_studio.api.request("GET", url)
    assert media.content == e2e_media.video.read_bytes()
    assert label_studio.api.session.get(label_studio.url + url, headers={"Range": "bytes=0-99"}).status_code == 206
    assert requests.get(label_studio.url + url, timeout=10).status_code == 401  # media need the token


def test_sequence_task_lists_the_uploaded_frames_in_order(label_studio, standin, projects, e2e_media):
    (task,) = projects.sequence.tasks
    urls = task["data"]["frames"]
    assert len(urls) == SEQUENCE_LENGTH
    for url, path in zip(urls, e2e_media.frames, strict=True):
        assert url.startswith(f"/data/upload/{projects.sequence.id}/") and url.endswith(f"-{path.name}")
        assert label_studio.api.request("GET", url).content == path.read_bytes()
    # Uploading with commit_to_project=false made no task of its own.
    assert len(label_studio.api.tasks(projects.sequence.id)) == 1


def test_connecting_calls_health_and_setup(label_studio, standin, projects):
    for project, ml_id in ((projects.video, projects.video_ml), (projects.sequence, projects.sequence_ml)):
        ml = label_studio.api.request("GET", f"/api/ml/{ml_id}").json()
        assert ml["readable_state"] == "Connected" and ml["model_version"] == MODEL_VERSION
        setups = [b for b in _requests_to(standin, "/setup") if b["project"].startswith(f"{project.id}.")]
        assert setups, "Label Studio did not call /setup on connect"
        assert setups[0]["schema"] == project.label_config
        assert setups[0]["hostname"] == label_studio.url and setups[0]["access_token"] == label_studio.token


def test_interactive_videorectangle_keyframe(label_studio, standin, projects, e2e_media):
    middle = VIDEO_FRAMES // 2
    drawn = videorectangle_keyframe(middle, e2e_media.clip.boxes()[middle - 1, 0])
    (task,) = projects.video.tasks
    stored_before = label_studio.api.predictions(task["id"])
    answer = label_studio.api.interactive_annotating(projects.video_ml, task["id"], [drawn])

    # Label Studio relays the drawn region as context.result and answers {"data": results[0]}.
    sent = _requests_to(standin, "/predict")[-1]
    assert sent["params"]["context"]["result"] == [drawn]
    assert sent["tasks"][0]["id"] == task["id"] and sent["tasks"][0]["data"] == task["data"]
    assert set(answer) == {"data"} and answer["data"]["model_version"] == MODEL_VERSION
    (region,) = answer["data"]["result"]
    assert [k["frame"] for k in region["value"]["sequence"]] == [1, middle, VIDEO_FRAMES]
    assert not prediction_errors(VIDEO_CONFIG, answer["data"])
    # Nothing is stored: interactive results live in the editor until the user saves.
    assert label_studio.api.predictions(task["id"]) == stored_before


def test_interactive_brush_mask_comes_back_unchanged(label_studio, standin, projects, e2e_media):
    k = 3
    mask = e2e_media.clip.masks[k, 0]
    painted = brush_on_frame(mask, k)
    (task,) = projects.sequence.tasks
    answer = label_studio.api.interactive_annotating(projects.sequence_ml, task["id"], [painted])

    result = answer["data"]["result"]
    assert not prediction_errors(projects.sequence.label_config, answer["data"])
    assert sorted(r["item_index"] for r in result) == list(range(SEQUENCE_LENGTH))
    (on_k,) = [r for r in result if r["item_index"] == k]
    assert on_k == painted
    h, w = FRAME_SIZE
    assert np.array_equal(decode_rle(on_k["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0, mask)


def test_retrieve_predictions_stores_valid_predictions(label_studio, standin, projects):
    api = label_studio.api
    for project in (projects.video, projects.sequence):
        before = len(_requests_to(standin, "/predict"))
        assert api.retrieve_predictions(project.id)["processed_items"] == len(project.tasks)
        batch = _requests_to(standin, "/predict")[before:]
        assert len(batch) == 1 and batch[0]["params"]["context"] is None  # one batch call, no context
        for task in project.tasks:
            (stored,) = api.predictions(task["id"])
            assert stored["model_version"] == MODEL_VERSION and stored["task"] == task["id"]
            assert not prediction_errors(project.label_config, stored)

    # Retrieving again does not call /predict for tasks that have a prediction of this model version.
    before = len(_requests_to(standin, "/predict"))
    api.retrieve_predictions(projects.video.id)
    assert len(_requests_to(standin, "/predict")) == before
    assert len(api.predictions(projects.video.tasks[0]["id"])) == 1


def test_stored_predictions_keep_their_frames(label_studio, standin, projects):
    label_studio.api.retrieve_predictions(projects.video.id)
    label_studio.api.retrieve_predictions(projects.sequence.id)
    (video,) = label_studio.api.predictions(projects.video.tasks[0]["id"])
    (track,) = video["result"]
    assert track["value"]["framesCount"] == VIDEO_FRAMES and track["value"]["duration"] == VIDEO_FRAMES / FPS
    assert all(1 <= k["frame"] <= VIDEO_FRAMES for k in track["value"]["sequence"])

    (sequence,) = label_studio.api.predictions(projects.sequence.tasks[0]["id"])
    h, w = FRAME_SIZE
    for region in sequence["result"]:
        mask = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0
        assert np.array_equal(mask, square_mask(FRAME_SIZE, region["item_index"]))


def test_sdk_client_sees_the_same_server(label_studio, standin, projects):
    titles = {p.title for p in label_studio.sdk.projects.list()}
    assert {"stand-in video", "stand-in frames"} <= titles
