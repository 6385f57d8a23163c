"""Automatic masklets on a synthetic H.264 clip (random weights): what `discover` adds follows its coverage rule
against the tracked objects, `track_everything` caps objects, ends absent tracks and never reuses ids."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from oracle import randomize_
from sam2_model import build_model, custom_config
from sam2_model.automatic import MaskGenerator
from sam2_model.video.discovery import coverage, discover, track_everything
from sam2_model.video.frames import write_h264
from sam2_model.video.predictor import VideoPredictor

CFG = custom_config("discovery_test", image_size=128, d_model=32, memory_dim=16)
N, H, W = 8, 64, 96
LOOSE = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
             mask_threshold=0.5, box_nms_thresh=1.0)


def clip(path) -> str:
    """Two coloured squares moving over a dark gradient, as H.264."""
    frames = []
    for t in range(N):
        f = np.zeros((H, W, 3), np.uint8)
        f[..., 2] = np.linspace(0, 80, W, dtype=np.uint8)[None, :]
        f[10:30, 8 + 2 * t:28 + 2 * t] = (230, 200, 40)
        f[36:56, 60 - t:80 - t] = (40, 220, 90)
        frames.append(f)
    write_h264(path, frames, fps=10)
    return str(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return clip(tmp_path_factory.mktemp("discovery") / "clip.mp4")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(build_model(CFG), seed=1).eval()  # masks of varied sizes (default init: near-empty)


@pytest.fixture
def session(model, video):
    s = VideoPredictor(model).open(video)
    yield s
    s.close()


def check_rule(records, added, covered, max_overlap, cap_left):
    """Replays `discover`'s rule on the generator's records: exactly the masks it should add were added."""
    expected = []
    for r in sorted(records, key=lambda r: -r["predicted_iou"]):
        if len(expected) == cap_left:
            break
        if coverage(r["segmentation"], covered) <= max_overlap:
            expected.append(r)
            covered = covered | r["segmentation"]
    assert [d.record["point_coords"] for d in added] == [r["point_coords"] for r in expected]
    for d, r in zip(added, expected):
        assert np.array_equal(d.record["segmentation"], r["segmentation"])


def test_discover_on_first_frame_and_again_later(session):
    gen = MaskGenerator(session.model, **LOOSE)
    records0 = gen.generate(session.frames.get(0), features=session.frame_features(0))
    assert len(records0) >= 3  # enough masks for the rule to matter
    ids = itertools.count()
    added = discover(session, gen, 0, ids, max_overlap=0.3)
    assert 1 <= len(added) < len(records0)  # some masks overlap earlier ones and are skipped
    check_rule(records0, added, np.zeros((H, W), bool), 0.3, 50)
    assert session.obj_ids == [d.obj_id for d in added] == list(range(len(added)))

    for result in session.propagate(start_frame=0, max_frames=4):
        pass
    before = session.result(4)
    covered = np.zeros((H, W), bool)
    for m, score in zip(before.masks, before.object_scores):
        if score > 0:
            covered |= m
    records4 = gen.generate(session.frames.get(4), features=session.frame_features(4))
    n_before = len(session.objects)
    added4 = session.discover(gen, 4, ids, max_overlap=0.3)  # the session's shortcut
    check_rule(records4, added4, covered, 0.3, 50)
    assert [d.obj_id for d in added4] == list(range(len(added), len(added) + len(added4)))
    assert len(session.objects) == n_before + len(added4)


def test_discover_respects_the_cap(session):
    gen = MaskGenerator(session.model, **LOOSE)
    assert len(discover(session, gen, 0, itertools.count(), max_overlap=1.0, max_objects=2)) == 2
    assert discover(session, gen, 1, itertools.count(10), max_overlap=1.0, max_objects=2) == []
    assert len(session.objects) == 2


def test_track_everything_caps_and_streams(session):
    gen = MaskGenerator(session.model, **LOOSE)
    frames, counts, ids = [], [], []
    for result, found in track_everything(session, gen, every=3, max_overlap=0.3, max_objects=3):
        frames.append(result.frame_idx)
        counts.append(len(result.obj_ids))
        ids += [d.obj_id for d in found]
        assert result.masks.shape == (len(result.obj_ids), H, W)
    assert frames == list(range(N))
    assert max(counts) == 3 and all(c <= 3 for c in counts)
    assert ids == sorted(set(ids))  # never reused


def test_absent_tracks_end(model, video):
    absent = build_model(CFG).eval()
    absent.load_state_dict(model.state_dict())
    score_bias = [p for name, p in absent.named_parameters() if "obj_score" in name and name.endswith("bias")]
    assert score_bias
    with torch.no_grad():
        score_bias[-1].fill_(-50.0)  # every tracked frame: object absent
    gen = MaskGenerator(absent, **LOOSE)
    for end_after, alive_at_end in ((2, False), (None, True)):
        s = VideoPredictor(absent).open(video)
        results = [r for r, _ in track_everything(s, gen, every=100, max_overlap=0.3, end_after=end_after)]
        assert len(results[0].obj_ids) > 0  # discovered on frame 0 (prompted masks are outputs as given)
        assert (len(results[-1].obj_ids) > 0) == alive_at_end
        if end_after:
            assert results[1].obj_ids == results[0].obj_ids and results[2].obj_ids == []
        s.close()


@pytest.mark.parametrize("kwargs,message", [
    (dict(every=0), "every"),
    (dict(max_overlap=1.5), "max_overlap"),
    (dict(max_objects=-1), "max_objects"),
    (dict(end_after=0), "end_after"),
])
def test_bad_options(session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(track_everything(session, MaskGenerator(session.model, **LOOSE), **kwargs))


def test_bad_generator_and_busy_session(session):
    rle = MaskGenerator(session.model, output_mode="uncompressed_rle", **LOOSE)
    with pytest.raises(ValueError, match="binary_mask"):
        discover(session, rle, 0, itertools.count())
    session.add_prompt(0, "user", points=[[20, 20]], labels=[1])
    with pytest.raises(ValueError, match="without objects"):
        next(track_everything(session, MaskGenerator(session.model, **LOOSE)))


def test_one_colour_video(model, tmp_path):
    path = tmp_path / "flat.mp4"
    write_h264(path, [np.full((H, W, 3), 90, np.uint8)] * 4, fps=10)
    s = VideoPredictor(model).open(str(path))
    gen = MaskGenerator(model, points_per_side=4, pred_iou_thresh=1.0)  # nothing survives
    results = [r for r, _ in track_everything(s, gen, every=2)]
    assert [r.obj_ids for r in results] == [[]] * 4
    s.close()
