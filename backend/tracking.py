"""A video session plus the progress of propagating its current prompts, resumable across requests.

Propagation runs from a start frame S in both directions, in alternating chunks of CHUNK frames: forward
S..S+15, backward S..S-15 (S is tracked again, as in the engine's "both" pass, and the later result wins),
forward S+16.., backward S-16.., and so on. A chunk of 16 frames or more gives every frame exactly the
memories and object pointers it gets when the whole forward pass precedes the backward pass, so the result
does not depend on where a request's time budget cut the work. The next request with the same prompts
resumes where the last one stopped; changed prompts restart from S = the earliest changed prompt frame,
so the frames around the user's latest edit are tracked first. A single direction can be asked for
(`set_prompts(direction=...)`, the event protocol's tracks).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sam2_model.video.session import FrameResult, VideoSession

from .compact import CompactFrame
from .errors import BackendError
from .prompts import FramePrompt, ObjectPrompts

CHUNK = 16  # >= the engine's 16 object pointers and 7 memories: chunking does not change results
COMPACT_MASK_BYTES = 2048  # up-front estimate of one object-frame's RLE (a smooth 720p mask: about 2 runs a column)


def _prompt_key(fp: FramePrompt) -> tuple:
    mask = None if fp.mask is None else hashlib.sha1(np.packbits(fp.mask)).hexdigest() + str(fp.mask.shape)
    return (tuple(fp.points), tuple(fp.point_labels), fp.box, mask)


def signature(objects: Sequence[ObjectPrompts]) -> dict[tuple[str, int], tuple]:
    """{(object key, frame): prompt fingerprint} of every prompted frame."""
    return {(o.key, fp.frame): _prompt_key(fp) for o in objects for fp in o.frames}


def add_frame_prompt(session: VideoSession, key: str, fp: FramePrompt) -> FrameResult:
    """Give one FramePrompt to the session: the mask first, then box and points refining it."""
    result = None
    if fp.mask is not None:
        result = session.add_prompt(fp.frame, key, mask=fp.mask)
    if fp.points or fp.box is not None:
        points = np.asarray(fp.points, dtype=np.float64).reshape(-1, 2) if fp.points else None
        labels = np.asarray(fp.point_labels, dtype=np.int64) if fp.points else None
        result = session.add_prompt(fp.frame, key, points=points, labels=labels, box=fp.box)
    return result


@dataclass
class Progress:
    """Frames tracked so far: forward S..fwd_next-1 (up to fwd_end), backward S..bwd_next+1 (down to bwd_end)."""

    start: int
    fwd_next: int
    fwd_end: int
    bwd_next: int
    bwd_end: int
    bwd_started: bool = False

    @property
    def done(self) -> bool:
        return self.fwd_next > self.fwd_end and self.bwd_next < self.bwd_end

    @property
    def span(self) -> int:
        """Frames the whole propagation covers, the start frame included."""
        return max(self.fwd_end, self.start) - min(self.bwd_end, self.start) + 1

    def covered(self) -> range:
        low = self.bwd_next + 1 if self.bwd_started else self.start
        return range(low, max(self.fwd_next, low))


class Tracker:
    """Owns a VideoSession (numpy in, numpy out) and the propagation state of its prompts.

    extra_bytes: memory held beside the session (e.g. the frames of an image sequence), for the store;
    budget_bytes: the most the tracker may hold (the session store's budget): prompts whose propagation needs
    more are refused up front (413) instead of being tracked and then thrown away. drop_logits: once a
    tracked (unprompted) frame is stored compactly, the session forgets its low-res logits
    (`VideoSession.drop_logits`): results then cost a pointer, a score and an RLE per object-frame instead of
    256² float16 logits, and a later click on such a frame is decoded from the click alone.
    """

    def __init__(self, session: VideoSession, extra_bytes: int = 0, budget_bytes: int | None = None,
                 drop_logits: bool = False):
        self.session = session
        self.drop_logits = drop_logits
        self.extra_bytes = extra_bytes
        self.budget_bytes = budget_bytes
        self.prompts: dict[tuple[str, int], tuple] = {}
        self.objects: list[ObjectPrompts] = []
        self.progress: Progress | None = None
        self._request: tuple | None = None  # (max_frames, start, direction) of the current progress
        self._store: dict[int, CompactFrame] = {}  # each frame's results, encoded once when tracked
        self._store_bytes = 0  # sum of the store's CompactFrame.nbytes, kept as frames come and go

    @property
    def frame_count(self) -> int:
        return self.session.frame_count

    def nbytes(self) -> int:
        tracked = len(self.progress.covered()) if self.progress else 0
        return (self.session.features.nbytes + self._session_bytes(tracked, len(self.objects)) + self.extra_bytes
                + self.results_nbytes())

    def _session_bytes(self, frames: int, objects: int) -> int:
        """Results the session keeps: float16 low-res logits per object-frame, or only a float32 pointer and
        score once logits are dropped."""
        if self.drop_logits:
            return frames * objects * (4 * self.session.model.no_obj_ptr.shape[-1] + 4)
        grid = 4 * self.session.model.config.image_embedding_size
        return frames * objects * grid * grid * 2

    def _results_bytes(self, frames: int, objects: int) -> int:
        """Up-front estimate for the budget: the session's part plus the compact store's."""
        return self._session_bytes(frames, objects) + frames * objects * COMPACT_MASK_BYTES

    def _check_budget(self, frames: int, objects: int) -> None:
        """Raise BackendError 413 when tracking `frames` frames of `objects` objects cannot fit the budget."""
        needed = self._results_bytes(frames, objects) + self.extra_bytes
        if self.budget_bytes is not None and needed > self.budget_bytes:
            raise BackendError(
                f"tracking {objects} object(s) over {frames} frame(s) needs about {needed / 2**20:.1f} MB of session "
                f"memory, more than SESSION_BUDGET_MB ({self.budget_bytes / 2**20:g} MB): raise SESSION_BUDGET_MB "
                "or lower MAX_PROPAGATION_FRAMES", 413)

    def close(self) -> None:
        self.session.close()

    def set_prompts(self, objects: Sequence[ObjectPrompts], max_frames: int, start: int | None = None,
                    direction: str = "both") -> bool:
        """Make the session hold exactly these prompts; False (nothing done, progress kept) when they and the
        arguments are unchanged.

        start: the frame to propagate from; default the earliest prompt that differs from the previous
        request's (all prompts count as changed the first time). direction: "both", "forward" or "backward"
        from the start frame. Raises the session's PromptError or FrameIndexError for bad prompts, leaving the
        tracker without prompts, and BackendError 413 (nothing changed) when tracking them exceeds the budget.
        """
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"direction must be 'both', 'forward' or 'backward', got {direction!r}")
        new = signature(objects)
        request = (max_frames, start, direction)
        if new == self.prompts and self.progress is not None and request == self._request:
            return False
        changed = [frame for k, frame in new if self.prompts.get((k, frame)) != new[(k, frame)]]
        removed = [frame for k, frame in self.prompts if (k, frame) not in new]
        if new:
            if start is None:
                start = min(changed or removed or [fp.frame for o in objects for fp in o.frames])
            if not any(fp.frame == start for o in objects for fp in o.frames):  # propagation starts on a prompt
                start = min((fp.frame for o in objects for fp in o.frames), key=lambda f: abs(f - start))
            fwd_end = min(self.frame_count - 1, start + max_frames) if direction != "backward" else start - 1
            bwd_end = max(0, start - max_frames) if direction != "forward" else start + 1
            progress = Progress(start, start, fwd_end, start, bwd_end)
            self._check_budget(progress.span, len(objects))
        self.session.reset()
        self.prompts, self.objects, self.progress = {}, [], None
        self._store, self._store_bytes = {}, 0
        for obj in objects:
            for fp in obj.frames:
                add_frame_prompt(self.session, obj.key, fp)
        if not new:  # no prompts left: nothing to propagate
            return True
        self.progress = progress
        self.prompts, self.objects, self._request = new, list(objects), request
        return True

    def run(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> bool:
        """Propagate until done or `deadline` (clock time); True when every frame in range is tracked."""
        p = self.progress
        if p is None or not self.objects:
            return True
        while not p.done and clock() < deadline:
            if p.fwd_next <= p.fwd_end:
                self._forward(min(CHUNK, p.fwd_end - p.fwd_next + 1), deadline, clock)
            if p.bwd_next >= p.bwd_end and clock() < deadline:
                self._backward(deadline, clock)
        return p.done

    def _forward(self, count: int, deadline: float, clock) -> None:
        p = self.progress
        frames = self.session.propagate("forward", start_frame=p.fwd_next, max_frames=count - 1)
        self._consume(frames, deadline, clock, self._keep(lambda f: setattr(p, "fwd_next", f + 1)))

    def _backward(self, deadline: float, clock) -> None:
        p = self.progress
        if p.start == 0 and p.bwd_end == 0:  # nothing before the start frame
            p.bwd_next, p.bwd_started = -1, True
            return
        # the engine's backward pass cannot start on frame 0: start on frame 1 again (same memories, same result)
        first = max(p.bwd_next, 1)
        count = min(CHUNK, first - p.bwd_end + 1)
        frames = self.session.propagate("backward", start_frame=first, max_frames=count - 1)
        p.bwd_started = True
        self._consume(frames, deadline, clock, self._keep(lambda f: setattr(p, "bwd_next", min(p.bwd_next, f - 1))))

    def _keep(self, advance: Callable[[int], None]) -> Callable[[FrameResult], None]:
        """`advance` after storing the result compactly (a later result of the same frame replaces it)."""
        def keep(result: FrameResult) -> None:
            self._keep_compact(result)
            if self.drop_logits:
                self.session.drop_logits(result.frame_idx)
            advance(result.frame_idx)
        return keep

    @staticmethod
    def _consume(frames: Iterator[FrameResult], deadline: float, clock, advance: Callable[[FrameResult], None]) -> None:
        try:
            for result in frames:
                advance(result)
                if clock() >= deadline:
                    break
        finally:
            frames.close()

    def frames(self) -> list[int]:
        """Frames with results: the tracked range plus every prompted frame."""
        covered = set(self.progress.covered()) if self.progress else set()
        return sorted(covered | {frame for _, frame in self.prompts})

    def results(self) -> Iterator[FrameResult]:
        """The masks of every object on each frame of `frames()`."""
        for frame in self.frames():
            yield self.result(frame)

    def result(self, frame: int) -> FrameResult:
        """The masks of every object on `frame`, from the compact store (encoded from the session once)."""
        if frame not in self._store:
            self._keep_compact(self.session.result(frame))
        return self._store[frame].decode()

    def _keep_compact(self, result: FrameResult) -> None:
        """Store `result` compactly (replacing an earlier result of its frame)."""
        old = self._store.get(result.frame_idx)
        new = self._store[result.frame_idx] = CompactFrame.encode(result)
        self._store_bytes += new.nbytes - (old.nbytes if old is not None else 0)

    def results_nbytes(self) -> int:
        """Bytes of the compact store (measured)."""
        return self._store_bytes
