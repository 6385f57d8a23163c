"""Label Studio <-> prompts/masks conversions (backend.labelconfig, backend.prompts, backend.results).

Uses the request bodies captured from Label Studio 1.23.2 (tests/data, from shared/notes) where they fit.
"""
from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from backend.labelconfig import LabelConfigError, parse_label_config
from backend.prompts import PromptError, current_owner, current_regions, decode_bitmask, decode_brush, image_prompts, video_prompts
from backend.results import (
    AUTO_KEY,
    CLOSED_KEY,
    frame_to_time,
    mask_to_bitmask,
    mask_to_box,
    mask_to_brush,
    mask_to_region,
    masklet_to_videorectangle,
    masks_to_boxes,
    prediction,
    sequence_to_boxes,
    time_to_frame,
)
from backend.keyframes import select_keyframes
from bench.keyframes import douglas_peucker

# setup / predict_batch / predict_interactive, verbatim from shared/notes/label-studio-1.23.2-requests.json
CAPTURED = Path(__file__).resolve().parent / "data" / "label-studio-1.23.2-requests.json"
REQUESTS = json.loads(CAPTURED.read_text())
VIDEO_XML = REQUESTS["setup"]["schema"]
W, H = 640, 480

SEQ_XML = """<View>
  <Image name="frames" valueList="$frames"/>
  <KeyPointLabels name="kp" toName="frames" smart="true"><Label value="Car"/><Label value="Dog"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="frames" smart="true"><Label value="Car"/></RectangleLabels>
  <BrushLabels name="brush" toName="frames">
    <Label value="Car"/><Label value="Person"/><Label value="Dog"/>
  </BrushLabels>
</View>"""
IMAGE_BITMASK_XML = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image"><Label value="Car"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="Car"/></BrushLabels>
  <BitmaskLabels name="bm" toName="image"><Label value="Car"/></BitmaskLabels>
