"""Synthetic clips with unusual timing for the frame/time tests: any presentation timestamps, a start time,
rotation metadata, out-of-order or repeated timestamps. Frame i shows `index_frame(i)` (its index in binary)."""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.test_frames import index_frame


def write_clip(path: Path, pts: Sequence[int], time_base: Fraction, size: tuple[int, int] = (64, 96),
               rotation: int = 0, gop: int = 10, rate: int = 30) -> Path:
    """H.264 clip whose i-th frame (index_frame(i)) has timestamp pts[i] (in time_base); `rotation`: the
    display matrix's counterclockwise degrees (phones store -90 for a portrait clip)."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = {"g": str(gop), "bf": "2"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_frame(i, h, w), format="rgb24")
            frame.pts, frame.time_base = int(p), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_mjpeg_mkv(path: Path, pts: Sequence[int], dts: Sequence[int], time_base: Fraction = Fraction(1, 25),
                    size: tuple[int, int] = (64, 96)) -> Path:
    """Matroska clip of intra-only frames with the given packet timestamps, in this (decode) order: timestamps
    may go backwards or repeat. Matroska stores no frame count."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        stream.time_base = time_base
        for i, (p, d) in enumerate(zip(pts, dts)):
            frame = av.VideoFrame.from_ndarray(index_frame(i, h, w), format="rgb24")
            frame.pts, frame.time_base = i, time_base
            for packet in stream.encode(frame):
                packet.pts, packet.dts = int(p), int(d)
                container.mux(packet)
    return path


def vfr_pts(count: int, seed: int = 0) -> list[int]:
    """Millisecond timestamps with irregular gaps (20 to 80 ms), as phones record."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[0], np.cumsum(rng.choice([20, 33, 41, 50, 80], count - 1))]).tolist()
