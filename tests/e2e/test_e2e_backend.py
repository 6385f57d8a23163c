"""End to end: the real Label Studio 1.23.2 and our backend under gunicorn with a random-weight checkpoint.

Random weights make the masks meaningless, so these tests check the contract, not the quality: valid
results under label_studio_sdk's LabelInterface, predictions stored in Label Studio, every frame inside the
video, and the user's own mask on frame k returned unchanged.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e.projects import (
    FPS,
    FRAME_SIZE,
    K,
    MIDDLE,
    SEQUENCE_LENGTH,
    VIDEO_FRAMES,
    Connected,
    brush_on_frame,
    connect_projects,
    predict_from_saved_annotations,
    prediction_errors,
    user_keyframe,
    user_mask,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sam2(label_studio, backend_server, e2e_media) -> Connected:
    return connect_projects(label_studio.api, e2e_media, backend_server, "SAM 2")


def _decode(region: dict) -> np.ndarray:
    h, w = FRAME_SIZE
    assert (region["original_height"], region["original_width"]) == (h, w)
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def _check_video_result(result: list[dict]) -> None:
    tracks = [r for r in result if r["type"] == "videorectangle"]
    assert tracks, "no VideoRectangle track in the result"
    for track in tracks:
        value = track["value"]
        assert value["framesCount"] == VIDEO_FRAMES
        assert value["duration"] == pytest.approx(VIDEO_FRAMES / FPS, abs=1 / FPS)
        frames = [k["frame"] for k in value["sequence"]]
        assert frames == sorted(frames) and all(1 <= f <= VIDEO_FRAMES for f in frames), frames
        for k in value["sequence"]:
            assert 0 <= k["x"] <= 100 and 0 <= k["y"] <= 100 and k["width"] >= 0 and k["height"] >= 0


def _check_sequence_result(result: list[dict], mask: np.ndarray) -> None:
    masks = [r for r in result if r["type"] in ("brushlabels", "bitmasklabels")]
    assert all(0 <= r["item_index"] < SEQUENCE_LENGTH for r in masks)
    on_k = [r for r in masks if r["item_index"] == K and r["type"] == "brushlabels"]
    assert len(on_k) == 1, f"expected one brush mask on frame {K}, got {len(on_k)}"
    assert np.array_equal(_decode(on_k[0]), mask), "the user's mask on frame k did not come back unchanged"


def test_interactive_video_keyframe_on_a_middle_frame(label_studio, sam2, e2e_media):
    (task,) = sam2.video.tasks
    answer = label_studio.api.interactive_annotating(sam2.video_ml, task["id"], [user_keyframe(e2e_media)])
    assert not prediction_errors(sam2.video.label_config, answer["data"])
    _check_video_result(answer["data"]["result"])
    keyframes = {k["frame"] for r in answer["data"]["result"] for k in r["value"]["sequence"]}
    assert MIDDLE in keyframes and len(keyframes) > 1, "the track does not leave the prompted frame"


def test_interactive_brush_mask_on_frame_k(label_studio, sam2, e2e_media):
    (task,) = sam2.sequence.tasks
    painted = brush_on_frame(user_mask(e2e_media), K)
    answer = label_studio.api.interactive_annotating(sam2.sequence_ml, task["id"], [painted])
    assert not prediction_errors(sam2.sequence.label_config, answer["data"])
    _check_sequence_result(answer["data"]["result"], user_mask(e2e_media))


def test_retrieve_predictions_from_saved_annotations(label_studio, sam2, e2e_media, artifacts):
    """The user saves an annotation (keyframe / brush mask); Retrieve Predictions tracks from it."""
    api = label_studio.api
    for name, (_, stored) in predict_from_saved_annotations(api, sam2, e2e_media).items():
        (artifacts / f"prediction-{name}.json").write_text(json.dumps(stored, indent=1))
        assert not prediction_errors(getattr(sam2, name).label_config, stored)
        assert stored["result"], "an empty prediction was stored"
    _check_video_result(api.predictions(sam2.video.tasks[0]["id"])[0]["result"])
    _check_sequence_result(api.predictions(sam2.sequence.tasks[0]["id"])[0]["result"], user_mask(e2e_media))