</View>"""


def _video_config():
    return parse_label_config(VIDEO_XML)


def _linear_boxes(n, start=(100.0, 50.0, 300.0, 250.0), step=(5.0, 2.0, 5.0, 2.0)):
    t = np.arange(n)[:, None]
    return np.asarray(start) + t * np.asarray(step)


def _videorect(boxes, **kw):
    args = dict(region_id="obj1", from_name="box", to_name="video", frame_size=(W, H), fps=25.0)
    args.update(kw)
    return masklet_to_videorectangle(boxes, **args)


# ---------------------------------------------------------------- labelconfig


def test_video_config_from_captured_setup():
    cfg = _video_config()
    assert (cfg.kind, cfg.object_name, cfg.object_type, cfg.value_key) == ("video", "video", "Video", "video")
    assert cfg.output.name == "box" and cfg.output.type == "VideoRectangle"
    assert cfg.output_labels == ("Car",)
    assert [c.name for c in cfg.controls["Labels"]] == ["videoLabels"]
    assert cfg.fps() == 25.0
    assert cfg.media(REQUESTS["predict_batch"]["tasks"][0]["data"]) == "/data/upload/1/97ceda74-clip.mp4"


def test_video_framerate_default_case_and_task_data():
    base = '<View><Video name="v" value="$v" {}/><VideoRectangle name="b" toName="v"/></View>'
    assert parse_label_config(base.format("")).fps() == 24.0
    assert parse_label_config(base.format('frameRate="29.97"')).fps() == 29.97
    cfg = parse_label_config(base.format('framerate="$fps"'))
    assert cfg.fps({"v": "x.mp4", "fps": 30}) == 30.0
    assert cfg.fps({"v": "x.mp4", "fps": "29.97"}) == 29.97
    # as Label Studio's editor reads them: missing, 0 or not a number -> 24; below 1 -> 1 / F
    for data in ({"v": "x.mp4"}, {"fps": 0}, {"fps": "fast"}, {"fps": None}, {"fps": ""}):
        assert cfg.fps(data) == 24.0
    assert cfg.fps({"fps": 0.5}) == 2.0 and cfg.fps({"fps": "0.25"}) == 4.0
    for bad in (-5, "-1", "Infinity"):
        with pytest.raises(LabelConfigError, match="framerate"):
            cfg.fps({"fps": bad})
    assert parse_label_config(base.format('framerate="0"')).fps() == 24.0
    assert parse_label_config(base.format('framerate="$meta.fps"')).fps({"meta": {"fps": 50}}) == 50.0
    assert cfg.output_labels == ()


def test_image_sequence_and_image_configs():
    cfg = parse_label_config(SEQ_XML)
    assert (cfg.kind, cfg.object_name, cfg.value_key) == ("image_sequence", "frames", "frames")
    assert cfg.output.type == "BrushLabels" and cfg.output_labels == ("Car", "Person", "Dog")
    assert cfg.control_names("KeyPointLabels", "RectangleLabels") == {"kp", "rect"}
    assert cfg.media({"frames": ["a.jpg", "b.jpg"]}) == ["a.jpg", "b.jpg"]
    cfg = parse_label_config(IMAGE_BITMASK_XML)
    assert (cfg.kind, cfg.output.type, cfg.output.name) == ("image", "BitmaskLabels", "bm")


@pytest.mark.parametrize(
    "xml",
    [
        "<View><Image",  # not XML
        '<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
        '<View><Video name="v" value="$v"/><Labels name="l" toName="v"><Label value="a"/></Labels></View>',
        '<View><Image name="i" value="$i"/>'
        '<RectangleLabels name="r" toName="i"><Label value="a"/></RectangleLabels></View>',
        '<View><Video name="v" value="$v"/><VideoRectangle name="b" toName="v"/>'
        '<Video name="w" value="$w"/><VideoRectangle name="c" toName="w"/></View>',
        '<View><Video name="v" value="http://x/clip.mp4"/><VideoRectangle name="b" toName="v"/></View>',
    ],
)
def test_unsupported_configs_raise(xml):
    with pytest.raises(LabelConfigError, match="Supported label configs") as info:
        parse_label_config(xml)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- regions the user sees


def test_current_regions_captured_interactive():
    req = REQUESTS["predict_interactive"]
    regions = current_regions(req["tasks"][0], req["params"]["context"])
    assert [r["id"] for r in regions] == ["userbox1"]
    batch = REQUESTS["predict_batch"]
    assert current_regions(batch["tasks"][0], batch["params"]["context"]) == []


def test_current_regions_draft_annotation_context_merge():
    def region(rid, x):
        return {"id": rid, "type": "videorectangle", "from_name": "box", "to_name": "video", "value": {"x": x}}

    task = {
        "annotations": [
            {"id": 1, "updated_at": "2026-01-01T10:00:00Z", "result": [region("a", 1)]},
            {"id": 2, "updated_at": "2026-01-02T10:00:00Z", "result": [region("a", 2), region("b", 2)]},
            {"id": 3, "updated_at": "2026-01-03T10:00:00Z", "was_cancelled": True, "result": [region("z", 3)]},
        ],
        "drafts": [],
    }
    assert [(r["id"], r["value"]["x"]) for r in current_regions(task)] == [("a", 2), ("b", 2)]
    task["drafts"] = [
        {"id": 7, "annotation": 2, "updated_at": "2026-01-04T10:00:00Z", "result": [region("a", 4), region("c", 4)]},
        {"id": 6, "annotation": 2, "updated_at": "2026-01-03T09:00:00Z", "result": [region("old", 0)]},
    ]
    relation = {"type": "relation", "from_id": "a", "to_id": "c"}  # results without an id are kept as they are
    context = {"result": [region("c", 5), region("new", 5), relation, relation]}
    merged = current_regions(task, context)
    assert [(r.get("id"), r.get("value", {}).get("x")) for r in merged] == [
        ("a", 4), ("c", 5), ("new", 5), (None, None), (None, None)]


def test_current_owner_names_the_annotator_of_the_regions_used():
    """The owner of the regions current_regions uses: the newest draft's user (the id Label Studio puts at the
    end of created_username, else the email), else the newest annotation's completed_by; "" when unknown."""
    req = REQUESTS["predict_interactive"]
    assert current_owner(req["tasks"][0]) == ""  # no draft, no annotation: the first click
    annotation = {"id": 2, "completed_by": 7, "updated_at": "2026-01-02T10:00:00Z", "result": []}
    cancelled = {"id": 3, "completed_by": 8, "updated_at": "2026-01-03T10:00:00Z", "was_cancelled": True}
    task = {"annotations": [annotation, cancelled], "drafts": []}
    assert current_owner(task) == "user:7"
    task["annotations"][0] = dict(annotation, completed_by={"id": 9, "email": "x@example.com"})
    assert current_owner(task) == "user:9"
    draft = {"id": 5, "user": "ann@example.com", "created_username": "Ann Lee ann@example.com, 12",
             "updated_at": "2026-01-04T10:00:00Z", "result": []}
    task["drafts"] = [draft]
    assert current_owner(task) == "user:12"
    task["drafts"] = [dict(draft, created_username="")]
    assert current_owner(task) == "user:ann@example.com"
    task["drafts"] = [dict(draft, created_username=None, user=None)]
    assert current_owner(task) == ""


