"""The interactive event protocol of Label Studio's newer client, multiplexed over POST /predict.

A /predict body whose `params.context.event` is set is an event; so is a context without `event` that carries
`time_ms` or `frame` (the newest client's click sends none): it is a `predict` (`implied_event`). Everything
else stays the classic protocol.
Wire shapes follow HumanSignal/label-studio-ml-backend, label_studio_ml/examples/segment_anything_video_interactive
(model.py at 11c00255830c, README.md at 5b32433bbfc0, frame_resolve.py at 1b4e48b732c1, mask_encoding.py
at 5d60a79f0378). Every answer is `{"results": [{"result": [item], "model_version"}], "model_version"}` with one item
`{"id", "type", "from_name", "to_name", "origin": "manual", "value"}`:

event (context besides `event`) -> item type: value
- capabilities (no task needed) -> capabilities: {prompts, targets, events, multi_object, max_track_frames,
  model_info}
- prewarm (frame/time_ms, window, direction) -> prewarm_ack: {status, cached, pending, frame_count}
- predict (frame/time_ms, result, object_id) -> bitmask: {imageDataURL, width, height, object_id, frame,
  time_ms}; no item when it carries no prompt
- track (frame/time_ms, direction, max_frames or max_duration_ms, result?, object_id?) -> track_started:
  {session_id, total_frames, fps, duration_ms, start_frame, direction, object_ids}, or track_busy: {error,
  resident_sessions, max_sessions}
- track_progress (session_id) -> track_progress: {session_id, frames, produced, total, done, error, cancelled}
- track_cancel (session_id) -> track_cancel_ack: {status: cancelled | not_found, session_id}
- release -> release_ack: {status: released, released}

- Frames: `time_ms` wins over the 1-based `frame` (default 1). A time is the video's own clock (the browser's
  currentTime) and names the decoded frame shown then; `frame` is the editor's frame at the config's framerate
  (backend/frametime.py). Answers carry 0-based decoded frames and the time each starts showing, which maps
  back to the same frame. Times or frames more than half a second past the end are a 422.
- Prompts (`context.result`): keypointlabels {x, y, positive | is_positive} and at most one rectanglelabels
  {x, y, width, height, rotation} per object and frame, percent of the frame; other items are ignored.
- Masks: 8-bit gray PNG data URLs, 255 on the object (as the reference backend sends them).
- track_progress frames: {frame (0-based), time_ms, imageDataURL, width, height, object_id}, one per object
  seen on the frame (an object absent there is left out, as the reference never sends empty masks); frames
  come in propagation order, so in order within each direction; `produced` counts frames processed.

Decisions beyond the reference (which tracks one object per track, in a fresh state per track):
- Several objects: `object_id` in the context names the object a predict/track prompt belongs to; prompts
  then accumulate per (object, frame), so an object can have keyframes on several frames. Without
  `object_id` the prompt goes to object "0" and replaces all its earlier prompts (the reference's one-frame,
  one-object behaviour). A predict without prompts removes that object's prompts on the frame.
- The objects live in the task's video session (the classic protocol's `Tracker`, same store key, so frame
  embeddings are shared), as the objects of its anonymous owner "" (events name no annotator); a predict
  changes them incrementally (tracking.py), a track propagates all of them together afresh from its start
  frame (the nearest prompted frame), resuming frames already tracked for the same prompts and range.
- One running track per session: a new track or a prompt change cancels the running one (whose poller then
  gets done with cancelled true); at most `max_active_tracks` tracks run per process, more get track_busy.
  Their forward passes share the device's gate (sam2_model/gate.py): tracks interleave frame by frame.
- At most `wait_slots` track_progress polls wait at once (THREADS - 1 of the gunicorn worker); the others
  answer at once with what is buffered, so polls never hold every request thread and /health is answered.
- Tracks run in a background thread that holds the task's session for at most `track_slice_s` (or one frame)
  at a time, so other requests on the task interleave; tracking pauses while `track_buffer` frames are
  waiting for their poller and stops when nobody polled for `abandoned_s`; finished tracks keep undelivered
  frames for `finished_ttl_s`. track_progress waits at most `progress_wait_s` (long poll).
- Caller mistakes are 4xx JSON errors (unknown event, missing or malformed fields, frame or time beyond the
  video, bad prompts, a non-video project); an unknown or finished session_id answers the reference's
  {error: "session not found", done: true}.
- Sessions and tracks live in one process: with several gunicorn workers a track_progress can reach a worker
  that does not know the track (it answers "session not found"), so run the event protocol with WORKERS=1
  (THREADS serve concurrent polls) or sticky routing.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sam2_model.video.session import FrameResult, SessionError, VideoSession

from .errors import BackendError
from .frametime import FrameMap, FrameTimeError
from .labelconfig import LabelConfig
from .predict import TaskPredictor
from .prompts import FramePrompt, ObjectPrompts, PromptError, _is_positive, point_to_px, rect_to_box
from .results import mask_to_png_data_url
from .sessions import Entry, SessionStore
from .tracking import Progress, Tracker, signature

logger = logging.getLogger(__name__)

EVENTS = ("capabilities", "prewarm", "predict", "track", "track_progress", "track_cancel", "release")
DIRECTIONS = ("forward", "backward", "both")
DEFAULT_OBJECT = "0"


@dataclass(frozen=True)
class EventLimits:
    """Bounds of the event protocol (see the module doc)."""

    prewarm_window: int = 20  # frames after (or before) the current one when the client gives no window
    max_prewarm_window: int = 32  # larger windows are cut (the feature cache holds ~40 frames at 1024 px)
    progress_wait_s: float = 20.0  # longest wait of a track_progress for its first frame
    progress_batch_s: float = 0.25  # then how long it gathers more frames into the same answer
    progress_max_batch: int = 32  # frames per track_progress answer
    track_buffer: int = 128  # frames a track may run ahead of its poller
    track_slice_s: float = 0.25  # longest hold of the task's session by a tracking thread (at least one frame)
    max_active_tracks: int = 8  # running tracks per process
    abandoned_s: float = 120.0  # a running track nobody polled for this long is cancelled
    finished_ttl_s: float = 300.0  # undelivered frames of a finished track are kept this long
    cancel_join_s: float = 2.0  # track_cancel waits this long for the tracking thread to stop


# ---------------------------------------------------------------- context parsing


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_field(context: Mapping[str, Any], name: str, default: int) -> int:
    value = context.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BackendError(f'"params.context.{name}" must be an integer >= 0, got {value!r}')
    return value


def implied_event(context: Mapping[str, Any] | None) -> str | None:
    """The event a /predict context asks for: its `event`; else "predict" when it names a frame or a time (the
    newest client's click carries `time_ms`/`frame` and no `event`); None for the classic protocol."""
    if not context:
        return None
    event = context.get("event")
    if event is None and ("time_ms" in context or "frame" in context):
        return "predict"
    return event


def _direction(context: Mapping[str, Any]) -> str:
    direction = context.get("direction", "forward")
    if direction not in DIRECTIONS:
        raise BackendError(f'"params.context.direction" must be one of {", ".join(DIRECTIONS)}, got {direction!r}')
    return direction


def frame_index(context: Mapping[str, Any], frames: FrameMap) -> int:
    """0-based decoded frame of an event: the one the browser shows at `time_ms` (preferred; the video's own
    clock, as currentTime), else at the editor's 1-based `frame` (default 1); see frametime.py."""
    time_ms = context.get("time_ms")
    if time_ms is not None:
        if not _is_number(time_ms) or time_ms < 0:
            raise BackendError(f'"params.context.time_ms" must be a number >= 0, got {time_ms!r}')
        try:
            return frames.decoded_at(time_ms / 1000, "params.context.time_ms")
        except FrameTimeError as exc:
            raise BackendError(str(exc), 422) from None
    frame = context.get("frame", 1)
    if isinstance(frame, float) and frame.is_integer():
        frame = int(frame)
    if isinstance(frame, bool) or not isinstance(frame, int):
        raise BackendError(f'"params.context.frame" must be an integer (1-based), got {frame!r}')
    try:
        return frames.decoded(frame, "params.context.frame")
    except FrameTimeError as exc:
        raise BackendError(str(exc), 422) from None


def frame_prompt(context: Mapping[str, Any], frame: int, frame_size: tuple[int, int]) -> FramePrompt | None:
    """context.result keypoints and box -> one object's FramePrompt in pixels; None when it holds none.

    frame_size: (height, width) of the video. Raises PromptError for prompts outside the frame.
    """
    height, width = frame_size
    points, labels, box = [], [], None
    for i, item in enumerate(context.get("result") or []):
        if not isinstance(item, Mapping):
            raise BackendError(f'"params.context.result[{i}]" must be an object, got {type(item).__name__}')
        kind = item.get("type")
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        value = item.get("value")
        if not isinstance(value, Mapping):
            raise BackendError(f'"params.context.result[{i}].value" must be an object')
        what = f"result[{i}] ({kind})"
        if kind == "keypointlabels":
            points.append(point_to_px(value, width, height, what))
            labels.append(1 if _is_positive(item) else 0)
        elif box is not None:
            raise PromptError(f"{what}: one box per object and frame")
        else:
            box = rect_to_box(value, width, height, what)
    if not points and box is None:
        return None
    return FramePrompt(frame, points, labels, box)


def object_key(context: Mapping[str, Any]) -> tuple[str, bool]:
    """(object key, given explicitly) from context.object_id (or obj_id); default object "0"."""
    raw = context.get("object_id", context.get("obj_id"))
    if raw is None:
        return DEFAULT_OBJECT, False
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw) == "":
        raise BackendError(f'"params.context.object_id" must be a non-empty string or integer, got {raw!r}')
    return str(raw), True


