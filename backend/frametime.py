"""Label Studio 1.23.2's video frames <-> the video's decoded frames, through time.

The editor (web/libs/editor: tags/object/Video/Video.js, components/VideoCanvas/VideoCanvas.tsx, with
FF_VIDEO_FRAME_SEEK_PRECISION, which 1.23.2's feature_flags.json turns on):
- framerate F = Number(parseValue(framerate, task.data)): 0, empty, a missing `$key` or not a number -> 24;
  0 < F < 1 -> 1 / F (`editor_framerate`);
- length = round(video.duration * F);
- the frame shown at currentTime t is clamp(ceil(t * F), 1, length);
- seeking to frame f sets currentTime = round(((clamp(f, 1, length) - 1) / F) / 2 ms) * 2 ms + 2 ms.
The browser then shows the decoded frame whose presentation interval holds currentTime (times are the stream's
own: a clip stamped from 1.0 s starts at 1.0 s; Chromium keeps currentTime at or after it, so the editor's
frames before it show the first frame and a seek there lands on the frame of the start time). Checked in
Chromium by tests/e2e/test_browser_time.py: after a seek to frame f the <video> shows decoded frame
FrameMap.decoded(f) and the editor draws that frame's box, for a 30 fps file under the default 24, a variable
frame rate and a 1.0 s start (whose browser duration is one frame short of the timeline's end, so the
editor's length comes from a region's framesCount when there is one). So editor frame f is decoded frame
timeline.frame_at(seek_time(f)), whatever the file's real, possibly variable, frame rate. Several editor frames can show one decoded frame (F above the
file's rate) and a decoded frame can have no editor frame (F below it).

Bad input (documented choices): a framerate that is negative or not finite makes the editor itself compute
negative or infinite frames: 422. Editor frames below 1 are a 422. Frames up to the editor's length (a region's
framesCount when it has one: the browser's duration may include a longer audio track) show the last frame when
they lie past the video's end; so do frames beyond that length by at most `PAST_END_SLACK_S` (the editor's
length is round(duration * F), often one more than the frames it can show). Frames or times further out belong
to another video or framerate: 422.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from sam2_model.video.timeline import Timeline

DEFAULT_FPS = 24.0  # Label Studio's <Video framerate> default
SEEK_STEP_S = 0.002  # the editor's BROWSER_TIME_PRECISION
PAST_END_SLACK_S = 0.5
_JS_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?Infinity")
_VAR = re.compile(r"\$[\w[\].{}]+")


class FrameTimeError(ValueError):
    """A framerate or editor frame Label Studio's editor cannot show."""


def _js_number(value: Any) -> float:
    """JavaScript's Number(value) for the values task data and attributes hold."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return float(int(text, 16))
        if _JS_DECIMAL.fullmatch(text):
            return float(text.replace("Infinity", "inf"))
    return math.nan


def _lookup(data: Mapping[str, Any] | None, path: str) -> Any:
    """lodash get(data, "a.b[0]") for the editor's parseValue."""
    value: Any = data
    for key in (k for k in re.split(r"[.\[\]]", path) if k):
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def editor_framerate(raw: str | None, task_data: Mapping[str, Any] | None = None) -> float:
    """The frame rate Label Studio's editor uses for `<Video framerate=raw>` on a task with `task_data`."""
    raw = raw or ""
    if _VAR.fullmatch(raw):
        value = _lookup(task_data, raw[1:])
    else:
        value = _VAR.sub(lambda m: str(_lookup(task_data, m.group(0)[1:])), raw)
    fps = _js_number(value)
    if fps == 0 or math.isnan(fps):
        return DEFAULT_FPS
    if fps < 0 or math.isinf(fps):
        raise FrameTimeError(f"<Video> framerate {value!r} (from {raw!r}) is {'negative' if fps < 0 else 'infinite'}"
                             f": Label Studio's editor cannot number this video's frames")
    return 1.0 / fps if fps < 1 else fps


def seek_time(frame: int | np.ndarray, fps: float, length: int) -> float | np.ndarray:
    """currentTime (seconds) the editor seeks to for 1-based `frame`."""
    exact = (np.clip(frame, 1, max(length, 1)) - 1) / fps
    return np.round(exact / SEEK_STEP_S) * SEEK_STEP_S + SEEK_STEP_S


def editor_frame(t: float, fps: float, length: int) -> int:
    """The 1-based frame the editor shows at currentTime `t`."""
    return int(min(max(math.ceil(t * fps), 1), max(length, 1)))


def editor_length(duration: float, fps: float) -> int:
    """The editor's frame count for a video of `duration` seconds (JavaScript's Math.round, half up)."""
    return max(1, math.floor(duration * fps + 0.5))


@dataclass(frozen=True)
class FrameMap:
    """Editor frames (1-based, 1..length) of one video at the editor's `fps`, against its decoded frames."""

    timeline: Timeline
    fps: float
    length: int

    @classmethod
    def for_video(cls, timeline: Timeline, fps: float, frames_count: int | None = None) -> FrameMap:
        """frames_count: the editor's own length when known (a region's framesCount), else computed from the
        timeline's end as video.duration."""
        length = frames_count if frames_count and frames_count > 0 else editor_length(timeline.end, fps)
        return cls(timeline, fps, int(length))

    @cached_property
    def decoded_frames(self) -> np.ndarray:
        """int64 (length,): the decoded frame editor frame f shows, at index f - 1."""
        return np.asarray(self.timeline.frame_at(seek_time(np.arange(1, self.length + 1), self.fps, self.length)))

    def decoded(self, frame: int, what: str = "frame") -> int:
        """0-based decoded frame shown at 1-based editor `frame` (see the module doc for bad frames)."""
        if frame < 1:
            raise FrameTimeError(f"{what}: frame {frame} is before the first frame (frames are 1-based)")
        if frame <= self.length:
            return int(self.decoded_frames[frame - 1])
        t = (frame - 1) / self.fps
        if t > self.timeline.end + PAST_END_SLACK_S:
            raise FrameTimeError(f"{what}: frame {frame} ({t:.3f} s) is beyond the video: it ends at "
                                 f"{self.timeline.end:.3f} s, {self.length} frames at {self.fps:g} fps")
        return len(self.timeline) - 1

    def editor(self, index: int) -> int:
        """1-based editor frame of decoded frame `index`: the first editor frame that shows it, else (a frame the
        editor steps over) the frame the editor reports while playing it, ceil(start * F)."""
        hits = np.flatnonzero(self.decoded_frames == index)
        if len(hits):
            return int(hits[0]) + 1
        return editor_frame(float(self.timeline.starts[index]) + SEEK_STEP_S, self.fps, self.length)

    def decoded_at(self, t: float, what: str = "time") -> int:
        """0-based decoded frame the browser shows at currentTime `t` (seconds); FrameTimeError for negative
        times and times more than PAST_END_SLACK_S after the end."""
        if not t >= 0 or t > self.timeline.end + PAST_END_SLACK_S:
            raise FrameTimeError(f"{what}: {t:g} s is beyond the video: it ends at {self.timeline.end:.3f} s")
        return int(self.timeline.frame_at(t))


def regions_frames_count(regions: list[Mapping[str, Any]]) -> int | None:
    """The editor's frame count as its videorectangle regions recorded it (value.framesCount), if any."""
    counts = [r.get("value", {}).get("framesCount") for r in regions if r.get("type") == "videorectangle"]
    counts = [c for c in counts if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    return max(counts) if counts else None