# ---------------------------------------------------------------- video prompts


def test_video_prompts_captured_interactive():
    req = REQUESTS["predict_interactive"]
    cfg = parse_label_config(req["label_config"])
    objs = video_prompts(current_regions(req["tasks"][0], req["params"]["context"]), cfg, (W, H), frames_count=20)
    assert len(objs) == 1
    obj = objs[0]
    assert (obj.key, obj.label) == ("userbox1", "Car")
    assert [fp.frame for fp in obj.frames] == [0]
    assert obj.frames[0].box == pytest.approx((0.35 * W, 0.31 * H, 0.64 * W, 0.68 * H))
    assert obj.frames[0].points == [] and obj.frames[0].mask is None
    assert obj.user_keyframes == req["params"]["context"]["result"][0]["value"]["sequence"]
    assert obj.region["value"]["framesCount"] == 20


def _vr(rid, sequence):
    return {"id": rid, "type": "videorectangle", "from_name": "box", "to_name": "video",
            "value": {"framesCount": 50, "duration": 2.0, "labels": ["Car"], "sequence": sequence}}


def _key(frame, x=10.0, enabled=True, rotation=0):
    return {"frame": frame, "enabled": enabled, "rotation": rotation, "time": (frame - 1) / 25,
            "x": x, "y": 20.0, "width": 30.0, "height": 40.0}


def test_video_prompts_enabled_disabled_rotation_and_errors():
    cfg = _video_config()
    regions = [_vr("a", [_key(1), _key(10, x=20.0, enabled=False), _key(30, x=40.0)]),
               _vr("only_disabled", [_key(5, enabled=False)]),
               {"id": "other", "type": "labels", "from_name": "videoLabels", "to_name": "video", "value": {}}]
    objs = video_prompts(regions, cfg, (W, H), frames_count=50)
    assert [o.key for o in objs] == ["a"]
    assert [fp.frame for fp in objs[0].frames] == [0, 29]
    assert len(objs[0].user_keyframes) == 3  # the disabled one is kept for the results merge

    rotated = video_prompts([_vr("r", [_key(1, x=50.0, rotation=90)])], cfg, (W, H))[0].frames[0].box
    # 90 degrees about the top-left corner (320, 96): the width (192 px) goes down, the height (192 px) left.
    assert rotated == pytest.approx((128, 96, 320, 288))

    with pytest.raises(PromptError, match="frame"):
        video_prompts([_vr("a", [_key(51)])], cfg, (W, H), frames_count=50)
    with pytest.raises(PromptError, match="zero-area"):
        video_prompts([_vr("a", [dict(_key(1), width=0.0)])], cfg, (W, H))
    with pytest.raises(PromptError, match="zero area"):
        video_prompts([_vr("a", [dict(_key(1), x=120.0)])], cfg, (W, H))


def test_video_round_trip_only_user_keyframes_are_prompts():
    cfg = _video_config()
    user = _key(1, x=100 * 100.0 / W)  # x = 100 px
    user.update(y=50 * 100.0 / H, width=200 * 100.0 / W, height=200 * 100.0 / H)
    boxes = _linear_boxes(50) + np.sin(np.arange(50))[:, None] * 8  # wobbly track, many keyframes
    region = _videorect(boxes, frames_count=50, labels=["Car"], user_keyframes=[user])
    seq = region["value"]["sequence"]
    assert len(seq) > 3 and seq[0] == user  # user keyframe kept verbatim
    assert all(AUTO_KEY in k for k in seq[1:])

    draft = {"drafts": [{"id": 1, "result": [copy.deepcopy(region)]}]}
    objs = video_prompts(current_regions(draft), cfg, (W, H), 50)
    assert [fp.frame for fp in objs[0].frames] == [0]

    moved = copy.deepcopy(region)  # the user drags a computed keyframe: it becomes a prompt
    k = moved["value"]["sequence"][2]
    k["x"] += 1.5
    objs = video_prompts([moved], cfg, (W, H), 50)
    assert [fp.frame for fp in objs[0].frames] == [0, k["frame"] - 1]
    assert len(objs[0].user_keyframes) == 2


# ---------------------------------------------------------------- frames, time, keyframes


@pytest.mark.parametrize("fps", [24.0, 25.0, 29.97, 30.0, 30000 / 1001])
def test_frame_time_round_trip(fps):
    frames = range(1, 20001)
    assert all(time_to_frame(frame_to_time(f, fps), fps) == f for f in frames)
    assert time_to_frame(0.0, fps) == 1


