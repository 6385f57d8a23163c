"""Tracked results kept compactly for serving: each object's mask on each frame as a run-length code, not logits,
and each object's box and presence score on every frame as a track, so a box answer decodes no mask.

A tracked FrameResult (N×H×W bool masks at video resolution) is stored once, when it is tracked: one uint32 RLE
per object (column-major, the counts of `sam2_model.automatic_filters.encode_rle`), and the object's box and
presence logit written into its track. Requests read frames back from here instead of re-rendering them from the
engine's logits. Entries are per (frame, object), so re-tracking some objects replaces only theirs.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sam2_model.automatic_filters import decode_rle, encode_rle
from sam2_model.sam2 import NO_OBJECT_LOGIT
from sam2_model.video.session import FrameResult

from .results import masks_to_boxes

TRACK_BYTES = 5 * 4  # one frame of an object's track: a float32 box (4) and presence logit


@dataclass
class ObjectTrack:
    """One object over a video of T frames: `boxes` (T, 4) float32 pixel-edge boxes (x1, y1, x2, y2), NaN where
    the mask is empty or nothing is stored; `scores` (T,) float32 presence logits, NaN where nothing is stored."""

    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, frame_count: int) -> "ObjectTrack":
        return cls(np.full((frame_count, 4), np.nan, np.float32), np.full(frame_count, np.nan, np.float32))

    @property
    def nbytes(self) -> int:
        return self.boxes.nbytes + self.scores.nbytes

    def clear(self, frame: int) -> None:
        self.boxes[frame] = np.nan
        self.scores[frame] = np.nan


class CompactStore:
    """The results of a video of `frame_count` frames of one size (height, width): {frame: {object id: RLE
    counts}} and {object id: ObjectTrack}, with a running byte count (measured, not estimated)."""

    def __init__(self, size: tuple[int, int], frame_count: int):
        self.size = size
        self.frame_count = frame_count
        self._masks: dict[int, dict[Hashable, np.ndarray]] = {}
        self._tracks: dict[Hashable, ObjectTrack] = {}
        self.nbytes = 0

    def put(self, result: FrameResult, obj_ids: Iterable[Hashable] | None = None) -> None:
        """Store the masks of `result` (only those of `obj_ids` when given), replacing earlier ones."""
        wanted = None if obj_ids is None else set(obj_ids)
        picked = [i for i, o in enumerate(result.obj_ids) if wanted is None or o in wanted]
        if not picked:
            return
        frame_idx = result.frame_idx
        masks = np.asarray(result.masks, dtype=bool)[picked]
        boxes = masks_to_boxes(masks)
        frame = self._masks.setdefault(frame_idx, {})
        for i, code, box in zip(picked, encode_rle(masks), boxes):
            obj_id = result.obj_ids[i]
            counts = np.asarray(code["counts"], dtype=np.uint32)
            old = frame.get(obj_id)
            frame[obj_id] = counts
            self.nbytes += counts.nbytes - (old.nbytes if old is not None else 0)
            track = self._tracks.get(obj_id)
            if track is None:
                track = self._tracks[obj_id] = ObjectTrack.empty(self.frame_count)
                self.nbytes += track.nbytes
            track.boxes[frame_idx] = box
            track.scores[frame_idx] = result.object_scores[i]

    def has(self, frame: int, obj_id: Hashable) -> bool:
        return obj_id in self._masks.get(frame, ())

    def get(self, frame: int, obj_ids: Sequence[Hashable]) -> FrameResult:
        """The masks of `obj_ids` on `frame`; an object with nothing stored there is empty and absent."""
        h, w = self.size
        stored = self._masks.get(frame, {})
        masks = np.zeros((len(obj_ids), h, w), dtype=bool)
        scores = np.full(len(obj_ids), NO_OBJECT_LOGIT, dtype=np.float32)
        for i, obj_id in enumerate(obj_ids):
            counts = stored.get(obj_id)
            if counts is not None:
                masks[i] = decode_rle({"size": [h, w], "counts": counts})
                scores[i] = self._tracks[obj_id].scores[frame]
        return FrameResult(frame, list(obj_ids), masks, scores)

    def track(self, obj_id: Hashable) -> ObjectTrack:
        """The object's boxes and scores on every frame (a copy; all NaN when nothing is stored)."""
        track = self._tracks.get(obj_id)
        if track is None:
            return ObjectTrack.empty(self.frame_count)
        return ObjectTrack(track.boxes.copy(), track.scores.copy())

    def frames(self, obj_ids: Iterable[Hashable]) -> set[int]:
        """Frames where any of `obj_ids` has a mask stored."""
        wanted = set(obj_ids)
        return {f for f, objs in self._masks.items() if not wanted.isdisjoint(objs)}

    def entries(self) -> int:
        """Object-frames stored."""
        return sum(len(objs) for objs in self._masks.values())

    def drop(self, obj_id: Hashable, frame: int | None = None) -> None:
        """Forget `obj_id`'s mask on `frame`, or on every frame (its track with it)."""
        for f in [frame] if frame is not None else list(self._masks):
            objs = self._masks.get(f)
            old = objs.pop(obj_id, None) if objs is not None else None
            if old is not None:
                self.nbytes -= old.nbytes
                if not objs:
                    del self._masks[f]
        track = self._tracks.get(obj_id)
        if track is None:
            return
        if frame is not None:
            track.clear(frame)
        else:
            self.nbytes -= self._tracks.pop(obj_id).nbytes
