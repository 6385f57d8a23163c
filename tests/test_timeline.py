"""Video timelines (sam2_model.video.timeline) and frames read through them: variable frame rate, a start time
other than 0, rotation metadata, timestamps out of decode order or repeated, no frame count, no timestamps."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from sam2_model.video.frames import VideoFileSource, VideoReadError
from sam2_model.video.timeline import Timeline
from tests.clips import vfr_pts, write_clip, write_mjpeg_mkv
from tests.test_frames import frame_index, index_frame

MS = Fraction(1, 1000)


def test_variable_frame_rate(tmp_path):
    pts = vfr_pts(90)
    with VideoFileSource(write_clip(tmp_path / "vfr.mp4", pts, MS), cache_frames=0) as src:
        tl = src.timeline
        assert src.frame_count == 90 and tl.starts == pytest.approx(np.asarray(pts) / 1000, abs=1e-4)
        for i in [0, 1, 44, 89]:  # a time inside frame i's interval, its start, and just before the next
            inside = (pts[i] + (pts[i + 1] - pts[i]) / 2 if i < 89 else pts[i] + 5) / 1000
            assert tl.frame_at(inside) == tl.frame_at(pts[i] / 1000) == i
            if i:
                assert tl.frame_at(pts[i] / 1000 - 1e-4) == i - 1
        times = np.asarray(pts[40:60]) / 1000 + 0.001
        assert tl.frame_at(times).tolist() == list(range(40, 60))
        for i in [70, 3, 88, 41, 40, 39]:
            assert frame_index(src.get(i)) == i


def test_start_time_not_zero(tmp_path):
    """Frames stamped from 1.0 s: times are the stream's own (as a browser's currentTime), and times before
    the first frame show the first frame (a browser clamps seeks there)."""
    pts = [30 + i for i in range(45)]
    with VideoFileSource(write_clip(tmp_path / "late.mp4", pts, Fraction(1, 30)), cache_frames=0) as src:
        tl = src.timeline
        assert tl.start == pytest.approx(1.0) and tl.end == pytest.approx(2.5)
        assert tl.frame_at([0.0, 0.5, 1.0, 1.0 + 1 / 60, 1.5 + 1e-3, 9.0]).tolist() == [0, 0, 0, 0, 15, 44]
        assert [frame_index(src.get(i)) for i in (44, 0, 15)] == [44, 0, 15]


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_metadata(tmp_path, rotation):
    """Frames come as a player shows them: turned by the display matrix (as Chromium applies it; not checked
    in a browser by these tests)."""
    path = write_clip(tmp_path / "phone.mp4", range(12), Fraction(1, 30), size=(64, 96), rotation=rotation)
    with VideoFileSource(path) as src:
        assert src.frame_size == ((96, 64) if rotation % 180 else (64, 96))
        for i in (0, 11, 5):
            expected = np.rot90(index_frame(i), rotation // 90).astype(int)
            assert np.abs(src.get(i).astype(int) - expected).mean() < 6


def test_out_of_order_and_repeated_timestamps(tmp_path):
    """Matroska, intra-only: packets stamped 0 40 80 80 200 120 160 240 (ms) in decode order. Frames are the
    distinct timestamps in presentation order; a repeated one is its first packet. No frame count is stored."""
    pts = [0, 1, 2, 2, 5, 3, 4, 6]
    dts = [0, 1, 2, 2, 3, 3, 4, 6]
    path = write_mjpeg_mkv(tmp_path / "messy.mkv", pts, dts)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    shown = [0, 1, 2, 5, 6, 4, 7]  # content (decode-order index) of presentation frames 0..6
    for cache in (0, 4):
        with VideoFileSource(path, cache_frames=cache) as src:
            assert src.frame_count == 7 and src.timeline.starts == pytest.approx(np.arange(7) * 0.04)
            assert [frame_index(src.get(i)) for i in range(7)] == shown
            assert [frame_index(src.get(i)) for i in reversed(range(7))] == shown[::-1]
            assert [frame_index(src.get(i)) for i in (3, 6, 0, 4)] == [shown[i] for i in (3, 6, 0, 4)]


def test_no_frame_count_in_container(tmp_path):
    """A Matroska H.264 clip (no frame count in the container) is counted from its packets."""
    path = tmp_path / "clip.mkv"
    write_clip(path, range(25), Fraction(1, 25))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    with VideoFileSource(path, cache_frames=0) as src:
        assert src.frame_count == 25 and [frame_index(src.get(i)) for i in (24, 0, 13)] == [24, 0, 13]


def test_no_timestamps_is_unreadable(tmp_path):
    """A raw H.264 stream has no timestamps (browsers do not play it either): VideoReadError."""
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoReadError, match="timestamp"):
        VideoFileSource(path)


def test_uniform_timeline():
    tl = Timeline.uniform(10, 25.0)
    assert tl.starts == pytest.approx(np.arange(10) / 25) and tl.end == pytest.approx(0.4)
    assert tl.frame_at([0.0, 0.039, 0.04, 5.0]).tolist() == [0, 0, 1, 9]
    assert tl.keyframe_before(7) == 7 and tl.position(3) == 3 and tl.position(11) is None
