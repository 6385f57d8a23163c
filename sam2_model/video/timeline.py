"""When each frame of a video is shown: presentation timestamps read by demuxing (no decoding).

A `Timeline` holds, for frames in presentation order, the start time of each (seconds, the stream's own clock as
browsers report `currentTime`: a clip whose first frame is stamped 1.0 s starts at 1.0 s) and its position in
the stream's time base. Frame i is shown on [starts[i], starts[i+1]); the last frame until `end`.

Choices for unusual files (each logged once per file):
- packets without any timestamp (no pts, no dts) are not frames of the timeline; a stream with none at all is
  unreadable (VideoReadError);
- packets marked discard (edit-list priming) or corrupt (truncated at the end of the file) are left out, as
  decoders and browsers drop them;
- frames are ordered by presentation time, whatever the decode order (B-frames, timestamps going backwards);
  a repeated timestamp is one frame (the first packet in decode order with it);
- a negative first timestamp is shifted to 0 (browsers start the timeline at 0 then).
Built once per file: `read_timeline` keeps the last timelines by (device, inode, size, mtime), so a file that
was validated once is not demuxed again when a session opens it (a rename keeps the key).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

logger = logging.getLogger(__name__)

CACHE_SIZE = 64  # timelines kept per process


@dataclass(frozen=True, eq=False)
class Timeline:
    """Presentation times of N frames.

    pts: int64 (N,) strictly increasing, in `time_base`; keyframe: bool (N,), True where decoding can start;
    starts: float64 (N,) seconds (pts * time_base - shift); end: seconds where the last frame stops showing;
    reorder: at most how many later frames can come before a frame in decode order (0 for files stored in
    presentation order; a bound, from the packets' order).
    """

    pts: np.ndarray
    keyframe: np.ndarray
    time_base: Fraction
    end: float
    shift: float = 0.0
    reorder: int = 0

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Seconds; pts * num / den rounds once, so a timestamp of 1914 ms is exactly the float 1.914."""
        return self.pts * self.time_base.numerator / self.time_base.denominator - self.shift

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def start(self) -> float:
        return float(self.starts[0])

    def frame_at(self, t: float | np.ndarray) -> int | np.ndarray:
        """0-based frame shown at time `t` (seconds; scalar or array): the frame whose interval holds t; times
        before the first frame give frame 0, times after the end the last frame (a player clamps its seeks)."""
        idx = np.searchsorted(self.starts, np.asarray(t, dtype=np.float64), side="right") - 1
        idx = np.clip(idx, 0, len(self.pts) - 1)
        return int(idx) if np.ndim(idx) == 0 else idx

    def keyframe_before(self, idx: int) -> int:
        """The last keyframe at or before frame `idx` (frame 0 when there is none)."""
        keys = np.flatnonzero(self.keyframe[: idx + 1])
        return int(keys[-1]) if len(keys) else 0

    def position(self, pts: int) -> int | None:
        """The frame whose timestamp is `pts`, or None."""
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else None

    @staticmethod
    def uniform(count: int, fps: float) -> Timeline:
        """N frames at a constant rate from time 0 (fps <= 0: one frame per second)."""
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(1)
        return Timeline(np.arange(count, dtype=np.int64), np.ones(count, bool), 1 / rate, float(count / rate))


def demux_timeline(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   what: str = "video") -> Timeline:
    """Read every packet of `stream` (no decoding) into a Timeline; see the module doc for unusual files.
    Raises ValueError when no packet carries a timestamp."""
    stamps, keys, durations = [], [], []
    skipped = untimed = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.is_discard or packet.is_corrupt:
            skipped += 1
            continue
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            untimed += 1
            continue
        stamps.append(ts)
        keys.append(packet.is_keyframe)
        durations.append(packet.duration or 0)
    if not stamps:
        raise ValueError(f"{what}: no video packet carries a timestamp")
    if skipped or untimed:
        logger.warning("%s: %d discarded/corrupt and %d untimed packets are not frames", what, skipped, untimed)
    raw = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(raw, kind="stable")
    pts, first = np.unique(raw[order], return_index=True)  # first occurrence in decode order
    picked = order[first]
    if len(pts) < len(raw):
        logger.warning("%s: %d frames repeat an earlier timestamp and are dropped", what, len(raw) - len(pts))
    keyframe = np.asarray(keys, dtype=bool)[picked]
    rank = np.empty(len(pts), dtype=np.int64)
    rank[np.argsort(picked, kind="stable")] = np.arange(len(pts))  # presentation index, in decode order
    reorder = int(max(0, (np.maximum.accumulate(rank)[:-1] - rank[1:]).max(initial=0)))
    time_base = Fraction(stream.time_base)
    if len(pts) > 1:
        step = int(np.median(np.diff(pts)))
    else:
        step = int(durations[0]) or max(1, round(1 / (float(stream.average_rate or 25) * time_base)))
    last = int(durations[picked[-1]]) or step
    end = float((pts[-1] + last) * time_base)
    shift = min(0.0, float(pts[0] * time_base))
    return Timeline(pts, keyframe, time_base, end - shift, shift, reorder)


_cache: OrderedDict[tuple, Timeline] = OrderedDict()
_cache_lock = threading.Lock()


def file_key(path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def cached_timeline(key: tuple) -> Timeline | None:
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
        return found


def remember_timeline(key: tuple, timeline: Timeline) -> None:
    with _cache_lock:
        _cache[key] = timeline
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
