"""Picklable records that travel between the coordinating process and the workers (see the package doc)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DONE = "done"  # the prediction was written (or replaced an earlier one of other prompts)
UNCHANGED = "unchanged"  # Label Studio already holds the prediction for this key: nothing written
FAILED = "failed"


@dataclass(frozen=True)
class JobSpec:
    """One task to track. task: {"id", "data"} of the Label Studio task; regions: the prompt regions (Label
    Studio results) chosen by PROMPT_SOURCES; signature: their fingerprint (ledger.prompt_signature);
    source: the PROMPT_SOURCES entry they came from, or "automatic" (AUTO_MASKLETS: no regions, the signature
    that of the AUTO_* settings, backend/automatic.py); attempt: 1 for the first run, +1 for each retry;
    overwrite: track and write even when Label Studio already holds the prediction for this key."""

    project: int
    task: dict[str, Any]
    label_config: str
    regions: list[dict[str, Any]]
    model_version: str
    signature: str
    source: str = "annotation"
    attempt: int = 1
    overwrite: bool = False

    @property
    def task_id(self) -> int:
        return int(self.task["id"])

    def retry(self) -> JobSpec:
        """The same task, next attempt."""
        return dataclasses.replace(self, attempt=self.attempt + 1)


@dataclass(frozen=True)
class FrameProgress:
    """A worker's report on its current task: frames tracked so far out of `frames_total` (0: not known yet)."""

    task_id: int
    attempt: int
    frames_done: int
    frames_total: int
    worker: str = ""


@dataclass(frozen=True)
class Outcome:
    """How one attempt at one task ended. status: DONE, UNCHANGED or FAILED; error: the reason (FAILED);
    retryable: whether another attempt may succeed (transient: a dead worker, Label Studio or a media host
    unreachable or answering 5xx/429 after backoff); permanent failures (missing media, bad prompts, a
    video over MAX_VIDEO_FRAMES) are not retried."""

    task_id: int
    attempt: int
    status: str
    error: str | None = None
    retryable: bool = False
    frames: int = 0
    objects: int = 0
    prediction_id: int | None = None
    seconds: float = 0.0
    worker: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def crashed(cls, spec: JobSpec, reason: str, worker: str = "") -> Outcome:
        """The outcome an engine reports for a spec whose worker died."""
        return cls(spec.task_id, spec.attempt, FAILED, error=reason, retryable=True, worker=worker)

    @property
    def ok(self) -> bool:
        return self.status in (DONE, UNCHANGED)
