"""Frame sources for the video engine, decoded lazily with bounded memory, plus frame preprocessing and
browser-playable H.264 writing.

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
    """Frames of a video file through OpenCV's FFmpeg backend.

    Opening reads the container metadata, then (``verify_frame_count=True``) checks the claimed last frame
    with one seek and one or two reads: work bounded by the keyframe interval, independent of the video
    length. If the metadata count is wrong, the count of decodable frames is used instead: frames beyond
    the claim are counted by reading on; a claim that cannot be confirmed (truncated file, inconsistent
    timestamps) or no count at all costs one sequential decode of the file. ``verify_frame_count=False``
    trusts a positive metadata count and reads no frame at open.

    ``get(idx)`` reads on when ``idx`` is the next frame or at most ``max_forward_skip`` frames ahead,
    and seeks otherwise. A seek is accepted only if OpenCV's position says it landed exactly on ``idx``;
    otherwise the frame is reached by decoding forward from the start of the file, and later seeks are
    no longer trusted. Returned frames are read-only arrays shared with an LRU of ``cache_frames``
    frames. Thread-safe.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        fps: float | None = None,
        cache_frames: int = 8,
        max_forward_skip: int = 16,
        verify_frame_count: bool = True,
    ):
        if cache_frames < 0:
            raise ValueError(f"cache_frames must be >= 0, got {cache_frames}")
        self.path = os.fspath(path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_frames = cache_frames
        self._max_forward_skip = max_forward_skip
        self._lock = threading.Lock()
        self._seek_trusted = True
        self._cap: cv2.VideoCapture | None = None
        self._next = 0  # index of the frame the next cap.read() returns
        self._open_capture()
        cap = self._cap
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.fps = float(fps) if fps is not None else float(cap.get(cv2.CAP_PROP_FPS))
        claimed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_size = (height, width)
        if claimed > 0 and not verify_frame_count:
            self.frame_count = claimed
        else:
            self.frame_count = self._verified_count(claimed)
        if self.frame_count <= 0:
            self.close()
            raise VideoReadError(f"{self.path}: no decodable video frame")
        if claimed != self.frame_count:
            logger.warning("%s: container claims %d frames, %d decodable", self.path, claimed, self.frame_count)

    def get(self, idx: int) -> np.ndarray:
        idx = self._check_index(idx)
        with self._lock:
            if self._cap is None:
                raise ValueError(f"{self.path}: source is closed")
            frame = self._cache.get(idx)
            if frame is None:
                frame = self._decode(idx)
                if self._cache_frames:
                    self._cache[idx] = frame
                    if len(self._cache) > self._cache_frames:
                        self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(idx)
            return frame

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            self._cache.clear()

    # -- decoding ---------------------------------------------------------------------------------------

    def _open_capture(self) -> None:
        if self._cap is not None:
            self._cap.release()
        if not os.path.isfile(self.path):
            raise FileNotFoundError(self.path)
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise VideoReadError(f"{self.path}: not a readable video (unknown format, corrupt or truncated)")
        tag = (int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1")
        if tag.lower() in TEXT_CODEC_TAGS:
            cap.release()
            raise VideoReadError(f"{self.path}: a text file, not a video")
        self._cap = cap
        self._next = 0

    def _read(self) -> np.ndarray | None:
        """Decode the next frame as a read-only RGB array, or None at the end of the decodable data."""
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        self._next += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        return rgb

    def _skip_to(self, idx: int) -> bool:
        """Decode forward (without colour conversion) until the next frame is `idx`."""
        while self._next < idx:
            if not self._cap.grab():
                return False
            self._next += 1
        return True

    def _seek(self, idx: int) -> bool:
        """Position the capture so that the next read returns `idx`; True if OpenCV confirms it."""
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        self._next = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        return self._next == idx

    def _read_checked(self, idx: int) -> np.ndarray | None:
        """Read frame `idx` (the next one) and confirm OpenCV's position moved to idx + 1."""
        frame = self._read()
        if frame is not None and int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) == idx + 1:
            return frame
        return None

    def _decode(self, idx: int) -> np.ndarray:
        if 0 <= idx - self._next <= self._max_forward_skip or (idx > self._next and not self._seek_trusted):
            if self._skip_to(idx):
                frame = self._read()
                if frame is not None:
                    return frame
        elif self._seek_trusted:
            if self._seek(idx):
                frame = self._read_checked(idx)
                if frame is not None:
                    return frame
            logger.warning("%s: seek to frame %d is not frame-accurate; decoding from the start", self.path, idx)
            self._seek_trusted = False
        self._open_capture()  # ground truth: decode from the first frame
        frame = self._read() if self._skip_to(idx) else None
        if frame is None:
            raise VideoReadError(f"{self.path}: frame {idx} could not be decoded")
        return frame

    def _verified_count(self, claimed: int) -> int:
        """Number of decodable frames, using `claimed` (the container's count) when it checks out."""
        if claimed > 0 and self._seek(claimed - 1):
            last = self._read_checked(claimed - 1)
            if last is not None:
                self.frame_size = last.shape[:2]
                extra = 0
                while self._cap.grab():  # frames beyond the claim, if any
                    extra += 1
                self._open_capture()
                return claimed + extra
        self._open_capture()
        count = 0
        while self._cap.grab():
            count += 1
        if claimed > 0 and count == claimed:
            self._seek_trusted = False  # the claim was right, so the seek itself was wrong
        self._open_capture()
        return count


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