def test_time_to_frame_rounds_half_up_like_javascript():
    assert time_to_frame(0.5 / 25, 25) == 2  # Math.round(0.5) = 1; Python's round(0.5) would give 0
    assert time_to_frame(2.5 / 25, 25) == 4


def test_linear_motion_two_keyframes():
    boxes = _linear_boxes(100, step=(2.0, 1.0, 2.5, 1.5))
    assert select_keyframes(boxes, 0.5) == [0, 99]
    region = _videorect(boxes)
    seq = region["value"]["sequence"]
    assert [(k["frame"], k["enabled"]) for k in seq] == [(1, True), (100, True)]
    assert seq[1]["time"] == pytest.approx(99 / 25)
    assert np.abs(sequence_to_boxes(seq, 100, (W, H)) - boxes).max() < 1e-9


def test_stop_and_go_keyframes_at_the_corners():
    x = np.concatenate([np.arange(0, 20) * 4.0, np.full(15, 80.0), 80 + np.arange(1, 16) * 6.0])  # 50 frames
    boxes = np.stack([x, x * 0 + 40, x + 100, x * 0 + 140], axis=1)
    # moves until 0-based frame 20, stands still until 34, moves again
    assert select_keyframes(boxes, 0.5) == [0, 20, 34, 49]
    seq = _videorect(boxes)["value"]["sequence"]
    assert [k["frame"] for k in seq] == [1, 21, 35, 50]


def _interpolation_error(boxes: np.ndarray, keep: tuple[int, ...]) -> float:
    """Max abs deviation of the linear interpolation between kept indices from every box (written anew here)."""
    worst = 0.0
    for a, b in zip(keep, keep[1:]):
        for k in range(a, b + 1):
            r = (k - a) / (b - a)
            worst = max(worst, float(np.abs(boxes[a] * (1 - r) + boxes[b] * r - boxes[k]).max()))
    return worst


def _fewest_by_brute_force(boxes: np.ndarray, tol: float) -> int:
    n = len(boxes)
    for inner in range(n - 1):
        for middle in itertools.combinations(range(1, n - 1), inner):
            if _interpolation_error(boxes, (0, *middle, n - 1)) <= tol:
                return inner + 2
    raise AssertionError("keeping every frame always fits")


def test_keyframes_are_the_fewest_brute_force_and_fewer_than_greedy():
    rng = np.random.default_rng(3)
    greedy_needed_more = 0
    for trial in range(150):
        n = int(rng.integers(3, 11))
        tol = float(rng.choice([0.5, 1.0, 2.0]))
        boxes = np.array([100.0, 80.0, 200.0, 160.0]) + np.cumsum(rng.normal(0, 1.2, (n, 4)), axis=0)
        keep = select_keyframes(boxes, tol)
        assert keep[0] == 0 and keep[-1] == n - 1 and keep == sorted(set(keep))
        assert _interpolation_error(boxes, tuple(keep)) <= tol + 1e-9
        assert len(keep) == _fewest_by_brute_force(boxes, tol), (trial, boxes, tol, keep)
        greedy = douglas_peucker(boxes, tol)
        assert len(keep) <= len(greedy)
        greedy_needed_more += len(greedy) > len(keep)
    assert greedy_needed_more > 0

    # One such case, small enough to read (x1 only moves): greedy splits at the farthest frame (2), then frame 3
    # is 0.95 px off the line 2 -> 4: 4 keyframes. The line 0 -> 3 passes within 0.77 px of frames 1 and 2.
    x1 = np.array([0.0, 1.0, 2.1, 2.0, 0.0])
    boxes = np.stack([x1, x1 * 0, x1 * 0 + 10, x1 * 0 + 10], axis=1)
    assert douglas_peucker(boxes, 0.9) == [0, 2, 3, 4]
    assert select_keyframes(boxes, 0.9) == [0, 3, 4]


def test_fewest_keyframes_on_long_tracks_within_tolerance():
    rng = np.random.default_rng(1)
    t = np.arange(3000)[:, None]
    smooth = 100 + 50 * np.sin(t / 60 * np.array([1.0, 1.3, 0.7, 1.1]))
    still = np.tile([10.0, 20.0, 30.0, 40.0], (3000, 1))
    walk = 100 + np.cumsum(rng.normal(0, 0.2, (3000, 4)), axis=0)
    for boxes in (smooth, still, walk):
        keep = select_keyframes(boxes, 1.0)
        assert _interpolation_error(boxes, tuple(keep)) <= 1.0 + 1e-6
        assert len(keep) <= len(douglas_peucker(boxes, 1.0))
    assert select_keyframes(still, 1.0) == [0, 2999]


