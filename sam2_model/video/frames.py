"""Frame sources for the video engine, decoded lazily with bounded memory, plus frame preprocessing and
browser-playable H.264 writing.

Video files are read with PyAV through their timeline (timeline.py): frame i is the i-th presentation
timestamp, reached by a timestamp seek to the keyframe before it and decoding up to it.

Every source yields H×W×3 uint8 RGB frames by index ``0 <= idx < frame_count``; no source holds the
whole clip in memory (a video file keeps only a small LRU of decoded frames).
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Union

import av
import cv2
import numpy as np
import torch
from PIL import Image

from .timeline import Timeline, cached_timeline, demux_timeline, file_key, remember_timeline

logger = logging.getLogger(__name__)

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# FFmpeg's tty demuxer "plays" text files (.txt, .nfo, ...) as ANSI-art video: not media we accept.
TEXT_CODEC_TAGS = ("ansi",)
KEYFRAME_SECONDS = 2.0  # keyframe interval of the videos write_h264 makes

PathLike = Union[str, os.PathLike]


class VideoReadError(ValueError):
    """Media that cannot be read: not a video, corrupt or truncated beyond use, or without any frame."""


class FrameSource(ABC):
    """Random access to the frames of one clip.

    Attributes:
        frame_count: number of frames; valid indices are ``0 <= idx < frame_count``.
        fps: frames per second, 0.0 when unknown (image folders and arrays without a given rate).
        frame_size: (height, width) of every frame.
    """

    frame_count: int
    fps: float
    frame_size: tuple[int, int]

    def __len__(self) -> int:
        return self.frame_count

    @abstractmethod
    def get(self, idx: int) -> np.ndarray:
        """H×W×3 uint8 RGB frame `idx`. Raises IndexError unless ``0 <= idx < frame_count``
        (negative indices are rejected, not wrapped)."""

    @property
    def timeline(self) -> Timeline:
        """When each frame is shown (seconds); a source without timestamps: a constant rate from 0."""
        return Timeline.uniform(self.frame_count, self.fps)

    def close(self) -> None:
        """Release the resources held (file handles, caches). Idempotent."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_index(self, idx: int) -> int:
        idx = int(idx)
        if not 0 <= idx < self.frame_count:
            raise IndexError(f"frame index {idx} out of range [0, {self.frame_count})")
        return idx


