"""A video session plus the progress of propagating its prompts, resumable across requests and incremental.

Propagation runs from a start frame S in both directions, in alternating chunks of CHUNK frames: forward
S..S+15, backward S..S-15 (S is tracked again, as in the engine's "both" pass, and the later result wins),
forward S+16.., backward S-16.., and so on. A chunk of 16 frames or more gives every frame exactly the
memories and object pointers it gets when the whole forward pass precedes the backward pass, so the result
does not depend on where a request's time budget cut the work. The next request with the same prompts
resumes where the last one stopped.

Prompt changes are incremental, per object (objects are tracked independently, so one object's prompts never
change another's masks):
- a new object, or one whose seed frame (the start S its propagation started from) changed, is tracked afresh
  from S = the earliest changed prompt frame (the frames around the user's latest edit come first);
- a changed, added or removed prompt on frame c of a tracked object is decoded afresh there (no previous
  mask, as on first sight), and the object is re-tracked from c away from its seed: forward from c when
  c > S, backward when c < S, with the memories the session holds then. Frames between S and c keep their
  masks, and frames beyond the re-tracking front keep theirs until the front passes them;
- an object no longer named is removed with its masks.
A single direction from an explicit start (`set_prompts(start=..., direction=...)`, the event protocol's
tracks) re-tracks all of the owner's objects afresh from that frame.

Owners: each annotator's objects are kept apart (`owner`, e.g. "user:7"; "" when the request names nobody),
in the one session of the task's video, which shares its decoded frames and image features among them. An
owner's prompt changes never touch another owner's objects. An identified owner's first request adopts the
objects of "" (a first click is usually sent before the editor saved a draft naming its user).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sam2_model.video.session import FrameResult, VideoSession

from .compact import TRACK_BYTES, CompactStore, ObjectTrack
from .errors import BackendError
from .prompts import FramePrompt, ObjectPrompts

CHUNK = 16  # >= the engine's 16 object pointers and 7 memories: chunking does not change results
COMPACT_MASK_BYTES = 2048  # up-front estimate of one object-frame's RLE (a smooth 720p mask: about 2 runs a column)
NOBODY = ""  # the owner of requests that carry no annotator identity


def _prompt_key(fp: FramePrompt) -> tuple:
    mask = None if fp.mask is None else hashlib.sha1(np.packbits(fp.mask)).hexdigest() + str(fp.mask.shape)
    return (tuple(fp.points), tuple(fp.point_labels), fp.box, mask)


def signature(objects: Sequence[ObjectPrompts]) -> dict[tuple[str, int], tuple]:
    """{(object key, frame): prompt fingerprint} of every prompted frame."""
    return {(o.key, fp.frame): _prompt_key(fp) for o in objects for fp in o.frames}


def changed_frames(old: dict[tuple[str, int], tuple], new: dict[tuple[str, int], tuple]) -> dict[str, set[int]]:
    """{object key: frames whose prompt was added, changed or removed} between two signatures."""
    changed: dict[str, set[int]] = {}
    for key, frame in set(old) | set(new):
        if old.get((key, frame)) != new.get((key, frame)):
            changed.setdefault(key, set()).add(frame)
    return changed


def add_frame_prompt(session: VideoSession, key, fp: FramePrompt) -> FrameResult:
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
    """One propagation pass of some objects (`obj_ids`, session ids): forward S..fwd_next-1 (up to fwd_end),
    backward S..bwd_next+1 (down to bwd_end) are tracked."""

    start: int
    fwd_next: int
    fwd_end: int
    bwd_next: int
    bwd_end: int
    bwd_started: bool = False
    obj_ids: tuple = ()

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

    def fronts(self) -> tuple:
        """Everything but the objects: passes with equal fronts track their objects together."""
        return (self.start, self.fwd_next, self.fwd_end, self.bwd_next, self.bwd_end, self.bwd_started)

    def rewound(self, frames: Sequence[int], obj_ids: tuple) -> "Progress":
        """A copy for `obj_ids` whose fronts move back to re-track from each of `frames` (changed prompts) away
        from the start: forward from the first one after it, backward from the last one before it."""
        p = dataclasses.replace(self, obj_ids=obj_ids)
        after = [c for c in frames if self.start < c <= self.fwd_end]
        before = [c for c in frames if self.bwd_end <= c < self.start]
        if after:
            p.fwd_next = min(p.fwd_next, min(after))
        if before and p.bwd_started:
            p.bwd_next = max(p.bwd_next, max(before))
        return p


@dataclass
class Owner:
    """One annotator's objects in the session: their prompts, passes, and the frame each was seeded from."""

    prompts: dict[tuple[str, int], tuple] = field(default_factory=dict)
    objects: list[ObjectPrompts] = field(default_factory=list)
    passes: list[Progress] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    request: tuple | None = None  # (max_frames, start, direction) of the last set_prompts