@pytest.mark.parametrize("tol", [0.25, 1.0, 3.0])
def test_tolerance_respected_on_every_frame(tol):
    rng = np.random.default_rng(0)
    steps = rng.normal(0, 2.0, size=(300, 4))
    boxes = np.array([150.0, 100.0, 350.0, 300.0]) + np.cumsum(steps, axis=0)
    region = _videorect(boxes, frames_count=300, tolerance_px=tol)
    seq = region["value"]["sequence"]
    recon = sequence_to_boxes(seq, 300, (W, H))
    assert np.abs(recon - boxes).max() <= tol + 1e-9
    assert len(seq) < 300 if tol >= 1 else len(seq) <= 300
    assert [k["frame"] for k in seq] == sorted({k["frame"] for k in seq})


def test_enabled_toggles_on_disappear_and_reappear():
    boxes = _linear_boxes(40)
    boxes[10:15] = np.nan  # gone on 0-based 10..14
    boxes[25] = np.nan  # one missing frame
    boxes[30:] = np.nan  # gone until the end
    boxes[35] = _linear_boxes(40)[35]  # seen on one frame only
    seq = _videorect(boxes, frames_count=40)["value"]["sequence"]
    assert [(k["frame"], k["enabled"]) for k in seq] == [
        (1, True), (10, False), (16, True), (25, False), (27, True), (30, False), (36, False)]
    recon = sequence_to_boxes(seq, 40, (W, H))
    assert np.array_equal(np.isnan(recon[:, 0]), np.isnan(boxes[:, 0]))
    visible = ~np.isnan(boxes[:, 0])
    assert np.abs(recon[visible] - boxes[visible]).max() <= 1.0


def test_track_shorter_than_video_ends_the_span_and_none_when_never_seen():
    seq = _videorect(_linear_boxes(10), frames_count=20)["value"]["sequence"]
    assert [(k["frame"], k["enabled"]) for k in seq] == [(1, True), (10, False)]
    assert _videorect(np.full((5, 4), np.nan)) is None
    clipped = _videorect(np.array([[-50.0, -10, 100, 100], [600, 400, 700, 500]]), frames_count=2)
    k0, k1 = clipped["value"]["sequence"]
    assert (k0["x"], k0["y"]) == (0.0, 0.0) and k1["x"] + k1["width"] == pytest.approx(100.0)


def test_user_keyframes_merge():
    boxes = _linear_boxes(60)
    user_mid = _key(31, x=50.0)  # far off the track: forced keyframe, kept verbatim
    user_off = _key(45, x=60.0, enabled=False)  # user says the object ends on frame 45
    region = _videorect(boxes, frames_count=60, user_keyframes=[user_mid, user_off], tolerance_px=0.5)
    seq = region["value"]["sequence"]
    by_frame = {k["frame"]: k for k in seq}
    assert by_frame[31] == user_mid and by_frame[45] == user_off
    assert max(by_frame) == 45  # absent after the user's disabled keyframe
    expected = boxes.copy()
    for k in (user_mid, user_off):
        expected[k["frame"] - 1] = sequence_to_boxes([k], k["frame"], (W, H))[-1]
    expected[45:] = np.nan
    recon = sequence_to_boxes(seq, 60, (W, H))
    assert np.array_equal(np.isnan(recon[:, 0]), np.isnan(expected[:, 0]))
    ok = ~np.isnan(expected[:, 0])
    assert np.abs(recon[ok] - expected[ok]).max() <= 0.5 + 1e-9

    # A user's enabled keyframe on which the track ends is closed, and stays a prompt.
    boxes = _linear_boxes(60)
    boxes[31:] = np.nan
    region = _videorect(boxes, frames_count=60, user_keyframes=[_key(31)])
    last = region["value"]["sequence"][-1]
    assert (last["frame"], last["enabled"], last[CLOSED_KEY]) == (31, False, True)
    objs = video_prompts([region], _video_config(), (W, H), 60)
    assert [fp.frame for fp in objs[0].frames] == [30]
    reopened = _videorect(_linear_boxes(60), frames_count=60, user_keyframes=objs[0].user_keyframes)
    k = next(k for k in reopened["value"]["sequence"] if k["frame"] == 31)
    assert k["enabled"] is True and CLOSED_KEY not in k


