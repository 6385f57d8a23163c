"""The worker: one model per process, one task at a time (contract: see the package docstring).

`Worker.run` tracks a task with backend.predict.TaskPredictor and no deadline (math.inf), so the result is the
interactive track's, whole video, both directions; then `ledger.write_prediction` stores it. A heartbeat
thread reports the tracked frames (the video's Tracker progress) about once a second. Specs of source
"automatic" (AUTO_MASKLETS: tasks without prompts) go to backend.automatic.AutoPredictor instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config.settings import Settings

from ..automatic import AUTOMATIC, AutoOptions, AutoPredictor
from ..errors import http_error
from ..labelconfig import parse_label_config
from ..model import SAM2Backend
from ..predict import TaskPredictor
from ..tracking import Tracker
from .ledger import LabelStudioLedger, TransientError
from .spec import DONE, FAILED, UNCHANGED, FrameProgress, JobSpec, Outcome

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class WorkerFactory:
    """Picklable recipe of a Worker: the backend settings (model, media, Label Studio url and key)."""

    settings: Settings

    def __call__(self, device: str | None = None) -> Worker:
        settings = self.settings if device is None else dataclasses.replace(self.settings, device=device)
        return Worker(settings)


class _ProgressPredictor(TaskPredictor):
    """TaskPredictor that shows the Tracker of the video it is tracking (read by the heartbeat) and keeps the
    number of frames the last video tracked."""

    tracker: Tracker | None = None
    frames_done: int = 0

    @contextlib.contextmanager
    def video_session(self, task, config):
        with super().video_session(task, config) as entry:
            self.tracker = entry.value
            try:
                yield entry
            finally:
                self.frames_done = _tracked(self.tracker)
                self.tracker = None


def _tracked(tracker: Tracker | None) -> int:
    return tracker.tracked_frames() if tracker is not None else 0


class Worker:
    """Loads the model once (`setup`), then tracks and writes one task per `run`."""

    def __init__(self, settings: Settings, ledger: LabelStudioLedger | None = None):
        self.settings = settings
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.backend: SAM2Backend | None = None
        self.predictor: _ProgressPredictor | None = None
        self.auto: AutoPredictor | None = None
        self.ledger = ledger

    def setup(self) -> None:
        """Load the model (SAM2_CHECKPOINT on DEVICE) and connect to Label Studio."""
        self.backend = SAM2Backend(self.settings)
        self.backend.model.get()
        p = self.backend.predictor
        self.predictor = _ProgressPredictor(p.video_predictor, p.image_predictor, p.fetcher, p.store, p.max_frames,
                                            p.box_tolerance_px, p.model_version)
        self.auto = AutoPredictor(self.predictor, AutoOptions.from_settings(self.settings))
        if self.ledger is None:
            self.ledger = LabelStudioLedger.from_settings(self.settings)

    def run(self, spec: JobSpec, report_progress: Callable[[FrameProgress], None]) -> Outcome:
        """Track `spec`'s task over its whole media and write its prediction; never raises for task problems."""
        if self.predictor is None:
            self.setup()
        started = time.monotonic()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(spec, report_progress, stop), daemon=True)
        beat.start()
        try:
            outcome = self._run(spec)
        finally:
            stop.set()
            beat.join()
        outcome = dataclasses.replace(outcome, seconds=time.monotonic() - started, worker=self.name)
        report_progress(FrameProgress(spec.task_id, spec.attempt, outcome.frames, outcome.frames, self.name))
        return outcome

    def _run(self, spec: JobSpec) -> Outcome:
        fail = dict(task_id=spec.task_id, attempt=spec.attempt, status=FAILED)
        try:
            if not spec.overwrite and self.ledger.holds(spec):
                return Outcome(spec.task_id, spec.attempt, UNCHANGED)
            config = parse_label_config(spec.label_config)
            self.predictor.frames_done = 0
            if spec.source == AUTOMATIC:
                answer = self.auto.predict(spec.task, config)
                frames = self.auto.frames_done
            else:
                answer = self.predictor.predict(spec.task, config, spec.regions, math.inf)
                frames = self.predictor.frames_done
            prediction_id = self.ledger.write_prediction(spec, answer)
            return Outcome(spec.task_id, spec.attempt, DONE, frames=frames, objects=len(answer["result"]),
                           prediction_id=prediction_id)
        except TransientError as exc:
            return Outcome(**fail, error=str(exc), retryable=True)
        except Exception as exc:
            known = http_error(exc)
            if known is None:
                logger.exception("task %s: tracking failed", spec.task_id)
                return Outcome(**fail, error=f"internal error ({type(exc).__name__}): {exc}", retryable=True)
            status, message = known
            return Outcome(**fail, error=message, retryable=status >= 500)
        finally:
            self._release()

    def _heartbeat(self, spec: JobSpec, report: Callable[[FrameProgress], None], stop: threading.Event) -> None:
        while True:
            if spec.source == AUTOMATIC:
                done, total = self.auto.frames_done, self.auto.frames_total
            else:
                tracker = self.predictor.tracker
                done, total = _tracked(tracker), tracker.frame_count if tracker is not None else 0
            try:
                report(FrameProgress(spec.task_id, spec.attempt, done, total, self.name))
            except Exception:  # a lost progress report must not fail the task
                logger.debug("progress report failed", exc_info=True)
            if stop.wait(HEARTBEAT_S):
                return

    def _release(self) -> None:
        """Close the task's sessions (video, image sequence or image): a job visits each task once, the memory
        goes to the next."""
        self.backend.store.close()
