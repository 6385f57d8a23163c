"""Frame sources, preprocessing parity with the reference, and H.264 writing (sam2_model.video.frames)."""
from __future__ import annotations

import random
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sam2_model.video.frames import (
    ArraySource,
    FolderSource,
    VideoFileSource,
    VideoReadError,
    open_frames,
    preprocess_frame,
    write_h264,
)

H, W, N, FPS = 64, 96, 120, 30000 / 1001
BITS = 16  # a 4×4 grid of black/white blocks encodes the frame index


def index_frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """H×W×3 frame whose 4×4 block grid spells `i` in binary (robust to H.264 compression)."""
    frame = np.zeros((h, w, 3), np.uint8)
    for b in range(BITS):
        r, c = divmod(b, 4)
        frame[r * h // 4 : (r + 1) * h // 4, c * w // 4 : (c + 1) * w // 4] = 255 * ((i >> b) & 1)
    frame[..., 1] //= 2  # R > G > B on lit blocks: catches RGB/BGR swaps
    frame[..., 2] //= 4
    return frame


def frame_index(frame: np.ndarray) -> int:
    h, w = frame.shape[:2]
    r, g, b = (frame[..., c].mean() for c in range(3))
    assert (r > 1.5 * g and g > 1.5 * b) or frame.max() < 64, "channels swapped"
    blocks = [frame[r * h // 4 : (r + 1) * h // 4, c * w // 4 : (c + 1) * w // 4, 0] for r in range(4) for c in range(4)]
    return sum(1 << b for b, block in enumerate(blocks) if block.mean() > 128)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_h264(path, (index_frame(i) for i in range(N)), fps=FPS)
    return path


class LateSeeks:
    """A container whose seeks land `late` frames after the requested timestamp (a wrong index), delegating the
    rest to the real PyAV container."""

    def __init__(self, container, timeline, late: int):
        self.container, self.timeline, self.late = container, timeline, late

    def seek(self, offset, **kwargs):
        i = self.timeline.position(offset)
        if i is not None and self.late:
            offset = int(self.timeline.pts[min(i + self.late, len(self.timeline) - 1)])
            kwargs["any_frame"] = True
        return self.container.seek(offset, **kwargs)

    def __getattr__(self, name):
        return getattr(self.container, name)


# -- VideoFileSource ----------------------------------------------------------------------------------


def test_video_metadata(clip):
    with VideoFileSource(clip) as src:
        assert (src.frame_count, len(src), src.frame_size) == (N, N, (H, W))
        assert src.fps == pytest.approx(FPS, abs=1e-3)
        assert src.timeline.starts == pytest.approx(np.arange(N) / FPS, abs=1e-4)
        assert src.timeline.end == pytest.approx(N / FPS, abs=1e-4)
    assert VideoFileSource(clip, fps=10).fps == 10.0


def test_video_random_access(clip):
    rng = random.Random(0)
    order = list(range(N))
    rng.shuffle(order)
    order += [0, N - 1, N - 1, 0, 1, 2, 10, 9, 8, 50, 51, 52, 60, 55, 119, 0, 100, 3]
    with VideoFileSource(clip, cache_frames=0) as src:
        for i in order:
            frame = src.get(i)
            assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
            assert frame_index(frame) == i
        for bad in (-1, N, N + 10):
            with pytest.raises(IndexError):
                src.get(bad)


def test_video_sequential_reads_do_not_seek(clip):
    with VideoFileSource(clip, cache_frames=0) as src:
        seeks = src.stats["seeks"]  # opening read frame 0 and the last frame
        assert [frame_index(src.get(i)) for i in range(1, N)] == list(range(1, N))
        assert src.stats["seeks"] == seeks + 1  # one seek back to frame 1, none for reading on
        assert [frame_index(src.get(i)) for i in range(0, N, 7)] == list(range(0, N, 7))  # forward skips
        assert src.stats["seeks"] == seeks + 2


def test_video_open_is_constant_work(tmp_path, monkeypatch):
    """Opening a 3000-frame video demuxes it once (no decoding) and decodes frame 0 and the last keyframe
    interval (is the end decodable?); opening it again (or
    under another name, as the media cache's rename does) does not read it again."""
    from sam2_model.video import frames as frames_module

    n = 3000
    path = tmp_path / "long.mp4"
    write_h264(path, (index_frame(i, 32, 32) for i in range(n)), fps=25)
    demuxed = []
    real = frames_module.demux_timeline
    monkeypatch.setattr(frames_module, "demux_timeline", lambda *a: demuxed.append(a) or real(*a))
    src = VideoFileSource(path)
    keys = np.flatnonzero(src.timeline.keyframe)
    opened = {"decoded": 1 + n - keys[-1], "seeks": 2}  # frame 0, and the last keyframe interval (tail check)
    assert src.frame_count == n and src.stats == opened and len(demuxed) == 1
    moved = tmp_path / "moved.mp4"
    path.rename(moved)
    again = VideoFileSource(moved)
    assert again.frame_count == n and len(demuxed) == 1
    assert frame_index(again.get(n - 1)) == n - 1 and frame_index(again.get(1234)) == 1234


def test_video_random_access_costs_one_keyframe_interval(tmp_path):
    """Every random access decodes at most the keyframe interval (plus the frame itself), whatever the
    position in the video; stepping backwards reuses the frames decoded on the way."""
    path = tmp_path / "gop.mp4"
    write_h264(path, (index_frame(i, 32, 32) for i in range(600)), fps=30)  # a keyframe at least every 60
    with VideoFileSource(path, cache_frames=0) as src:
        keys = np.flatnonzero(src.timeline.keyframe)
        assert keys[0] == 0 and np.diff(keys).max() <= 60 and len(keys) < 100
        for i in [599, 13, 301, 59, 60, 450, 7, 598, 333]:
            before = src.stats["decoded"]
            assert frame_index(src.get(i)) == i
            assert src.stats["decoded"] - before <= i - src.timeline.keyframe_before(i) + 1
    with VideoFileSource(path, cache_frames=16) as src:
        before = src.stats["decoded"]
        assert [frame_index(src.get(i)) for i in range(299, 179, -1)] == list(range(299, 179, -1))
        cold = sum(i - src.timeline.keyframe_before(i) + 1 for i in range(299, 179, -1))  # one seek per frame
        assert src.stats["decoded"] - before < cold / 3


@pytest.mark.parametrize("late", [1, 5])
def test_video_inexact_seek_is_detected(clip, late):
    """Seeks that land after the target (a wrong container index) still yield the right frames."""
    with VideoFileSource(clip, cache_frames=0) as src:
        src._container = LateSeeks(src._container, src.timeline, late)
        for i in [5, 90, 3, N - 1, 0, 40, 39, 61, 60]:
            assert frame_index(src.get(i)) == i


def test_truncated_video_counts_decodable_frames(clip, tmp_path):
    data = clip.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    decodable = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                decodable += 1
        except av.FFmpegError:
            pass
    assert 0 < decodable < N
    with VideoFileSource(path, cache_frames=0) as src:
        assert src.frame_count == decodable
        for i in [decodable - 1, 0, decodable // 2, decodable - 1]:
            assert frame_index(src.get(i)) == i
        with pytest.raises(IndexError):
            src.get(decodable)


def test_unreadable_media_raise(clip, tmp_path):
    head = tmp_path / "head.mp4"
    head.write_bytes(clip.read_bytes()[:600])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 100)
    for path in (head, junk, text):
        with pytest.raises(VideoReadError, match=path.name):
            open_frames(path)
    assert issubclass(VideoReadError, ValueError)
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "missing.mp4")


def test_video_cache_is_bounded(clip):
    src = VideoFileSource(clip, cache_frames=3)
    for i in [0, 30, 60, 90, 100]:
        src.get(i)
    assert list(src._cache) == [60, 90, 100]
    src.get(10)  # a step backwards keeps the frames decoded on the way (the next backward steps)
    assert list(src._cache) == [8, 9, 10]
    before = dict(src.stats)
    frame = src.get(9)
    assert frame_index(frame) == 9 and src.stats == before and frame is src.get(9)  # served from the cache
    assert not frame.flags.writeable
    src.close()
    src.close()
    with pytest.raises(ValueError, match="closed"):
        src.get(0)


def test_video_thread_safe(clip):
    src = VideoFileSource(clip, cache_frames=2)
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(40):
            i = rng.randrange(N)
            if frame_index(src.get(i)) != i:
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- FolderSource / ArraySource / open_frames ----------------------------------------------------------


def test_folder_source_ordering(tmp_path):
    numeric = tmp_path / "numeric"
    numeric.mkdir()
    for i, name in [(10, "10.jpg"), (2, "2.png"), (1, "00001.JPEG"), (3, "3.jpeg")]:
        Image.fromarray(index_frame(i)).save(numeric / name, quality=95)
    (numeric / "notes.txt").write_text("ignored")
    src = open_frames(numeric)
    assert isinstance(src, FolderSource) and (src.frame_count, src.frame_size, src.fps) == (4, (H, W), 0.0)
    assert [frame_index(src.get(i)) for i in range(4)] == [1, 2, 3, 10]

    named = tmp_path / "named"
    named.mkdir()
    for i, name in [(7, "b.png"), (5, "a.jpg"), (9, "frame_10.png")]:
        Image.fromarray(index_frame(i)).save(named / name, quality=95)
    src = FolderSource(named, fps=12)
    assert src.fps == 12.0 and [frame_index(src.get(i)) for i in range(3)] == [5, 7, 9]
    with pytest.raises(IndexError):
        src.get(3)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no .jpg"):
        open_frames(empty)


def test_array_source():
    stack = np.stack([index_frame(i) for i in range(5)])
    src = open_frames(stack, fps=24)
    assert isinstance(src, ArraySource) and (len(src), src.frame_size, src.fps) == (5, (H, W), 24.0)
    assert np.shares_memory(src.get(3), stack) and frame_index(src.get(3)) == 3
    frames = [index_frame(i) for i in range(3)]
    src = ArraySource(frames)
    assert src.get(2) is frames[2] and src.fps == 0.0
    with pytest.raises(IndexError):
        src.get(-1)
    with pytest.raises(ValueError):
        ArraySource([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(TypeError):
        open_frames(42)
    assert open_frames(src) is src


# -- preprocess_frame ------------------------------------------------------------------------------------


def test_preprocess_matches_reference(tmp_path):
    misc = pytest.importorskip("sam2.utils.misc")
    import torch

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:160]
    smooth = np.stack([xx * 1.5, yy * 2.5, (xx + yy) % 256], -1).astype(np.uint8)
    for i, img in enumerate([rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), smooth, index_frame(7, 90, 160)]):
        Image.fromarray(img).save(tmp_path / f"{i:05d}.jpg", quality=90)
    src = FolderSource(tmp_path)
    for size in (1024, 256):
        ref, height, width = misc.load_video_frames(
            str(tmp_path), size, offload_video_to_cpu=True, compute_device=torch.device("cpu")
        )
        ours = torch.stack([preprocess_frame(src.get(i), size) for i in range(len(src))])
        assert (height, width) == src.frame_size
        assert ours.dtype == torch.float32 and ours.shape == ref.shape == (3, 3, size, size)
        assert (ours - ref).abs().max().item() == 0.0
    with pytest.raises(ValueError):
        preprocess_frame(np.zeros((4, 4), np.uint8), 16)


# -- write_h264 ------------------------------------------------------------------------------------------


def test_write_h264_odd_size_and_errors(tmp_path):
    path = tmp_path / "odd.mp4"
    frames = [index_frame(i, 33, 47) for i in range(4)]
    write_h264(path, frames, fps=12.5)
    with VideoFileSource(path) as src:
        assert (src.frame_count, src.frame_size) == (4, (34, 48)) and src.fps == pytest.approx(12.5)
        for i in range(4):
            got = src.get(i)[:33, :47].astype(int)
            assert np.abs(got - frames[i]).mean() < 4
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
    with pytest.raises(ValueError, match="no frames"):
        write_h264(tmp_path / "empty.mp4", [], fps=10)
    with pytest.raises(ValueError, match="size"):
        write_h264(tmp_path / "mixed.mp4", [index_frame(0), index_frame(1, 32, 32)], fps=10)
    with pytest.raises(ValueError):
        write_h264(tmp_path / "nofps.mp4", frames, fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]  # no partial files left behind