def test_outputs_validate_with_the_sdk():
    req = REQUESTS["predict_interactive"]
    cfg = parse_label_config(req["label_config"])
    obj = video_prompts(current_regions(req["tasks"][0], req["params"]["context"]), cfg, (W, H), 20)[0]
    boxes = _linear_boxes(20)
    boxes[8:12] = np.nan
    region = masklet_to_videorectangle(
        boxes, region_id=obj.key, from_name=cfg.output.name, to_name=cfg.object_name, frame_size=(W, H),
        fps=cfg.fps(), frames_count=obj.region["value"]["framesCount"], duration=obj.region["value"]["duration"],
        labels=[obj.label], user_keyframes=obj.user_keyframes, score=0.8, origin="prediction")
    assert region["value"]["duration"] == 0.8 and region["score"] == 0.8 and region["origin"] == "prediction"
    assert LabelInterface(req["label_config"]).validate_prediction(prediction([region]), return_errors=True) == []

    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    seq_cfg = parse_label_config(SEQ_XML)
    brush = mask_to_region(seq_cfg, mask, region_id="m1", labels=["Car"], item_index=2, score=0.5, parent_id="obj")
    assert LabelInterface(SEQ_XML).validate_prediction(prediction([brush]), return_errors=True) == []
    bm = mask_to_region(parse_label_config(IMAGE_BITMASK_XML), mask, region_id="m2", labels=["Car"])
    assert bm["type"] == "bitmasklabels" and "item_index" not in bm
    assert LabelInterface(IMAGE_BITMASK_XML).validate_prediction(prediction([bm]), return_errors=True) == []


def test_prediction_score():
    assert prediction([{"score": 0.2}, {"score": 0.6}, {}], model_version="v1") == {
        "result": [{"score": 0.2}, {"score": 0.6}, {}], "score": pytest.approx(0.4), "model_version": "v1"}
    assert prediction([], score=0.9) == {"result": [], "score": 0.9}
    assert "score" not in prediction([{}])


# ---------------------------------------------------------------- masks