class Tracker:
    """Owns a VideoSession (numpy in, numpy out) and the propagation state of its owners' prompts.

    extra_bytes: memory held beside the session (e.g. the frames of an image sequence), for the store;
    budget_bytes: the most the tracker may hold (the session store's budget): prompts whose propagation needs
    more are refused up front (413) instead of being tracked and then thrown away. drop_logits: once a
    tracked (unprompted) frame is stored compactly, the session forgets its low-res logits
    (`VideoSession.drop_logits`): results then cost a pointer, a score, an RLE and a box per object-frame instead
    of 256² float16 logits, and a later click on such a frame is decoded from the click alone.
    Objects have session ids of the Tracker's own (ints), mapped from (owner, key); results carry the keys.
    """

    def __init__(self, session: VideoSession, extra_bytes: int = 0, budget_bytes: int | None = None,
                 drop_logits: bool = False):
        self.session = session
        self.drop_logits = drop_logits
        self.extra_bytes = extra_bytes
        self.budget_bytes = budget_bytes
        self.owners: dict[str, Owner] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (owner, key) -> session object id
        self._next_id = itertools.count()
        self._store = CompactStore(session.frame_size, session.frame_count)  # results, encoded once when tracked

    # ------------------------------------------------------------------ state
    @property
    def frame_count(self) -> int:
        return self.session.frame_count

    def state(self, owner: str = NOBODY) -> Owner:
        return self.owners.get(owner) or Owner()

    @property
    def prompts(self) -> dict[tuple[str, int], tuple]:
        """The prompt signature of the owner "" (the event protocol's)."""
        return self.state().prompts

    @property
    def objects(self) -> list[ObjectPrompts]:
        return self.state().objects

    @property
    def progress(self) -> Progress | None:
        """The first (most recent) pass of the owner "", None without prompts."""
        passes = self.state().passes
        return passes[0] if passes else None

    def _sid(self, owner: str, key: str) -> int:
        sid = self._ids.get((owner, key))
        if sid is None:
            sid = self._ids[(owner, key)] = next(self._next_id)
        return sid

    def _sids(self, owner: str) -> list[int]:
        return [self._sid(owner, o.key) for o in self.state(owner).objects]

    # ------------------------------------------------------------------ memory
    def nbytes(self) -> int:
        return (self.session.features.nbytes + self._entry_bytes() * self._store.entries() + self.extra_bytes
                + self.results_nbytes())

    def _entry_bytes(self) -> int:
        """Session bytes of one object-frame's result: float16 low-res logits, or only a float32 pointer and
        score once logits are dropped."""
        if self.drop_logits:
            return 4 * self.session.model.no_obj_ptr.shape[-1] + 4
        grid = 4 * self.session.model.config.image_embedding_size
        return grid * grid * 2

    def _session_bytes(self, frames: int, objects: int) -> int:
        return frames * objects * self._entry_bytes()

    def _results_bytes(self, frames: int, objects: int) -> int:
        """Up-front estimate for the budget: the session's part plus the compact store's (masks and tracks)."""
        return self._session_bytes(frames, objects) + frames * objects * (COMPACT_MASK_BYTES + TRACK_BYTES)

    def _check_budget(self, frames: int, objects: int) -> None:
        """Raise BackendError 413 when tracking `frames` frames of `objects` objects cannot fit the budget."""
        needed = self._results_bytes(frames, objects) + self.extra_bytes
        if self.budget_bytes is not None and needed > self.budget_bytes:
            raise BackendError(
                f"tracking {objects} object(s) over {frames} frame(s) needs about {needed / 2**20:.1f} MB of session "
                f"memory, more than SESSION_BUDGET_MB ({self.budget_bytes / 2**20:g} MB): raise SESSION_BUDGET_MB "
                "or lower MAX_PROPAGATION_FRAMES", 413)

    def results_nbytes(self) -> int:
        """Bytes of the compact store (measured)."""
        return self._store.nbytes

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ prompts
    def set_prompts(self, objects: Sequence[ObjectPrompts], max_frames: int, start: int | None = None,
                    direction: str = "both", owner: str = NOBODY) -> bool:
        """Make the session hold exactly these prompts for `owner`; False (nothing done, progress kept) when
        they and the arguments are unchanged.

        start: the frame to propagate from (a single pass re-tracking all the owner's objects); default:
        incremental, see the module doc. direction: "both", "forward" or "backward" from the start frame. Raises
        the session's PromptError or FrameIndexError for bad prompts, leaving the owner without prompts, and
        BackendError 413 (nothing changed) when tracking them exceeds the budget.
        """
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"direction must be 'both', 'forward' or 'backward', got {direction!r}")
        if owner != NOBODY and owner not in self.owners and NOBODY in self.owners:
            self._adopt(owner)
        objects = [o for o in objects if o.frames]
        old = self.state(owner)
        new = signature(objects)
        request = (max_frames, start, direction)
        if new == old.prompts and new and request == old.request:
            return False
        explicit = start is not None or direction != "both"
        afresh = explicit or old.request is None or old.request[0] != max_frames
        keys, known = {o.key for o in objects}, {o.key for o in old.objects}
        changed = changed_frames(old.prompts, new)
        fresh = [o for o in objects if afresh or o.key not in known or old.seeds.get(o.key) in changed.get(o.key, ())]
        fresh_keys = {o.key for o in fresh}
        edited = {k: sorted(frames) for k, frames in changed.items() if k in keys and k not in fresh_keys}
        seeded = self._seed_pass(fresh, changed, start, max_frames, direction) if fresh else None
        if seeded is not None:
            staying = len(self.session.obj_ids) - len(known - keys | (known & fresh_keys))
            self._check_budget(max(seeded.span, self.tracked_frames()), staying + len(fresh))
        self._apply(owner, objects, (known - keys) | (known & fresh_keys), fresh, edited)
        if not objects:
            self.owners.pop(owner, None)
            return True
        passes = self._replan(old.passes, {self._sid(owner, k): frames for k, frames in edited.items()})
        seeds = {k: s for k, s in old.seeds.items() if k in keys and k not in fresh_keys}
        if seeded is not None:
            seeded.obj_ids = tuple(self._sid(owner, o.key) for o in fresh)
            passes.insert(0, seeded)
            seeds.update({o.key: seeded.start for o in fresh})
        self.owners[owner] = Owner(new, list(objects), passes, seeds, request)
        return True

    def _seed_pass(self, fresh: list[ObjectPrompts], changed: dict[str, set[int]], start: int | None,
                   max_frames: int, direction: str) -> Progress:
        """The pass of the objects tracked afresh: from `start`, default the earliest changed prompt (all
        prompts count as changed the first time), moved to the nearest prompted frame."""
        prompted = [fp.frame for o in fresh for fp in o.frames]
        if start is None:
            start = min([f for o in fresh for f in changed.get(o.key, ())] or prompted)
        if start not in prompted:  # propagation starts on a prompt
            start = min(prompted, key=lambda f: abs(f - start))
        fwd_end = min(self.frame_count - 1, start + max_frames) if direction != "backward" else start - 1
        bwd_end = max(0, start - max_frames) if direction != "forward" else start + 1
        return Progress(start, start, fwd_end, start, bwd_end)

    def _apply(self, owner: str, objects: list[ObjectPrompts], removed: set[str], fresh: list[ObjectPrompts],
               edited: dict[str, list[int]]) -> None:
        """Change the session: remove objects, add the fresh ones with all their prompts, and on each changed
        frame of an edited object forget what was there and add its new prompt. A bad prompt leaves the owner
        without objects (and re-raises)."""
        try:
            for k in removed:
                self._remove(owner, k)
            for obj in fresh:
                sid = self._sid(owner, obj.key)
                for fp in obj.frames:
                    add_frame_prompt(self.session, sid, fp)
            by_key = {o.key: o for o in objects}
            for k, frames in edited.items():
                sid = self._sid(owner, k)
                for frame in frames:
                    self.session.forget(frame, sid)
                    self._store.drop(sid, frame)
                    fp = next((fp for fp in by_key[k].frames if fp.frame == frame), None)
                    if fp is not None:
                        add_frame_prompt(self.session, sid, fp)
        except Exception:
            for k in {o.key for o in objects} | {o.key for o in self.state(owner).objects}:
                self._remove(owner, k)
            self.owners.pop(owner, None)
            raise

    def _replan(self, passes: list[Progress], edited_ids: dict[int, list[int]]) -> list[Progress]:
        """The passes after an incremental change (`edited_ids`: session id -> changed frames): edited objects
        split off with their fronts rewound (merged when equal), first; the other objects still in the session
        keep their passes (the same Progress objects when untouched)."""
        alive = set(self._ids.values())  # removed objects, and objects tracked afresh, have left their passes
        rewound: dict[tuple, Progress] = {}
        kept = []
        for p in passes:
            stay = tuple(i for i in p.obj_ids if i in alive and i not in edited_ids)
            if stay == p.obj_ids:
                kept.append(p)
            elif stay:
                kept.append(dataclasses.replace(p, obj_ids=stay))
            for i in p.obj_ids:
                if i in edited_ids:
                    q = p.rewound(edited_ids[i], (i,))
                    same = rewound.get(q.fronts())
                    if same is not None:
                        same.obj_ids += q.obj_ids
                    else:
                        rewound[q.fronts()] = q
        return list(rewound.values()) + kept

    def _remove(self, owner: str, key: str) -> None:
        """Take an object out of the session and the store (its session id is not reused)."""
        sid = self._ids.pop((owner, key), None)
        if sid is None:
            return
        if sid in self.session.objects:
            self.session.remove_object(sid)
        self._store.drop(sid)

    def _adopt(self, owner: str) -> None:
        """`owner` takes over the objects of NOBODY (same session ids, passes and masks)."""
        self.owners[owner] = self.owners.pop(NOBODY)
        for o, key in list(self._ids):
            if o == NOBODY:
                self._ids[(owner, key)] = self._ids.pop((o, key))

    # ------------------------------------------------------------------ propagation
    def run(self, deadline: float, clock: Callable[[], float] = time.monotonic, owner: str = NOBODY) -> bool:
        """Propagate the owner's passes (the most recent first) until done or `deadline` (clock time); True
        when every frame in range is tracked."""
        for p in self.state(owner).passes:
            while not p.done and clock() < deadline:
                if p.fwd_next <= p.fwd_end:
                    self._forward(p, min(CHUNK, p.fwd_end - p.fwd_next + 1), deadline, clock)
                if p.bwd_next >= p.bwd_end and clock() < deadline:
                    self._backward(p, deadline, clock)
            if not p.done:
                return False
        return True

    def _forward(self, p: Progress, count: int, deadline: float, clock) -> None:
        frames = self.session.propagate("forward", start_frame=p.fwd_next, max_frames=count - 1,
                                        obj_ids=list(p.obj_ids))
        self._consume(frames, deadline, clock, self._keep(lambda f: setattr(p, "fwd_next", f + 1)))

    def _backward(self, p: Progress, deadline: float, clock) -> None:
        if p.start == 0 and p.bwd_end == 0:  # nothing before the start frame
            p.bwd_next, p.bwd_started = -1, True
            return
        # the engine's backward pass cannot start on frame 0: start on frame 1 again (same memories, same result)
        first = max(p.bwd_next, 1)
        count = min(CHUNK, first - p.bwd_end + 1)
        frames = self.session.propagate("backward", start_frame=first, max_frames=count - 1, obj_ids=list(p.obj_ids))
        p.bwd_started = True
        self._consume(frames, deadline, clock, self._keep(lambda f: setattr(p, "bwd_next", min(p.bwd_next, f - 1))))

    def _keep(self, advance: Callable[[int], None]) -> Callable[[FrameResult], None]:
        """`advance` after storing the result compactly (a later result of the same frame replaces it)."""
        def keep(result: FrameResult) -> None:
            self._store.put(result)
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

    # ------------------------------------------------------------------ results
    def frames(self, owner: str = NOBODY) -> list[int]:
        """Frames with results for the owner's objects: every frame tracked for them plus every prompted one."""
        tracked = self._store.frames(self._sids(owner))
        return sorted(tracked | {frame for _, frame in self.state(owner).prompts})

    def tracked_frames(self) -> int:
        """Frames tracked for any object (progress reports)."""
        return len(self._store.frames(self._ids.values()))

    def results(self, owner: str = NOBODY) -> Iterator[FrameResult]:
        """The masks of the owner's objects on each frame of `frames(owner)`."""
        for frame in self.frames(owner):
            yield self.result(frame, owner)

    def result(self, frame: int, owner: str = NOBODY) -> FrameResult:
        """The masks of the owner's objects (obj_ids: their keys) on `frame`, from the compact store."""
        sids = self._sids(owner)
        self._fill(frame, sids)
        stored = self._store.get(frame, sids)
        return stored._replace(obj_ids=[o.key for o in self.state(owner).objects])

    def tracks(self, owner: str = NOBODY) -> dict[str, ObjectTrack]:
        """{object key: its boxes and presence scores on every frame} for the owner's objects: read from the
        store's tracks, written when each frame was tracked, without decoding any mask."""
        sids = self._sids(owner)
        for frame in sorted({frame for _, frame in self.state(owner).prompts}):
            self._fill(frame, sids)
        return {o.key: self._store.track(sid) for o, sid in zip(self.state(owner).objects, sids)}

    def _fill(self, frame: int, sids: list[int]) -> None:
        """Store what is not stored yet of `sids` on `frame` (a prompted frame not tracked yet), from the session
        once."""
        missing = [sid for sid in sids if not self._store.has(frame, sid)]
        if missing:
            self._store.put(self.session.result(frame), missing)
