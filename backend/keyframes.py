"""VideoRectangle keyframe compression: the fewest keyframes whose linear interpolation stays within a tolerance
of every tracked box, computed block by block and remembered.

A long track is cut at every multiple of BLOCK frames (each cut is a keyframe), and each block's keyframes are
remembered by the digest of its boxes: a request after a correction recomputes only the blocks whose boxes
changed, and serving a 30-minute track again costs a hash per block instead of seconds of search per object.
The price: at most one keyframe per BLOCK frames more than the exact optimum of the whole run.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

BLOCK = 1024  # frames per cached block of keyframe selection
CACHE_BYTES = 16 << 20  # keyframe indices remembered (int32), least recently used first out
REACH = 64  # frames ahead computed at once for each source frame (doubled where its window stays open)
_BATCH = 1 << 16  # source frames × frames ahead computed at once (a few MB)
_WINDOW_SLACK = 1e-9  # pixels per frame: float rounding in the keyframe slope windows

_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()


def keyframes_between(boxes: np.ndarray, anchors: Sequence[int], tolerance: float) -> set[int]:
    """Keyframes of the span anchors[0]..anchors[-1] of a track of boxes (T, 4): the `anchors` (sorted frames,
    kept), every multiple of BLOCK inside the span, and between consecutive ones the fewest that
    `select_keyframes` needs, remembered per block."""
    first, last = anchors[0], anchors[-1]
    cuts = sorted(set(anchors) | set(range((first // BLOCK + 1) * BLOCK, last, BLOCK)))
    keep = set(cuts)
    for s, t in zip(cuts, cuts[1:]):
        block = np.ascontiguousarray(boxes[s:t + 1], dtype=np.float64)
        keep.update((s + _remembered(block, tolerance)).tolist())
    return keep


def _remembered(boxes: np.ndarray, tolerance: float) -> np.ndarray:
    """select_keyframes(boxes, tolerance) as int32, from the cache when these exact boxes were seen before."""
    global _cache_bytes
    key = hashlib.blake2b(boxes.tobytes() + np.float64(tolerance).tobytes(), digest_size=16).digest()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    keep = np.asarray(select_keyframes(boxes, tolerance), dtype=np.int32)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = keep
            _cache_bytes += keep.nbytes
        while _cache_bytes > CACHE_BYTES:
            _cache_bytes -= _cache.popitem(last=False)[1].nbytes
    return keep


def select_keyframes(boxes: np.ndarray, tolerance: float) -> list[int]:
    """The fewest indices to keep in a contiguous run of boxes (n, 4), first and last always included, such that
    linear interpolation between kept indices reproduces every box within `tolerance` (max abs over the 4
    coordinates).

    Exact: fewest[j] = min over feasible i < j of fewest[i] + 1, found breadth first (the frames reached with k
    keyframes are the layer from which those needing k + 1 are reached). Interpolating from i to j passes
    within `tolerance` of box k (i < k < j) when the slope (b_j - b_i) / (j - i) lies in
    [(b_k - tolerance - b_i) / (k - i), (b_k + tolerance - b_i) / (k - i)] for each coordinate; along
    j = i+1, i+2, ... the intersection of these windows only shrinks (a running max / min), and once it is
    empty no later j fits. The feasible j of a whole layer are computed at once (`_reach`, REACH frames ahead, doubled
    for the sources whose window is still open there). O(n^2) at worst; a static or steadily moving object
    costs O(n) array work in few steps.
    Among equally short answers, the one whose keyframes come earliest (at each step, the earliest predecessor).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    n = len(boxes)
    if n <= 2:
        return list(range(n))
    fewest = np.zeros(n, dtype=np.int64)  # 0: not reached yet
    before = np.full(n, -1, dtype=np.int64)
    fewest[0] = 1
    layer = np.array([0])  # the frames whose fewest is `count`, ascending
    count = 1
    while not fewest[-1]:  # breadth first: the frames reached from the last layer, not reached before
        sources, targets = _reachable(boxes, layer, tolerance)
        fresh = fewest[targets] == 0
        sources, targets = sources[fresh], targets[fresh]
        if len(layer) > 1:  # several sources may reach a frame: keep the earliest
            order = np.lexsort((sources, targets))
            targets, first = np.unique(targets[order], return_index=True)
            sources = sources[order][first]
        count += 1
        fewest[targets], before[targets] = count, sources
        layer = targets
    keep = [n - 1]
    while keep[-1] != 0:
        keep.append(int(before[keep[-1]]))
    return keep[::-1]


def _reachable(boxes: np.ndarray, rows: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(sources, targets): every pair i -> j (i in `rows`, ascending) whose interpolation fits, looking REACH
    frames ahead, and further (doubling) for the rows whose window is still open there."""
    sources, targets = [], []
    batch = max(1, _BATCH // REACH)
    for k in range(0, len(rows), batch):
        part, reach = rows[k:k + batch], REACH
        while part.size:
            fits, still_open = _reach(boxes, part, reach, tolerance)
            r, d = np.nonzero(fits)
            sources.append(part[r])
            targets.append(part[r] + d + 1)
            part, reach = part[still_open], reach * 2
    if len(sources) == 1:
        return sources[0], targets[0]
    return np.concatenate(sources), np.concatenate(targets)


def _reach(boxes: np.ndarray, rows: np.ndarray, reach: int, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each i in `rows` (R,) and d = 1..reach: fits (R, reach) bool, whether interpolating i -> i+d stays
    within `tolerance` of every frame between (False past the end); still_open (R,) bool, whether the window
    is still open after i+reach with frames left, so that a j further on may fit too."""
    n = len(boxes)
    d = np.arange(1, reach + 1)
    j = rows[:, None] + d  # (R, reach)
    delta = boxes[np.minimum(j, n - 1)] - boxes[rows][:, None, :]  # (R, reach, 4)
    steps = d[None, :, None].astype(np.float64)
    slope = delta / steps
    lo = np.maximum.accumulate((delta - tolerance) / steps, axis=1)  # window of frames i+1..i+d
    hi = np.minimum.accumulate((delta + tolerance) / steps, axis=1)
    edge = np.full((len(rows), 1, 4), np.inf)
    lo_inner = np.concatenate([-edge, lo[:, :-1]], axis=1)  # window of the frames strictly between i and i+d
    hi_inner = np.concatenate([edge, hi[:, :-1]], axis=1)
    fits = np.all((lo_inner - _WINDOW_SLACK <= slope) & (slope <= hi_inner + _WINDOW_SLACK), axis=2)
    closed = np.logical_or.accumulate(np.any(lo_inner > hi_inner + _WINDOW_SLACK, axis=2), axis=1)
    fits &= ~closed & (j < n)
    still_open = ~np.any(lo[:, -1] > hi[:, -1] + _WINDOW_SLACK, axis=1) & (rows + reach < n - 1)
    return fits, still_open