def _random_mask(h, w, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    for _ in range(4):
        y, x = rng.integers(0, h), rng.integers(0, w)
        mask[y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] = True
    mask ^= rng.random((h, w)) < 0.02  # speckle: many short runs
    return mask


@pytest.mark.parametrize("shape,seed", [((37, 53), 0), ((120, 160), 1), ((480, 854), 2)])
def test_brush_rle_round_trip_through_the_sdk(shape, seed):
    mask = _random_mask(*shape, seed)
    region = mask_to_brush(mask, region_id="r", from_name="brush", to_name="frames", labels=["Car"], item_index=3)
    assert (region["original_width"], region["original_height"], region["item_index"]) == (shape[1], shape[0], 3)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Car"]
    rgba = decode_rle(region["value"]["rle"]).reshape(*shape, 4)
    assert np.array_equal(rgba[..., 3] > 0, mask) and set(np.unique(rgba)) <= {0, 255}
    assert np.array_equal(decode_brush(region, shape[1], shape[0]), mask)


def test_bitmask_round_trip_and_edge_cases():
    mask = _random_mask(45, 70, 3)
    region = mask_to_bitmask(mask, region_id="b", from_name="bm", to_name="image", labels=["Car"])
    assert region["value"]["imageDataURL"].startswith("data:image/png;base64,")
    assert np.array_equal(decode_bitmask(region, 70, 45), mask)
    empty = mask_to_brush(np.zeros((8, 9), bool), region_id="e", from_name="brush", to_name="frames")
    assert not decode_brush(empty, 9, 8).any() and "brushlabels" not in empty["value"]
    # A mask stored at half resolution is resized (nearest) to the frame.
    small = np.zeros((10, 20), bool)
    small[2:6, 4:10] = True
    big = decode_brush(mask_to_brush(small, region_id="s", from_name="brush", to_name="frames"), 40, 20)
    assert big.shape == (20, 40) and np.array_equal(big, small.repeat(2, 0).repeat(2, 1))
    with pytest.raises(PromptError):
        decode_brush({"id": "x", "value": {"format": "polygon"}}, 4, 4)
    with pytest.raises(PromptError):
        decode_brush({"id": "x", "value": {"format": "rle", "rle": empty["value"]["rle"]},
                      "original_width": 5, "original_height": 5}, 5, 5)
    with pytest.raises(PromptError):
        decode_bitmask({"id": "x", "value": {"imageDataURL": "data:image/jpeg;base64,AAAA"}}, 4, 4)


def test_masks_to_boxes():
    masks = np.zeros((3, 10, 12), bool)
    masks[0, 2:5, 3:7] = True
    masks[2, 9, 11] = True
    boxes = masks_to_boxes(masks)
    assert boxes[0].tolist() == [3, 2, 7, 5] and np.isnan(boxes[1]).all() and boxes[2].tolist() == [11, 9, 12, 10]
    assert np.array_equal(masks_to_boxes({0: masks[0], 2: masks[2]}, 4)[:3], boxes, equal_nan=True)
    assert mask_to_box(np.ones((4, 5), bool)) == (0, 0, 5, 4)


# ---------------------------------------------------------------- image sequence / image prompts


def _kp(rid, item, x, y, label="Car", positive=None, parent=None):
    r = {"id": rid, "type": "keypointlabels", "from_name": "kp", "to_name": "frames", "item_index": item,
         "original_width": W, "original_height": H, "value": {"x": x, "y": y, "width": 1.0, "keypointlabels": [label]}}
    if positive is not None:
        r["is_positive"] = positive
    if parent is not None:
        r["parentID"] = parent
    return r


def _rect(rid, item, x, y, w, h, label="Car"):
    return {"id": rid, "type": "rectanglelabels", "from_name": "rect", "to_name": "frames", "item_index": item,
            "original_width": W, "original_height": H,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def test_image_sequence_prompts_grouping():
    cfg = parse_label_config(SEQ_XML)
    sizes = [(W, H)] * 4
    person = np.zeros((H, W), bool)
    person[100:200, 300:400] = True
    dog_out = np.zeros((H, W), bool)
    dog_out[300:400, 50:150] = True
    regions = [
        _rect("car1", 0, 10, 10, 20, 20),  # 64..192 x 48..144 px
        _kp("k1", 0, 15, 15),  # inside car1 -> car1
        _rect("car2", 0, 50, 50, 20, 20),
        _kp("k2", 0, 16, 16, positive=False),  # inside car1 (not the latest Car) -> car1
        _kp("k3", 2, 90, 90),  # outside everything -> latest Car drawn before it: car2
        mask_to_brush(person, region_id="p1", from_name="brush", to_name="frames", labels=["Person"], item_index=1)
        | {"origin": "manual"},
        _kp("d1", 1, 5, 5, label="Dog"),  # no Dog object yet -> new object "d1"
        mask_to_brush(dog_out, region_id="d1_out", from_name="brush", to_name="frames", labels=["Dog"],
                      item_index=3, parent_id="d1") | {"origin": "prediction"},  # our output: not a prompt
        _kp("d2", 3, 15.625, 72.9, label="Dog", positive=False),  # inside d1's output on frame 3 -> d1
        _kp("x1", 3, 50, 50, parent="car1"),  # explicit parentID
        _kp("k4", 3, 52, 52, parent=""),  # Label Studio's empty default parentID: no parent -> car2
        _kp("neg_only", 0, 90, 5, label="Person", positive=False),  # joins p1 (latest Person)
    ]
    objs = {o.key: o for o in image_prompts(regions, cfg, sizes)}
    assert list(objs) == ["car1", "car2", "p1", "d1"]
    car1 = objs["car1"]
    assert car1.label == "Car" and [fp.frame for fp in car1.frames] == [0, 3]
    f0 = car1.frames[0]
    assert f0.box == pytest.approx((64, 48, 192, 144))
    assert f0.points == [pytest.approx((0.15 * W, 0.15 * H)), pytest.approx((0.16 * W, 0.16 * H))]
    assert f0.point_labels == [1, 0] and f0.mask is None
    assert car1.frames[1].points == [pytest.approx((320, 240))] and car1.frames[1].point_labels == [1]
    assert [fp.frame for fp in objs["car2"].frames] == [0, 2, 3] and objs["car2"].frames[1].point_labels == [1]
    p1 = objs["p1"].frames
    assert [fp.frame for fp in p1] == [0, 1] and np.array_equal(p1[1].mask, person) and p1[0].point_labels == [0]
    d1 = objs["d1"]
    assert d1.label == "Dog" and [(fp.frame, fp.point_labels) for fp in d1.frames] == [(1, [1]), (3, [0])]
    assert all(fp.mask is None for fp in d1.frames)


def test_edited_output_mask_becomes_a_prompt_of_its_object():
    cfg = parse_label_config(SEQ_XML)
    mask = np.zeros((H, W), bool)
    mask[10:50, 10:50] = True
    regions = [_kp("k1", 0, 50, 50),
               mask_to_brush(mask, region_id="k1_out2", from_name="brush", to_name="frames", labels=["Car"],
                             item_index=2, parent_id="k1") | {"origin": "prediction-changed"}]
    (obj,) = image_prompts(regions, cfg, [(W, H)] * 3)
    assert obj.key == "k1" and [fp.frame for fp in obj.frames] == [0, 2]
    assert np.array_equal(obj.frames[1].mask, mask)


def test_image_prompts_errors_and_clamping():
    cfg = parse_label_config(SEQ_XML)
    sizes = [(W, H)] * 2
    (obj,) = image_prompts([_kp("k", 1, 100.1, -0.1)], cfg, sizes)  # 0.64 px / 0.48 px outside: clamped
    assert obj.frames[0].points == [(W, 0.0)]
    with pytest.raises(PromptError, match="outside"):
        image_prompts([_kp("k", 0, 101, 50)], cfg, sizes)
    with pytest.raises(PromptError, match="zero-area"):
        image_prompts([_rect("r", 0, 10, 10, 0, 5)], cfg, sizes)
    with pytest.raises(PromptError, match="item_index"):
        image_prompts([_kp("k", 2, 5, 5)], cfg, sizes)
    no_index = _kp("k", 0, 5, 5)
    del no_index["item_index"]
    with pytest.raises(PromptError, match="item_index"):
        image_prompts([no_index], cfg, sizes)
    with pytest.raises(PromptError, match="already has a box"):
        image_prompts([_rect("r", 0, 1, 1, 5, 5), dict(_rect("r2", 0, 2, 2, 5, 5), parentID="r")], cfg, sizes)
    assert image_prompts([_kp("n", 0, 5, 5, positive=False)], cfg, sizes) == []  # negative alone: no object


def test_single_image_prompts_with_bitmask():
    cfg = parse_label_config(IMAGE_BITMASK_XML)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:60] = True
    bm = mask_to_bitmask(mask, region_id="b1", from_name="bm", to_name="image", labels=["Car"]) | {"origin": "manual"}
    kp = {"id": "k", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
          "value": {"x": 50.0, "y": 50.0, "width": 1, "keypointlabels": ["Car"]}, "is_positive": True}
    (obj,) = image_prompts([bm, kp], cfg, [(80, 60)])
    assert obj.key == "b1" and len(obj.frames) == 1
    fp = obj.frames[0]
    assert fp.frame == 0 and np.array_equal(fp.mask, mask) and fp.points == [(40.0, 30.0)] and fp.point_labels == [1]


def test_a_long_track_is_cut_into_remembered_blocks(monkeypatch):
    """keyframes.BLOCK: a track is cut at every multiple of BLOCK frames (one more keyframe each), the tolerance
    holds on every frame, and a request after a change inside one block scans only that block again."""
    from backend import keyframes

    scanned = []
    select = keyframes.select_keyframes
    monkeypatch.setattr(keyframes, "select_keyframes", lambda b, tol: scanned.append(len(b)) or select(b, tol))
    rng = np.random.default_rng(11)
    n = 3 * keyframes.BLOCK + 100
    boxes = np.array([300.0, 200.0, 500.0, 400.0]) + np.cumsum(rng.normal(0, 0.3, (n, 4)), axis=0)
    first = _videorect(boxes, frames_count=n, tolerance_px=1.0)["value"]["sequence"]
    frames = [k["frame"] - 1 for k in first]
    assert {keyframes.BLOCK, 2 * keyframes.BLOCK, 3 * keyframes.BLOCK} <= set(frames)
    assert np.abs(sequence_to_boxes(first, n, (W, H)) - boxes).max() <= 1.0 + 1e-9
    assert len(frames) <= len(select(boxes, 1.0)) + 3
    assert len(scanned) == 4  # the blocks 0, 1024, 2048, 3072..n-1

    scanned.clear()
    assert _videorect(boxes, frames_count=n, tolerance_px=1.0)["value"]["sequence"] == first
    assert scanned == []  # nothing changed: every block remembered

    changed = boxes.copy()
    changed[1500:1600] += 25.0  # a correction inside block 1024..2048
    again = _videorect(changed, frames_count=n, tolerance_px=1.0)["value"]["sequence"]
    assert scanned == [keyframes.BLOCK + 1]
    assert np.abs(sequence_to_boxes(again, n, (W, H)) - changed).max() <= 1.0 + 1e-9
    head = keyframes.BLOCK + 1  # the Label Studio frame of the first cut
    assert [k for k in again if k["frame"] <= head] == [k for k in first if k["frame"] <= head]