class VideoFileSource(FrameSource):
    """Frames of a video file through PyAV (FFmpeg), addressed through the file's timeline.

    Opening demuxes the file once without decoding (`timeline.demux_timeline`; a file already indexed in this
    process is not read again) and decodes frame 0 (size, rotation). Frame i is the i-th distinct presentation
    timestamp; `timeline` says when each is shown. Frames come rotated as players show them (the stream's
    display matrix, a multiple of 90 degrees), so `frame_size` is the displayed (height, width).

    ``get(idx)`` decodes on when ``idx`` is at most ``max_forward_skip`` frames ahead of the last decoded one,
    else seeks to the keyframe before ``idx`` (by its timestamp) and decodes up to it: O(keyframe interval) per
    random access, whatever the frame rate. A seek that lands after the target (a wrong container index) is
    retried from earlier keyframes, at last from the start. Stepping backwards keeps the frames decoded on the
    way in the cache, so backward tracking does not decode the keyframe interval again for each frame. Returned
    frames are read-only arrays shared with an LRU of ``cache_frames`` frames. Thread-safe. ``stats`` counts
    decoded frames and seeks.
    """

    def __init__(self, path: PathLike, *, fps: float | None = None, cache_frames: int = 8,
                 max_forward_skip: int = 16):
        if cache_frames < 0:
            raise ValueError(f"cache_frames must be >= 0, got {cache_frames}")
        self.path = os.fspath(path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_frames = cache_frames
        self._max_forward_skip = max_forward_skip
        self._lock = threading.Lock()
        self.stats = {"decoded": 0, "seeks": 0}
        self._container = None
        self._decoder = None  # generator of decoded frames, positioned after self._pos
        self._pos = -1  # index of the last frame the decoder returned
        self._last_request = -1
        self._rotation = 0
        if not os.path.isfile(self.path):
            raise FileNotFoundError(self.path)
        self._open()
        key = file_key(self.path)
        timeline = cached_timeline(key)
        if timeline is None:
            try:
                timeline = demux_timeline(self._container, self._stream, self.path)
            except (ValueError, av.FFmpegError) as exc:
                self.close()
                raise VideoReadError(str(exc)) from exc
            remember_timeline(key, timeline)
        self._timeline = timeline
        self.frame_count = len(timeline)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(fps) if fps is not None else float(rate) if rate else 0.0
        self.frame_size = (self._stream.codec_context.height, self._stream.codec_context.width)
        try:
            first = self.get(0)
            self._trim_undecodable_tail()
        except VideoReadError:
            self.close()
            raise
        self.frame_size = first.shape[:2]

    def get(self, idx: int) -> np.ndarray:
        idx = self._check_index(idx)
        with self._lock:
            if self._container is None:
                raise ValueError(f"{self.path}: source is closed")
            frame = self._cache.get(idx)
            if frame is None:
                frame = self._decode(idx)[1]
                self._remember(idx, frame)
            else:
                self._cache.move_to_end(idx)
            self._last_request = idx
            return frame

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def close(self) -> None:
        with self._lock:
            if self._container is not None:
                self._container.close()
                self._container = None
                self._decoder = None
            self._cache.clear()

    # -- decoding ---------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            container = av.open(self.path, metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise VideoReadError(f"{self.path}: not a readable video (unknown format, corrupt or truncated: {exc})"
                                 ) from exc
        if not container.streams.video:
            container.close()
            raise VideoReadError(f"{self.path}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name in TEXT_CODEC_TAGS:
            container.close()
            raise VideoReadError(f"{self.path}: a text file, not a video")
        self._container, self._stream = container, stream

    def _remember(self, idx: int, frame: np.ndarray) -> None:
        if self._cache_frames:
            self._cache[idx] = frame
            self._cache.move_to_end(idx)
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        turns = round((frame.rotation or 0) / 90) % 4
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        rgb.flags.writeable = False
        return rgb

    def _seek(self, key: int) -> None:
        """Position the decoder at keyframe `key` (the container may land earlier, or wrongly later)."""
        self.stats["seeks"] += 1
        self._container.seek(int(self.timeline.pts[key]), stream=self._stream, backward=True)
        self._decoder = self._container.decode(self._stream)
        self._pos = -1

    def _trim_undecodable_tail(self) -> None:
        """Decode the last frame (one keyframe interval); if the end of the file does not decode (truncated), the
        timeline ends after the last frame that does."""
        last = self.frame_count - 1
        if last <= 0:
            return
        pos, frame = self._decode(last)
        if pos < last:
            logger.warning("%s: frames %d..%d are not decodable; the video ends at frame %d", self.path, pos + 1,
                           last, pos)
            tl = self._timeline
            self._timeline = Timeline(tl.pts[: pos + 1], tl.keyframe[: pos + 1], tl.time_base,
                                      float(tl.starts[pos + 1]), tl.shift)
            self.frame_count = pos + 1
        self._remember(pos, frame)

    def _decode(self, idx: int) -> tuple[int, np.ndarray]:
        """(index of the frame decoded, the frame): `idx`, or the frame shown before it when `idx` cannot be decoded."""
        if self._decoder is not None and self._pos < idx <= self._pos + self._max_forward_skip:
            found = self._decode_on(idx, after_seek=False)
            if found is not None:
                return found
        key = self.timeline.keyframe_before(idx)
        for _ in range(3):  # seeks that land after the target: retry from earlier keyframes
            self._seek(key)
            found = self._decode_on(idx, after_seek=True)
            if found is not None:
                return found
            if key == 0:
                break
            key = self.timeline.keyframe_before(key - 1)
        logger.warning("%s: seeking to frame %d is unreliable; decoding from the start", self.path, idx)
        self._container.close()
        self._open()  # ground truth: decode from the first packet
        self._decoder, self._pos = self._container.decode(self._stream), -1
        found = self._decode_on(idx, after_seek=True)
        if found is None:
            raise VideoReadError(f"{self.path}: frame {idx} could not be decoded")
        return found

    def _decode_on(self, idx: int, after_seek: bool) -> tuple[int, np.ndarray] | None:
        """Decode until frame `idx`. None when the decoder is already past it (a late seek). A frame that never
        comes (undecodable packet) is replaced by the last one before it, as a player shows it."""
        backward = idx < self._last_request
        keep = self._cache_frames if backward else 0
        behind: list[tuple[int, av.VideoFrame]] = []  # frames before idx, kept when stepping backwards
        beyond = 0  # frames after idx decoded so far (timestamps out of decode order allow `reorder` of them)
        try:
            for frame in self._decoder:
                self.stats["decoded"] += 1
                pos = self._frame_position(frame)
                if pos is None:
                    continue
                if pos > idx and not behind and after_seek and self._pos < 0:
                    return None
                self._pos = pos
                if pos == idx:
                    for j, f in behind[-keep:] if keep else ():
                        self._remember(j, self._to_rgb(f))
                    return pos, self._to_rgb(frame)
                if pos > idx:
                    beyond += 1
                    if beyond > self._timeline.reorder:
                        break
                    continue
                if behind and pos <= behind[-1][0]:
                    continue  # a repeated or backwards timestamp
                behind.append((pos, frame))
                if len(behind) > max(keep, 1):
                    behind.pop(0)
        except av.FFmpegError as exc:
            logger.warning("%s: decoding towards frame %d failed (%s)", self.path, idx, exc)
        self._decoder = None
        if behind:
            logger.warning("%s: frame %d is not decodable; using frame %d", self.path, idx, behind[-1][0])
            return behind[-1][0], self._to_rgb(behind[-1][1])
        return None

    def _frame_position(self, frame: av.VideoFrame) -> int | None:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:  # no timestamp: the frame after the last one
            return self._pos + 1 if self._pos + 1 < self.frame_count else None
        return self.timeline.position(pts)


class FolderSource(FrameSource):
    """Frames stored as .jpg/.jpeg/.png files (any case) in one folder.

    Files are ordered by ``int(stem)`` when every stem is an integer (like the reference's
    ``<frame_index>.jpg`` folders), else by file name. Images are decoded with PIL (EXIF orientation is
    ignored, as in the reference); `frame_size` comes from the first file's header and every frame must
    match it. `fps` is the given rate, or 0.0 (unknown).
    """

    def __init__(self, folder: PathLike, fps: float | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(str(self.folder))
        files = [p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise VideoReadError(f"{self.folder}: no .jpg/.jpeg/.png frames")
        if all(_is_int(p.stem) for p in files):
            files.sort(key=lambda p: int(p.stem))
        else:
            files.sort(key=lambda p: p.name)
        self.files = files
        self.frame_count = len(files)
        self.fps = float(fps) if fps is not None else 0.0
        try:
            with Image.open(files[0]) as img:
                width, height = img.size
        except OSError as err:
            raise VideoReadError(f"{files[0]}: unreadable image ({err})") from err
        self.frame_size = (height, width)

    def get(self, idx: int) -> np.ndarray:
        path = self.files[self._check_index(idx)]
        try:
            with Image.open(path) as img:
                frame = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise VideoReadError(f"{path}: unreadable image ({err})") from err
        if frame.shape[:2] != self.frame_size:
            raise VideoReadError(f"{path}: size {frame.shape[:2]} differs from the first frame's {self.frame_size}")
        return frame


class ArraySource(FrameSource):
    """Frames held by the caller: an N×H×W×3 uint8 array or a sequence of H×W×3 uint8 arrays.

    Nothing is copied: `get` returns the caller's array (or a view of it). `fps` is the given rate, or 0.0.
    """

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray], fps: float | None = None):
        if len(frames) == 0:
            raise VideoReadError("frame array is empty")
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"expected an N×H×W×3 array, got shape {frames.shape}")
        self._frames = frames
        self.frame_count = len(frames)
        self.fps = float(fps) if fps is not None else 0.0
        self.frame_size = _check_rgb(frames[0], "frame 0").shape[:2]

    def get(self, idx: int) -> np.ndarray:
        idx = self._check_index(idx)
        frame = _check_rgb(self._frames[idx], f"frame {idx}")
        if frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {idx} has size {frame.shape[:2]}, frame 0 has {self.frame_size}")
        return frame


