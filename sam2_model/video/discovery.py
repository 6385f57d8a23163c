"""Automatic masklets: objects found without prompts by the automatic mask generator, tracked through a video.

`discover` adds, on one frame, the generator's masks that tracked objects do not already cover (each becomes
a new object prompted with its mask); `track_everything` discovers on the first frame, tracks frame by frame,
discovers again every `every` frames, caps the number of objects and ends the tracks of objects absent for
`end_after` frames. Each discovery frame is embedded once (the session's cached features serve both the
generator and the tracker); frames are tracked one at a time, so memory stays that of the session.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..automatic import MaskGenerator
from .session import FrameResult, VideoSession


class Discovery(NamedTuple):
    """One object added by `discover`: its id and the generator's record of its mask."""

    obj_id: int
    record: dict


def coverage(mask: np.ndarray, covered: np.ndarray) -> float:
    """Fraction of `mask` (H×W bool) inside `covered` (H×W bool); 1.0 for an empty mask (nothing new)."""
    area = int(mask.sum())
    return 1.0 if area == 0 else float((mask & covered).sum()) / area


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def discover(
    session: VideoSession,
    generator: MaskGenerator,
    frame_idx: int,
    ids: Iterator[int],
    max_overlap: float = 0.5,
    max_objects: int = 50,
) -> list[Discovery]:
    """Add as new objects on `frame_idx` the generator's masks of which at most `max_overlap` lies inside the
    present objects' masks (or inside masks added before them, best predicted IoU first), until the session
    holds `max_objects` objects. New ids come from `ids`. -> the objects added, in that order."""
    max_overlap = _check_fraction("max_overlap", max_overlap)
    max_objects = _check_count("max_objects", max_objects, 0)
    if generator.output_mode != "binary_mask":
        raise ValueError("discovery needs a generator with output_mode='binary_mask'")
    if len(session.objects) >= max_objects:
        return []
    current = session.result(frame_idx)
    covered = np.zeros(session.frame_size, dtype=bool)
    for mask, score in zip(current.masks, current.object_scores):
        if score > 0:
            covered |= mask
    image = session.frames.get(frame_idx)
    records = generator.generate(image, features=session.frame_features(frame_idx))
    added = []
    for record in sorted(records, key=lambda r: -r["predicted_iou"]):  # stable: the generator's order on ties
        if len(session.objects) >= max_objects:
            break
        mask = record["segmentation"]
        if coverage(mask, covered) > max_overlap:
            continue
        obj_id = next(ids)
        session.add_prompt(frame_idx, obj_id, mask=mask)
        covered |= mask
        added.append(Discovery(obj_id, record))
    return added


def track_everything(
    session: VideoSession,
    generator: MaskGenerator,
    every: int = 30,
    max_overlap: float = 0.5,
    max_objects: int = 50,
    end_after: int | None = None,
    start_frame: int = 0,
) -> Iterator[tuple[FrameResult, list[Discovery]]]:
    """Segment everything from `start_frame` to the end of the video: discover there and on every `every`-th
    frame after it, track every object frame by frame, remove an object once it has been absent (object score
    ≤ 0) on `end_after` consecutive frames (None: never). Yields, per frame, its masks (after discovery) and
    the objects discovered on it; ids are 0, 1, 2, ... and never reused. The session should hold no objects."""
    every = _check_count("every", every, 1)
    if end_after is not None:
        end_after = _check_count("end_after", end_after, 1)
    _check_fraction("max_overlap", max_overlap)
    _check_count("max_objects", max_objects, 0)
    if session.objects:
        raise ValueError("track_everything needs a session without objects")
    ids = itertools.count()
    absent: dict[int, int] = {}
    for frame in range(start_frame, session.frame_count):
        if session.objects:  # track the known objects first (new ones are prompted on their frame)
            next(iter(session.propagate("forward", start_frame=frame, max_frames=0)))
            result = session.result(frame)
            for obj_id, score in zip(result.obj_ids, result.object_scores):
                absent[obj_id] = absent.get(obj_id, 0) + 1 if score <= 0 else 0
                if end_after is not None and absent[obj_id] >= end_after:
                    session.remove_object(obj_id)
                    del absent[obj_id]
        found = []
        if (frame - start_frame) % every == 0:
            found = discover(session, generator, frame, ids, max_overlap, max_objects)
        yield session.result(frame), found
