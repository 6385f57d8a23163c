"""A least-recently-used cache of per-frame image features, bounded in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from ..sam2 import FrameFeatures


def feature_bytes(features: FrameFeatures) -> int:
    """Bytes held by a frame's features (the position encoding is shared by all frames and not counted)."""
    tensors = [features.embedding, *features.high_res]
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """frame index -> FrameFeatures, evicting the least recently used beyond `max_bytes` (at least one kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, FrameFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __contains__(self, frame: int) -> bool:
        return frame in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_or_compute(self, frame: int, compute: Callable[[int], FrameFeatures]) -> FrameFeatures:
        with self._lock:
            if frame in self._items:
                self._items.move_to_end(frame)
                self.hits += 1
                return self._items[frame]
        self.misses += 1
        features = compute(frame)
        with self._lock:
            if frame not in self._items:
                self._items[frame] = features
                self._bytes += feature_bytes(features)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= feature_bytes(old)
        return features

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