def with_prompt(objects: Mapping[str, ObjectPrompts], key: str, frame: int, fp: FramePrompt | None,
                keep_other_frames: bool) -> dict[str, ObjectPrompts]:
    """A copy of `objects` where object `key` has `fp` on `frame` (none: its prompts there removed); without
    keep_other_frames the object keeps no other frame. Objects left without prompts are dropped."""
    out = dict(objects)
    old = objects.get(key)
    frames = [f for f in (old.frames if old and keep_other_frames else []) if f.frame != frame]
    if fp is not None:
        frames = sorted([*frames, fp], key=lambda f: f.frame)
    if frames:
        out[key] = ObjectPrompts(key, None, frames)
    else:
        out.pop(key, None)
    return out


def window_frames(frame: int, window: int, direction: str, frame_count: int) -> list[int]:
    """Frames a prewarm embeds, nearest first: `window` frames after (forward), before (backward) or on both
    sides of `frame`, and `frame` itself."""
    after = [f for f in range(frame + 1, frame + window + 1) if f < frame_count] if direction != "backward" else []
    before = [f for f in range(frame - 1, frame - window - 1, -1) if f >= 0] if direction != "forward" else []
    order = [frame]
    for i in range(max(len(after), len(before))):
        order += after[i:i + 1] + before[i:i + 1]
    return order