def open_frames(
    source: PathLike | np.ndarray | Sequence[np.ndarray] | FrameSource,
    fps: float | None = None,
    cache_frames: int = 8,
) -> FrameSource:
    """A FrameSource for a video file path, a folder of images, or in-memory frames.

    `fps` overrides the rate a video reports and sets it for folders and arrays (else 0.0). A FrameSource
    is returned as is. Raises FileNotFoundError for a missing path, VideoReadError for unreadable media or
    media without frames, TypeError for anything else.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return FolderSource(path, fps=fps)
        if path.is_file():
            return VideoFileSource(path, fps=fps, cache_frames=cache_frames)
        raise FileNotFoundError(str(path))
    if isinstance(source, (np.ndarray, Sequence)):
        return ArraySource(source, fps=fps)
    raise TypeError(f"cannot read frames from {type(source).__name__}")


def _normalization_table() -> np.ndarray:
    """3×256 float32: the normalized value of every uint8 level per channel, computed in the reference's
    precision (x / 255 in float64 cast to float32, then (x - mean) / std in float32)."""
    levels = (torch.arange(256, dtype=torch.float64) / 255.0).float()
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None]
    return ((levels[None, :] - mean) / std).numpy()


_NORM_TABLE = _normalization_table()


def preprocess_frame(rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """Model input for one H×W×3 uint8 RGB frame: 3×S×S float32 (S = image_size).

    Squash-resize to S×S with PIL bicubic, scale to [0, 1], normalize with the ImageNet mean/std:
    bit-identical to the reference video predictor's frame loading. The scale and normalization are one
    table lookup per pixel; the PIL resize dominates the cost (and releases the GIL).
    """
    rgb = _check_rgb(rgb, "frame")
    resized = Image.fromarray(rgb).resize((image_size, image_size), Image.Resampling.BICUBIC)
    out = np.empty((3, image_size, image_size), dtype=np.float32)
    for c, band in enumerate(resized.split()):
        cv2.LUT(np.asarray(band), _NORM_TABLE[c], dst=out[c])
    return torch.from_numpy(out)


def write_h264(
    path: PathLike, frames: Iterable[np.ndarray], fps: float, crf: int = 18, preset: str = "medium"
) -> None:
    """Encode H×W×3 uint8 RGB frames as browser-playable H.264 (libx264, yuv420p) at `fps`.

    yuv420p needs even dimensions: an odd height or width is padded by repeating the last row or column
    (the video is then one pixel taller or wider than the frames). A keyframe every KEYFRAME_SECONDS
    bounds the decoding a seek costs (here and in the browser). MP4/MOV files get their index at the
    front (``+faststart``) so browsers can play them while streaming. The file is written under a
    temporary name and renamed into place, so `path` never holds a partial video. Raises ValueError for
    no frames, a non-positive fps, or frames of differing size.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.partial{path.suffix}")
    options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    rate = Fraction(float(fps)).limit_denominator(1001)
    count = 0
    try:
        with av.open(str(tmp), mode="w", options=options) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset, "g": str(max(1, round(KEYFRAME_SECONDS * fps)))}
            size = None
            for frame in frames:
                frame = _check_rgb(frame, f"frame {count}")
                if size is None:
                    size = frame.shape[:2]
                    stream.height, stream.width = (size[0] + 1) // 2 * 2, (size[1] + 1) // 2 * 2
                elif frame.shape[:2] != size:
                    raise ValueError(f"frame {count} has size {frame.shape[:2]}, frame 0 has {size}")
                pad = ((0, stream.height - size[0]), (0, stream.width - size[1]), (0, 0))
                if any(p[1] for p in pad):
                    frame = np.pad(frame, pad, mode="edge")
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                video_frame.pts = count
                video_frame.time_base = 1 / rate
                container.mux(stream.encode(video_frame))
                count += 1
            if count == 0:
                raise ValueError("no frames to write")
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_rgb(frame: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"{what}: expected an H×W×3 uint8 RGB array, got {desc}")
    return frame


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
