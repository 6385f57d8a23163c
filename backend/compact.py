"""Tracked results kept compactly for serving: each frame's masks as run-length codes, not logits.

A FrameResult (N×H×W bool masks at video resolution) is stored once, when it is tracked, as one uint32 RLE per
object (column-major, the counts of `sam2_model.automatic_filters.encode_rle`) plus the N presence scores;
requests read frames back from here instead of re-rendering them from the engine's logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam2_model.automatic_filters import decode_rle, encode_rle
from sam2_model.video.session import FrameResult


@dataclass(frozen=True)
class CompactFrame:
    """One frame's results: `counts` N uint32 RLEs of H×W masks, `scores` N float32 presence logits."""

    frame_idx: int
    obj_ids: tuple
    size: tuple[int, int]
    counts: tuple[np.ndarray, ...]
    scores: np.ndarray

    @classmethod
    def encode(cls, result: FrameResult) -> "CompactFrame":
        masks = np.asarray(result.masks, dtype=bool)
        counts = tuple(np.asarray(r["counts"], dtype=np.uint32) for r in encode_rle(masks)) if len(masks) else ()
        return cls(result.frame_idx, tuple(result.obj_ids), tuple(masks.shape[1:]), counts,
                   np.asarray(result.object_scores, dtype=np.float32).copy())

    def decode(self) -> FrameResult:
        h, w = self.size
        masks = np.zeros((len(self.counts), h, w), dtype=bool)
        for i, c in enumerate(self.counts):
            masks[i] = decode_rle({"size": [h, w], "counts": c})
        return FrameResult(self.frame_idx, list(self.obj_ids), masks, self.scores.copy())

    @property
    def nbytes(self) -> int:
        """Bytes held by the codes and scores (measured, not estimated)."""
        return sum(c.nbytes for c in self.counts) + self.scores.nbytes
