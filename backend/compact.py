"""Tracked results kept compactly for serving: each object's mask on each frame as a run-length code, not logits.

A tracked FrameResult (N×H×W bool masks at video resolution) is stored once, when it is tracked, as one uint32
RLE per object (column-major, the counts of `sam2_model.automatic_filters.encode_rle`) plus its presence score;
requests read frames back from here instead of re-rendering them from the engine's logits. Entries are per
(frame, object), so re-tracking some objects replaces only theirs.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sam2_model.automatic_filters import decode_rle, encode_rle
from sam2_model.sam2 import NO_OBJECT_LOGIT
from sam2_model.video.session import FrameResult


@dataclass(frozen=True)
class CompactMask:
    """One object's mask on one frame: `counts` uint32 RLE of an H×W mask, `score` its presence logit."""

    counts: np.ndarray
    score: float

    @property
    def nbytes(self) -> int:
        """Bytes held by the code and the score (measured, not estimated)."""
        return self.counts.nbytes + 4


class CompactStore:
    """{frame: {object id: CompactMask}} for frames of one size (height, width), with a running byte count."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self._frames: dict[int, dict[Hashable, CompactMask]] = {}
        self.nbytes = 0

    def put(self, result: FrameResult, obj_ids: Iterable[Hashable] | None = None) -> None:
        """Store the masks of `result` (only those of `obj_ids` when given), replacing earlier ones."""
        wanted = None if obj_ids is None else set(obj_ids)
        picked = [i for i, o in enumerate(result.obj_ids) if wanted is None or o in wanted]
        if not picked:
            return
        masks = np.asarray(result.masks, dtype=bool)[picked]
        codes = encode_rle(masks)
        frame = self._frames.setdefault(result.frame_idx, {})
        for i, code in zip(picked, codes):
            new = CompactMask(np.asarray(code["counts"], dtype=np.uint32), float(result.object_scores[i]))
            old = frame.get(result.obj_ids[i])
            frame[result.obj_ids[i]] = new
            self.nbytes += new.nbytes - (old.nbytes if old is not None else 0)

    def has(self, frame: int, obj_id: Hashable) -> bool:
        return obj_id in self._frames.get(frame, ())

    def get(self, frame: int, obj_ids: Sequence[Hashable]) -> FrameResult:
        """The masks of `obj_ids` on `frame`; an object with nothing stored there is empty and absent."""
        h, w = self.size
        stored = self._frames.get(frame, {})
        masks = np.zeros((len(obj_ids), h, w), dtype=bool)
        scores = np.full(len(obj_ids), NO_OBJECT_LOGIT, dtype=np.float32)
        for i, obj_id in enumerate(obj_ids):
            entry = stored.get(obj_id)
            if entry is not None:
                masks[i] = decode_rle({"size": [h, w], "counts": entry.counts})
                scores[i] = entry.score
        return FrameResult(frame, list(obj_ids), masks, scores)

    def frames(self, obj_ids: Iterable[Hashable]) -> set[int]:
        """Frames where any of `obj_ids` has a mask stored."""
        wanted = set(obj_ids)
        return {f for f, objs in self._frames.items() if not wanted.isdisjoint(objs)}

    def entries(self) -> int:
        """Object-frames stored."""
        return sum(len(objs) for objs in self._frames.values())

    def drop(self, obj_id: Hashable, frame: int | None = None) -> None:
        """Forget `obj_id`'s mask on `frame`, or on every frame."""
        for f in [frame] if frame is not None else list(self._frames):
            objs = self._frames.get(f)
            old = objs.pop(obj_id, None) if objs is not None else None
            if old is not None:
                self.nbytes -= old.nbytes
                if not objs:
                    del self._frames[f]