def png_entries(result: FrameResult, keys: Iterable[str], starts: Sequence[float]) -> list[dict]:
    """track_progress frame entries of one frame: one per object of `keys` whose mask there is not empty.
    starts: when each decoded frame starts showing (seconds; the timeline's starts)."""
    wanted = set(keys)
    height, width = result.masks.shape[1:] if len(result.masks) else (0, 0)
    return [
        {"frame": result.frame_idx, "time_ms": float(starts[result.frame_idx]) * 1000.0,
         "imageDataURL": mask_to_png_data_url(mask, grayscale=True), "width": int(width), "height": int(height),
         "object_id": obj_id}
        for obj_id, mask in zip(result.obj_ids, result.masks) if obj_id in wanted and mask.any()
    ]


# ---------------------------------------------------------------- background work


class Prewarmer:
    """Embeds queued frames of one video session in a background thread; a new window replaces the queue."""

    def __init__(self, session: VideoSession):
        self.session = session
        self._queue: deque[int] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def schedule(self, frames: Sequence[int]) -> None:
        with self._lock:
            self._queue = deque(frames)
            if self._thread is None and self._queue:
                self._thread = threading.Thread(target=self._run, name="sam2-prewarm", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                frame = self._queue.popleft()
            try:
                self.session.embed(frame)
                continue
            except SessionError:  # the session was closed (released or evicted)
                pass
            except Exception:
                logger.exception("prewarm of frame %d failed", frame)
            with self._lock:
                self._queue.clear()
                self._thread = None
            return


class _SessionGone(Exception):
    """The task's video session was released or evicted while a track ran."""


def _session_gone() -> Tracker:
    raise _SessionGone("the video session was released (release event or session TTL)")


def _tracked(p: Progress) -> int:
    """Frames propagated so far under progress `p`."""
    return (p.fwd_next - p.start) + ((p.start - p.bwd_next) if p.bwd_started else 0)


def _total(p: Progress) -> int:
    """Distinct frames the progress covers when done (the start frame once)."""
    forward = max(0, p.fwd_end - p.start + 1)
    backward = max(0, p.start - p.bwd_end + 1)
    return forward + backward - (1 if forward and backward else 0)


class TrackJob:
    """One track: a thread propagating the task's Tracker in short slices, and the frames it produced, kept in
    a bounded buffer (of frames; each frame holds the non-empty masks of its objects) for track_progress."""

    def __init__(self, store: SessionStore, key: Hashable, progress: Progress, object_ids: Sequence[str],
                 starts: Sequence[float], limits: EventLimits):
        self.id = uuid.uuid4().hex[:12]
        self.store, self.key, self.progress = store, key, progress
        self.object_ids = list(object_ids)
        self.starts = starts
        self.limits = limits
        self.total = _total(progress)
        self.produced = 0
        self.finished = self.cancelled = False
        self.finished_at: float | None = None
        self.error: str | None = None
        self.last_poll = time.monotonic()
        self._buffer: deque[list[dict]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sam2-track-{self.id}", daemon=True)

    # -- control (any thread)

    def cancel(self, reason: str) -> None:
        logger.info("track %s cancelled: %s", self.id, reason)
        self._stop.set()
        with self._cond:
            if not self.finished:
                self.cancelled = True
            self._cond.notify_all()

    def drain(self, wait: bool = True) -> dict:
        """Long poll: wait for frames (or the end), gather more for a moment, and return the progress value.
        wait False: return what is buffered now."""
        limits = self.limits
        with self._cond:
            self.last_poll = time.monotonic()
            deadline = self.last_poll + (limits.progress_wait_s if wait else 0.0)
            while not self._buffer and not self.finished and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            until = time.monotonic() + (limits.progress_batch_s if wait else 0.0)
            while (self._buffer and not self.finished and len(self._buffer) < limits.progress_max_batch
                   and (left := until - time.monotonic()) > 0):
                self._cond.wait(left)
            batch = [self._buffer.popleft() for _ in range(min(limits.progress_max_batch, len(self._buffer)))]
            self.last_poll = time.monotonic()
            self._cond.notify_all()
            return {"session_id": self.id, "frames": [e for frame in batch for e in frame],
                    "produced": self.produced, "total": self.total, "done": self.finished and not self._buffer,
                    "error": self.error, "cancelled": self.cancelled}

    # -- the tracking thread

    def _run(self) -> None:
        error = None
        try:
            self._track()
        except (_SessionGone, SessionError, PromptError) as exc:
            error = str(exc)
        except Exception as exc:
            logger.exception("track %s failed", self.id)
            error = f"internal error ({type(exc).__name__}): {exc}"
        with self._cond:
            self.finished, self.finished_at, self.error = True, time.monotonic(), error
            self._cond.notify_all()

    def _track(self) -> None:
        """Slices of: track up to the buffer's room, report the newly tracked frames (resumed progress: the
        frames tracked before first), until every frame in range is reported."""
        p = self.progress
        forward = backward = p.start  # next frame to report in each direction
        sent: set[int] = set()
        while self._wait_for_room():
            with self.store.use(self.key, _session_gone, Tracker.nbytes) as entry:
                if self._stop.is_set():
                    return
                tracker: Tracker = entry.value
                if tracker.progress is not p:
                    self.cancel("the session's prompts changed")
                    return
                room = self.limits.track_buffer - len(self._buffer)
                backlog = (p.fwd_next - forward) + ((backward - p.bwd_next) if p.bwd_started else 0)
                if backlog < room:
                    tracker.run(time.monotonic() + self.limits.track_slice_s, self._slice_clock(room - backlog))
                ahead = range(forward, p.fwd_next)[:room]
                behind = range(backward, p.bwd_next, -1)[:room - len(ahead)] if p.bwd_started else range(0)
                forward, backward = forward + len(ahead), backward - len(behind)
                new = [f for f in dict.fromkeys((*ahead, *behind)) if f not in sent]
                results = [tracker.result(f) for f in new]
                complete = p.done and forward == p.fwd_next and (backward == p.bwd_next or not p.bwd_started)
                contended = entry.users > 1
            sent.update(new)
            self._push([png_entries(r, self.object_ids, self.starts) for r in results])
            if complete:
                return
            if contended:
                time.sleep(0.01)  # let the requests waiting for the session in

    def _slice_clock(self, room: int):
        """Tracker.run's clock for one slice: infinite (stop) once cancelled or `room` frames are tracked."""
        base = _tracked(self.progress)

        def clock() -> float:
            if self._stop.is_set() or _tracked(self.progress) - base >= room:
                return math.inf
            return time.monotonic()

        return clock

    def _wait_for_room(self) -> bool:
        """Block while the buffer is full; False when the track must stop (cancelled or abandoned)."""
        with self._cond:  # a Condition's lock is reentrant: cancel() may take it again
            while len(self._buffer) >= self.limits.track_buffer and not self._stop.is_set():
                if time.monotonic() - self.last_poll > self.limits.abandoned_s:
                    self.cancel(f"no track_progress for {self.limits.abandoned_s:g} s")
                    break
                self._cond.wait(0.5)
            return not self._stop.is_set()

    def _push(self, frames: list[list[dict]]) -> None:
        with self._cond:
            self._buffer.extend(frames)
            self.produced += len(frames)
            self._cond.notify_all()


# ---------------------------------------------------------------- the handler


@dataclass
class TaskEvents:
    """Event-protocol state of one task, kept in its video session's store entry (released with it)."""

    objects: dict[str, ObjectPrompts] = field(default_factory=dict)
    job: TrackJob | None = None
    prewarmer: Prewarmer | None = None


def _state(entry: Entry) -> TaskEvents:
    return entry.state.setdefault("events", TaskEvents())


class EventHandler:
    """Answers the events of the module doc; video projects only (capabilities aside)."""

    def __init__(self, predictor: TaskPredictor, max_frames: int, limits: EventLimits | None = None,
                 wait_slots: int | None = None):
        """wait_slots: track_progress polls that may wait at once (None: no bound)."""
        self.predictor = predictor
        self._waiters = threading.BoundedSemaphore(wait_slots) if wait_slots is not None else None
        self.store = predictor.store
        self.max_frames = max_frames
        self.limits = limits or EventLimits()
        self._jobs: dict[str, TrackJob] = {}
        self._lock = threading.Lock()

    def handle(self, event: str, tasks: Sequence[Mapping[str, Any]], config: LabelConfig | None,
               context: Mapping[str, Any]) -> dict:
        """The /predict answer to one event; raises BackendError (or a prompt/media error) for bad requests."""
        self._sweep()
        if event not in EVENTS:
            raise BackendError(f'unknown event "{event}": supported events are {", ".join(EVENTS)}')
        if event == "capabilities":
            return self._answer([self._item("capabilities", self._capabilities())])
        if config.kind != "video":
            raise BackendError("the interactive event protocol serves video projects (<Video> with "
                               "<VideoRectangle>); image projects use Label Studio's classic interactive mode", 422)
        handler = getattr(self, f"_{event}")
        return self._answer(handler(tasks[0], config, context))

    def close(self) -> None:
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.cancel("backend closing")
        for job in jobs:
            job.thread.join(self.limits.cancel_join_s)

    # -- answers

    def _answer(self, items: list[dict]) -> dict:
        version = self.predictor.model_version
        return {"results": [{"result": items, "model_version": version}], "model_version": version}

    @staticmethod
    def _item(kind: str, value: dict, config: LabelConfig | None = None) -> dict:
        item: dict[str, Any] = {"id": uuid.uuid4().hex[:10], "type": kind, "origin": "manual", "value": value}
        if config is not None:
            item["from_name"], item["to_name"] = config.output.name, config.object_name
        return item

    def _capabilities(self) -> dict:
        return {
            "prompts": ["point", "box"],
            "targets": [{"tag": "VideoRectangle", "output": "bbox", "features": ["track"]}],
            "events": list(EVENTS),
            "multi_object": True,
            "max_track_frames": self.max_frames,
            "model_info": {"name": "SAM2", "version": self.predictor.model_version},
        }

    # -- events on a task's video session

    def _prewarm(self, task, config: LabelConfig, context) -> list[dict]:
        window = min(_int_field(context, "window", self.limits.prewarm_window), self.limits.max_prewarm_window)
        direction = _direction(context)
        with self.predictor.video_session(task, config) as entry:
            tracker: Tracker = entry.value
            frame = frame_index(context, self._frames(tracker, config, task))
            frames = window_frames(frame, window, direction, tracker.frame_count)
            pending = [f for f in frames if f not in tracker.session.features]
            state = _state(entry)
            if state.prewarmer is None:
                state.prewarmer = Prewarmer(tracker.session)
            state.prewarmer.schedule(pending)
        value = {"status": "ok", "cached": sorted(set(frames) - set(pending)), "pending": sorted(pending),
                 "frame_count": tracker.frame_count}
        return [self._item("prewarm_ack", value, config)]

    def _predict(self, task, config: LabelConfig, context) -> list[dict]:
        key, explicit = object_key(context)
        with self.predictor.video_session(task, config) as entry:
            tracker: Tracker = entry.value
            state = _state(entry)
            timeline = tracker.session.frames.timeline
            frame = frame_index(context, self._frames(tracker, config, task))
            fp = frame_prompt(context, frame, tracker.session.frame_size)
            objects = with_prompt(state.objects, key, frame, fp, keep_other_frames=explicit)
            if signature(objects.values()) != tracker.prompts:
                self._cancel(state, "new prompts")
                tracker.set_prompts(list(objects.values()), self.max_frames)
            state.objects = objects
            if fp is None:
                return []
            result = tracker.result(frame)
            mask = result.masks[result.obj_ids.index(key)]
        height, width = mask.shape
        value = {"imageDataURL": mask_to_png_data_url(mask, grayscale=True), "width": width, "height": height,
                 "object_id": key, "frame": frame, "time_ms": float(timeline.starts[frame]) * 1000.0}
        return [self._item("bitmask", value, config)]

    def _track(self, task, config: LabelConfig, context) -> list[dict]:
        direction = _direction(context)
        key, explicit = object_key(context)
        video_key = self.predictor.video_key(task, config)
        with self._lock:
            running = sum(1 for j in self._jobs.values() if not j.finished and j.key != video_key)
        if running >= self.limits.max_active_tracks:
            value = {"error": "tracking capacity exhausted", "resident_sessions": running,
                     "max_sessions": self.limits.max_active_tracks}
            return [self._item("track_busy", value, config)]
        with self.predictor.video_session(task, config) as entry:
            tracker: Tracker = entry.value
            state = _state(entry)
            fps = self._fps(tracker, config, task)
            timeline = tracker.session.frames.timeline
            frame = frame_index(context, self._frames(tracker, config, task))
            limit = self._track_limit(context, fps)
            objects = state.objects
            fp = frame_prompt(context, frame, tracker.session.frame_size)
            if fp is not None:
                objects = with_prompt(objects, key, frame, fp, keep_other_frames=explicit)
            if not objects:
                raise BackendError("nothing to track: no object has prompts in this session; send a predict event "
                                   "(or prompts in the track event) first", 422)
            self._cancel(state, "a new track")
            tracker.set_prompts(list(objects.values()), limit, start=frame, direction=direction)
            state.objects = objects
            job = state.job = TrackJob(self.store, video_key, tracker.progress, list(objects), timeline.starts,
                                       self.limits)
            with self._lock:
                self._jobs[job.id] = job
            job.thread.start()
        value = {"session_id": job.id, "total_frames": job.total, "fps": fps,
                 "duration_ms": timeline.end * 1000.0, "start_frame": job.progress.start,
                 "direction": direction, "object_ids": job.object_ids}
        return [self._item("track_started", value, config)]

    def _track_progress(self, task, config: LabelConfig, context) -> list[dict]:
        job = self._job(task, config, context)
        if job is None:
            value = {"session_id": context["session_id"], "frames": [], "error": "session not found", "done": True}
            return [self._item("track_progress", value, config)]
        if self._waiters is None:
            value = job.drain()
        elif self._waiters.acquire(blocking=False):
            try:
                value = job.drain()
            finally:
                self._waiters.release()
        else:
            value = job.drain(wait=False)
        if value["done"]:
            with self._lock:
                self._jobs.pop(job.id, None)
        return [self._item("track_progress", value, config)]

    def _track_cancel(self, task, config: LabelConfig, context) -> list[dict]:
        job = self._job(task, config, context)
        if job is not None:
            with self._lock:
                self._jobs.pop(job.id, None)
            job.cancel("track_cancel")
            job.thread.join(self.limits.cancel_join_s)
        value = {"status": "cancelled" if job else "not_found", "session_id": context["session_id"]}
        if job is not None:
            value.update(produced=job.produced, total=job.total, stopped=not job.thread.is_alive())
        return [self._item("track_cancel_ack", value, config)]

    def _release(self, task, config: LabelConfig, context) -> list[dict]:
        key = self.predictor.video_key(task, config)
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.key == key]
            for job in jobs:
                del self._jobs[job.id]
        for job in jobs:
            job.cancel("release")
        released = self.store.release(key)
        return [self._item("release_ack", {"status": "released", "released": released}, config)]

    # -- helpers

    @staticmethod
    def _fps(tracker: Tracker, config: LabelConfig, task: Mapping[str, Any]) -> float:
        """The decoded video's nominal fps (max_duration_ms -> frames), else the config's framerate."""
        return tracker.session.fps if tracker.session.fps > 0 else config.fps(task["data"])

    @staticmethod
    def _frames(tracker: Tracker, config: LabelConfig, task: Mapping[str, Any]) -> FrameMap:
        """The editor's frames (config framerate) against the video's timeline."""
        return FrameMap.for_video(tracker.session.frames.timeline, config.fps(task["data"]))

    def _track_limit(self, context: Mapping[str, Any], fps: float) -> int:
        """Frames to track beyond the start frame per direction: max_duration_ms, else max_frames, capped."""
        duration = context.get("max_duration_ms")
        if duration is not None:
            if not _is_number(duration) or duration < 0:
                raise BackendError(f'"params.context.max_duration_ms" must be a number >= 0, got {duration!r}')
            requested = round(duration / 1000 * fps)
        else:
            requested = _int_field(context, "max_frames", self.max_frames)
        return min(requested, self.max_frames)

    def _job(self, task, config: LabelConfig, context: Mapping[str, Any]) -> TrackJob | None:
        """The track `context.session_id` names, if it belongs to this task."""
        session_id = context.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise BackendError('missing field "params.context.session_id" (the session_id track_started gave)')
        with self._lock:
            job = self._jobs.get(session_id)
        return job if job is not None and job.key == self.predictor.video_key(task, config) else None

    @staticmethod
    def _cancel(state: TaskEvents, reason: str) -> None:
        if state.job is not None and not state.job.finished:
            state.job.cancel(reason)

    def _sweep(self) -> None:
        """Forget finished tracks past their TTL; cancel running tracks nobody polls."""
        now = time.monotonic()
        with self._lock:
            for job in list(self._jobs.values()):
                if job.finished and now - job.finished_at > self.limits.finished_ttl_s:
                    del self._jobs[job.id]
                elif not job.finished and now - job.last_poll > self.limits.abandoned_s:
                    job.cancel(f"no track_progress for {self.limits.abandoned_s:g} s")
